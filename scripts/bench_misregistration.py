"""How much misregistration the shipped model tolerates: false candidates on shifted no-change pairs.

Each source image is paired with a copy of itself moved by a known distance (a GNSS offset
between two flights; diagonal direction) and with a different exposure (×0.85 + 10), then run
through the nightly pipeline with registration **off**, so the model sees the full offset. Any
candidate is a false alarm. Sources: held-out synthetic scenes (seed 777, generated here) and
real drone chips (OpenAerialMap Banepa, from ``../shared/data``, when present).

This is what ``align.on_failure: georef`` relies on and what registration must get below.

Usage::

    python scripts/bench_misregistration.py [--shifts 0,0.5,1,1.5,2,3,5,8] [--scenes 6] [--chips 12]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from detector.config import load_config
from detector.geo.crs import pixel_size_m
from detector.run import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def moved_copy(src: Path, dst: Path, shift_m: float) -> float:
    """Write ``src`` with its content moved ``shift_m`` diagonally and exposure changed; returns km²."""
    import cv2
    import rasterio

    with rasterio.open(src) as ds:
        img, profile = ds.read(), ds.profile
        gsd_x, gsd_y = pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)
    d = shift_m / np.sqrt(2)
    m = np.float32([[1, 0, d / gsd_x], [0, 1, d / gsd_y]])
    out = np.stack(
        [cv2.warpAffine(b, m, (b.shape[1], b.shape[0]), flags=cv2.INTER_LINEAR) for b in img[:3]]
    )
    out = np.clip(out.astype(np.float32) * 0.85 + 10, 0, 255).astype(np.uint8)
    profile.update(count=3, dtype="uint8")
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(out)
    return img.shape[1] * img.shape[2] * gsd_x * gsd_y / 1e6


def false_candidates(sources: list[Path], shift_m: float, tmp: Path) -> tuple[int, float]:
    n, km2 = 0, 0.0
    for i, src in enumerate(sources):
        work = tmp / f"{shift_m}-{i}"
        work.mkdir(parents=True)
        km2 += moved_copy(src, work / "current.tif", shift_m)
        cfg = load_config(
            None,
            {
                "baseline": str(src),
                "current": str(work / "current.tif"),
                "out": str(work / "out"),
                "workers": 1,
                "progress": False,
                "resume": False,
                "align.enabled": False,
            },
        )
        n += run_pipeline(cfg).candidates
    return n, km2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--shifts", default="0,0.5,1,1.5,2,3,5,8", help="comma-separated offsets in metres"
    )
    ap.add_argument(
        "--scenes",
        type=int,
        default=6,
        help="held-out synthetic scenes (seed 777, 1024 px at 0.25 m)",
    )
    ap.add_argument("--chips", type=int, default=12, help="OpenAerialMap Banepa drone chips")
    args = ap.parse_args()
    shifts = [float(s) for s in args.shifts.split(",")]
    import logging

    logging.getLogger("detector").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bw-misreg-") as tmp:
        tmp = Path(tmp)
        groups: dict[str, list[Path]] = {}
        if args.scenes:
            from detector.synth.scene import generate

            generate(tmp / "synth", seed=777, scenes=args.scenes, size=1024, gsd=0.25)
            groups["synthetic held-out (seed 777)"] = sorted(
                (tmp / "synth").glob("scene_*/baseline.tif")
            )
        chips = sorted((args.data / "oam_banepa_fair" / "train").rglob("*.tif"))[: args.chips]
        if chips:
            groups[f"real drone: OAM Banepa ({len(chips)} chips)"] = chips
        print("| source | km² | " + " | ".join(f"{s:g} m" for s in shifts) + " |")
        print("|---|---|" + "---|" * len(shifts))
        for name, sources in groups.items():
            cells, km2 = [], 0.0
            for s in shifts:
                n, km2 = false_candidates(sources, s, tmp / name.split()[0])
                cells.append(f"{n} ({n / km2:.1f}/km²)")
            print(f"| {name} | {km2:.3f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
