"""Registration benchmark: known shifts and rotations on real seasonal pairs and synthetic pairs.

Each pair's later epoch is moved by a known transform (shift up to ``--max-shift`` metres in a
random direction, rotation up to ``--max-rot`` degrees about the pair's centre), written as
GeoTIFFs and registered by the same code a ``buildwatch run`` uses (mosaic model from a coarse
read, then :func:`detector.night.align.register_tile` per tile, alignment settings from the
default run config). The error of a tile is the distance, at the tile centre, between the
estimated and the applied displacement.

Two truths are reported for the real pairs:
- ``abs``: the applied transform, i.e. the published pair taken as perfectly registered;
- ``rel``: the applied transform composed with the registration found on the *unmoved* pair,
  tile by tile (the published LEVIR-CD/DSIFN pairs are themselves off by up to ~1 m in places,
  and differently from tile to tile, which no estimator can be blamed for); counted over the
  tiles the unmoved pair registers (a moved tile flagged there counts as a miss).

Usage::

    python scripts/bench_register.py [--data ../shared/data] [--trials 3] [--synthetic 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from detector.config import RunConfig
from detector.night.align import estimate_mosaic_model, register_tile
from detector.night.mosaic import EpochReader, make_grid, open_mosaic
from detector.night.tiles import iter_tiles, tile_window

ROOT = Path(__file__).resolve().parents[1]

GSD_WORK = 0.25
TILE, OVERLAP = 512, 128


def write_tif(path: Path, rgb: np.ndarray, gsd: float, crs: str = "EPSG:32614") -> None:
    import rasterio
    from rasterio.transform import from_origin

    h, w = rgb.shape[:2]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=from_origin(500000.0, 3300000.0 + h * gsd, gsd, gsd),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))


def moved(rgb: np.ndarray, gsd: float, shift_m: tuple[float, float], rot_deg: float):
    """The image with its content moved: ground at pixel p appears at R(p - c) + c + t.

    Returns the image, its validity, and the transform as a 3×3 matrix in *metres from the
    image's upper-left corner* (x east, y south), so it can be evaluated on any grid.
    """
    h, w = rgb.shape[:2]
    c = ((w - 1) / 2, (h - 1) / 2)
    m = cv2.getRotationMatrix2D(c, rot_deg, 1.0)
    m[:, 2] += (shift_m[0] / gsd, shift_m[1] / gsd)
    out = cv2.warpAffine(
        rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    # pixel-centre coords -> metres: x_m = (x + 0.5) * gsd
    s = np.array([[gsd, 0, 0.5 * gsd], [0, gsd, 0.5 * gsd], [0, 0, 1]])
    t_m = s @ np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(s)
    return out, t_m


def register_pair(base_path: Path, cur_path: Path, cfg: RunConfig) -> tuple[dict, object, float]:
    """{tile_id: (centre_m (x, y) from the upper-left, Registration)} as a run registers them."""
    b_info, c_info = open_mosaic(base_path, "baseline"), open_mosaic(cur_path, "current")
    grid = make_grid(b_info, c_info, GSD_WORK)
    a = cfg.align
    t0 = time.perf_counter()
    model = estimate_mosaic_model(
        b_info,
        c_info,
        grid,
        max_shift_m=a.max_shift_m,
        min_inliers=a.min_inliers,
        min_spread=a.min_spread,
    )
    rb, rc = EpochReader(b_info, grid), EpochReader(c_info, grid)
    out = {}
    try:
        for tile in iter_tiles(grid, TILE, OVERLAP):
            col, row = tile_window(grid, tile)
            b, vb = rb.read(col, row, tile.width, tile.height)
            c, vc = rc.read(col, row, tile.width, tile.height)
            valid = vb & vc
            if valid.mean() < 0.02:
                continue
            reg = register_tile(
                b,
                c,
                valid,
                grid.gsd,
                model=model,
                offset=(col, row),
                max_shift_m=a.max_shift_m,
                tile_tolerance_m=a.tile_tolerance_m,
                min_quality=a.min_quality,
                on_failure=a.on_failure,
            )
            # tile centre in metres from the image's upper-left corner (the grid starts there)
            centre = ((col + tile.width / 2) * grid.gsd, (row + tile.height / 2) * grid.gsd)
            out[tile.tile_id] = (centre, reg)
    finally:
        rb.close()
        rc.close()
    return out, model, time.perf_counter() - t0


def tile_errors(regs: dict, truth_m: np.ndarray, reference: dict | None, gsd: float):
    errs, flagged = [], 0
    for tid, (centre, reg) in regs.items():
        p = np.array([centre[0], centre[1], 1.0])
        true_d = (truth_m @ p)[:2] - p[:2]
        if reference is not None:
            # compose: the unmoved pair's own registration of this tile, then the applied transform
            ref = reference.get(tid)
            if ref is None or not ref[1].ok or ref[1].source == "georef":
                continue  # the unmoved pair's own offset here is unknown: no relative truth
            q = np.array([ref[1].dx_px, ref[1].dy_px]) * gsd
            true_d = (truth_m @ (p + [q[0], q[1], 0.0]))[:2] - p[:2]
        if not reg.ok or reg.source == "georef":
            flagged += 1
            continue
        est = np.array([reg.dx_px, reg.dy_px]) * gsd
        errs.append(float(np.hypot(*(est - true_d))))
    return errs, flagged


def real_pairs(data: Path):
    for name, gsd in (("levir_cd_1024", 0.5), ("levir_cd_256", 0.5), ("dsifn_cd_256", 0.5)):
        folder = data / name
        for a in sorted((folder / "A").glob("*.png")) if folder.exists() else []:
            b = folder / "B" / a.name
            if b.exists():
                yield (
                    f"{name}/{a.stem}",
                    cv2.imread(str(a))[:, :, ::-1],
                    cv2.imread(str(b))[:, :, ::-1],
                    gsd,
                )


def synth_pairs(n: int):
    from detector.synth.scene import generate_scene

    for seed in range(n):
        scene = generate_scene(seed=4100 + seed, size=1024, gsd=0.25, max_shift_px=0)
        yield f"synthetic/{seed}", scene.epochs[0], scene.epochs[1], 0.25


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--trials", type=int, default=3, help="moved copies per real pair")
    ap.add_argument(
        "--synthetic", type=int, default=4, help="synthetic pairs (shift only, exact truth)"
    )
    ap.add_argument("--max-shift", type=float, default=3.0)
    ap.add_argument("--max-rot", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pair-offset",
        type=float,
        default=1.0,
        help="the real pairs' own offset between epochs (m) added to the search range",
    )
    args = ap.parse_args()
    cfg = RunConfig()
    # The real pairs carry their own epoch-to-epoch offset (up to ~1 m) on top of the applied move:
    # search as far as the total can reach, as a user sets max_shift_m to the flights' GNSS error.
    cfg.align.max_shift_m = max(cfg.align.max_shift_m, args.max_shift + args.pair_offset)
    rng = np.random.default_rng(args.seed)
    rows: dict[str, dict] = {}
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = list(real_pairs(args.data)) + list(synth_pairs(args.synthetic))
        for name, a, b, gsd in sources:
            group = name.split("/")[0]
            stats = rows.setdefault(
                group,
                {
                    "abs": [],
                    "rel": [],
                    "rel_tiles": 0,
                    "flagged": 0,
                    "tiles": 0,
                    "models": 0,
                    "pairs": 0,
                },
            )
            write_tif(tmp / "a.tif", a, gsd)
            write_tif(tmp / "b.tif", b, gsd)
            real = group != "synthetic"
            # the unmoved pair's own registration, tile by tile (the *rel* truth)
            reference = register_pair(tmp / "a.tif", tmp / "b.tif", cfg)[0] if real else None
            for _ in range(args.trials if real else 2):
                ang = rng.uniform(0, 2 * np.pi)
                r = rng.uniform(0.5, args.max_shift)
                shift = (r * np.cos(ang), r * np.sin(ang))
                rot = rng.uniform(-args.max_rot, args.max_rot) if real else 0.0
                cur, t_m = moved(b, gsd, shift, rot)
                write_tif(tmp / "c.tif", cur, gsd)
                regs, model, sec = register_pair(tmp / "a.tif", tmp / "c.tif", cfg)
                seconds.append(sec / max(len(regs), 1))
                e_abs, flagged = tile_errors(regs, t_m, None, GSD_WORK)
                stats["abs"] += e_abs
                stats["flagged"] += flagged
                stats["tiles"] += len(regs)
                stats["models"] += int(model.ok)
                stats["pairs"] += 1
                if real:
                    e_rel = tile_errors(regs, t_m, reference, GSD_WORK)[0]
                    stats["rel"] += e_rel
                    stats["rel_tiles"] += len(e_rel) + sum(
                        1
                        for tid, (_, r) in regs.items()
                        if (not r.ok or r.source == "georef")
                        and tid in reference
                        and reference[tid][1].ok
                        and reference[tid][1].source != "georef"
                    )
                from collections import Counter

                src = Counter(reg.source if reg.ok else "flagged" for _, reg in regs.values())
                rel_med = np.median(e_rel) if real and e_rel else float("nan")
                print(
                    f"{name:34s} rel med {rel_med:.2f} {dict(src)} "
                    f"shift ({shift[0]:+.2f}, {shift[1]:+.2f}) m rot {rot:+.2f}°  model "
                    f"{'ok' if model.ok else 'NO'} ({model.inliers}/{model.blocks} blocks)  tiles {len(regs)} "
                    f"flagged {flagged}  abs err median {np.median(e_abs) if e_abs else float('nan'):.3f} m",
                    flush=True,
                )
    print(
        "\n| pairs | moved copies | tiles | flagged | mosaic model ok | within 0.5 m (abs) | median abs err | "
        "within 0.5 m (rel, of tiles the unmoved pair registers) | mean err (synthetic) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for group, s in rows.items():
        n = s["tiles"]
        ab = np.array(s["abs"])
        rel = np.array(s["rel"])
        within = (ab <= 0.5).sum() / max(n, 1)
        within_rel = (rel <= 0.5).sum() / max(s["rel_tiles"], 1) if rel.size else float("nan")
        print(
            f"| {group} | {s['pairs']} | {n} | {s['flagged']} | {s['models']}/{s['pairs']} | {within:.1%} | "
            f"{np.median(ab) if ab.size else float('nan'):.3f} m | "
            f"{within_rel:.1%} | {ab.mean() if group == 'synthetic' and ab.size else float('nan'):.3f} m |"
        )
    print(
        f"\nregistration time per tile (mosaic model amortised): {1000 * np.mean(seconds):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
