"""Registration benchmark: known moves of 0.5-8 m (and rotations) on real seasonal pairs and synthetic pairs.

Each pair's later epoch is moved by each of ``--moves`` metres (in a random direction; the real
pairs also rotated by up to ``--max-rot`` degrees about the pair's centre), written as GeoTIFFs
and registered by the same code a ``buildwatch run`` uses, with the default run config, as a
user runs it (mosaic model from a coarse read, then :func:`detector.night.align.register_tile`
per tile). The error of a tile is the distance, at the tile centre, between the estimated and
the applied displacement.

Two truths are reported for the real pairs:
- ``abs``: the applied transform, i.e. the published pair taken as perfectly registered;
- ``rel``: the applied transform composed with the registration found on the *unmoved* pair,
  tile by tile (the published LEVIR-CD/DSIFN pairs are themselves off by up to ~1 m in places,
  and differently from tile to tile, which no estimator can be blamed for); counted over the
  tiles the unmoved pair registers (a moved tile flagged there counts as a miss).

``--before REF`` also runs the registration code of git revision REF (``detector/night/align.py``
as it was there, with that revision's default ``max_shift_m``) on the same moved pairs: its
numbers and its registration cost per tile (mosaic model + :func:`register_tile`, reads
excluded) are printed beside today's.

Usage::

    python scripts/bench_register.py [--data ../shared/data] [--moves 0.5,1,2,3,4,6,8] [--synthetic 4]
        [--before 1439391] [--sets levir_cd_1024,levir_cd_256,dsifn_cd_256]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from detector.config import RunConfig
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


def load_align(ref: str | None):
    """``detector.night.align`` as it is (``ref`` None), or as it was at git revision ``ref``."""
    if ref is None:
        from detector.night import align

        return align
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:detector/night/align.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bw-align-")) / f"align_{ref}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"bw_align_{ref}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def register_pair(base_path: Path, cur_path: Path, cfg: RunConfig, align, max_shift_m: float):
    """({tile_id: (centre_m (x, y) from the upper-left, Registration)}, model, mosaic model
    seconds, ``register_tile`` seconds) as a run registers them; reads are not counted."""
    b_info, c_info = open_mosaic(base_path, "baseline"), open_mosaic(cur_path, "current")
    grid = make_grid(b_info, c_info, GSD_WORK)
    a = cfg.align
    t0 = time.perf_counter()
    model = align.estimate_mosaic_model(
        b_info,
        c_info,
        grid,
        max_shift_m=max_shift_m,
        min_inliers=a.min_inliers,
        min_spread=a.min_spread,
    )
    model_seconds = time.perf_counter() - t0
    seconds = 0.0
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
            t0 = time.perf_counter()
            reg = align.register_tile(
                b,
                c,
                valid,
                grid.gsd,
                model=model,
                offset=(col, row),
                max_shift_m=max_shift_m,
                tile_tolerance_m=a.tile_tolerance_m,
                min_quality=a.min_quality,
                on_failure=a.on_failure,
            )
            seconds += time.perf_counter() - t0
            # tile centre in metres from the image's upper-left corner (the grid starts there)
            centre = ((col + tile.width / 2) * grid.gsd, (row + tile.height / 2) * grid.gsd)
            out[tile.tile_id] = (centre, reg)
    finally:
        rb.close()
        rc.close()
    return out, model, model_seconds, seconds


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


def real_pairs(data: Path, sets: list[str]):
    for name in sets:
        folder = data / name
        for a in sorted((folder / "A").glob("*.png")) if folder.exists() else []:
            b = folder / "B" / a.name
            if b.exists():
                yield (
                    f"{name}/{a.stem}",
                    cv2.imread(str(a))[:, :, ::-1],
                    cv2.imread(str(b))[:, :, ::-1],
                    0.5,
                )


def synth_pairs(n: int):
    from detector.synth.scene import generate_scene

    for seed in range(n):
        scene = generate_scene(seed=4100 + seed, size=1024, gsd=0.25, max_shift_px=0)
        yield f"synthetic/{seed}", scene.epochs[0], scene.epochs[1], 0.25


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--sets",
        default="levir_cd_1024,levir_cd_256,dsifn_cd_256",
        help="real pair sets (folders of --data)",
    )
    ap.add_argument(
        "--moves",
        default="0.5,1,2,3,4,6,8",
        help="comma-separated moves in metres (each pair by each)",
    )
    ap.add_argument(
        "--synthetic", type=int, default=4, help="synthetic pairs (shift only, exact truth)"
    )
    ap.add_argument("--max-rot", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--before",
        default="1439391",
        help="git revision whose registration to compare with "
        "(default: the last one before the coarse-to-fine search); '' = none",
    )
    ap.add_argument(
        "--before-max-shift", type=float, default=3.0, help="align.max_shift_m default of --before"
    )
    args = ap.parse_args()
    moves = [float(m) for m in args.moves.split(",")]
    cfg = RunConfig()  # the defaults, as a user runs it
    variants = {"now": (load_align(None), cfg.align.max_shift_m)}
    if args.before:
        variants["before"] = (load_align(args.before), args.before_max_shift)
    rng = np.random.default_rng(args.seed)
    # stats[variant][(group, move)] -> counters
    stats = {
        v: defaultdict(
            lambda: {
                "abs": [],
                "rel": [],
                "rel_tiles": 0,
                "flagged": 0,
                "tiles": 0,
                "models": 0,
                "pairs": 0,
            }
        )
        for v in variants
    }
    seconds = {v: [0.0, 0, 0.0, 0] for v in variants}  # tiles s, tiles, model s, pairs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = list(real_pairs(args.data, args.sets.split(","))) + list(
            synth_pairs(args.synthetic)
        )
        for name, a, b, gsd in sources:
            group = name.split("/")[0]
            real = group != "synthetic"
            write_tif(tmp / "a.tif", a, gsd)
            write_tif(tmp / "b.tif", b, gsd)
            # the unmoved pair's own registration, tile by tile (the *rel* truth), by each variant
            refs = {
                v: register_pair(tmp / "a.tif", tmp / "b.tif", cfg, al, ms)[0] if real else None
                for v, (al, ms) in variants.items()
            }
            for move in moves:
                ang = rng.uniform(0, 2 * np.pi)
                shift = (move * np.cos(ang), move * np.sin(ang))
                rot = rng.uniform(-args.max_rot, args.max_rot) if real else 0.0
                cur, t_m = moved(b, gsd, shift, rot)
                write_tif(tmp / "c.tif", cur, gsd)
                line = f"{name:34s} move {move:4.1f} m rot {rot:+.2f}°"
                for v, (al, ms) in variants.items():
                    regs, model, msec, sec = register_pair(
                        tmp / "a.tif", tmp / "c.tif", cfg, al, ms
                    )
                    seconds[v][0] += sec
                    seconds[v][1] += len(regs)
                    seconds[v][2] += msec
                    seconds[v][3] += 1
                    st = stats[v][(group, move)]
                    e_abs, flagged = tile_errors(regs, t_m, None, GSD_WORK)
                    st["abs"] += e_abs
                    st["flagged"] += flagged
                    st["tiles"] += len(regs)
                    st["models"] += int(model.ok)
                    st["pairs"] += 1
                    e_rel = []
                    if real:
                        ref = refs[v]
                        e_rel = tile_errors(regs, t_m, ref, GSD_WORK)[0]
                        st["rel"] += e_rel
                        st["rel_tiles"] += len(e_rel) + sum(
                            1
                            for tid, (_, r) in regs.items()
                            if (not r.ok or r.source == "georef")
                            and tid in ref
                            and ref[tid][1].ok
                            and ref[tid][1].source != "georef"
                        )
                    med = (
                        np.median(e_rel if real else e_abs)
                        if (e_rel if real else e_abs)
                        else float("nan")
                    )
                    line += (
                        f" | {v}: model {'ok' if model.ok else 'NO'} ({model.inliers}/{model.blocks}) "
                        f"flagged {flagged}/{len(regs)} {'rel' if real else 'abs'} med {med:.2f} m"
                    )
                print(line, flush=True)
    groups = list(dict.fromkeys(g for g, _ in stats["now"]))
    for v in variants:
        print(
            f"\n### {v}"
            + (
                f" ({args.before}, max_shift_m {variants[v][1]:g})"
                if v == "before"
                else f" (max_shift_m {variants[v][1]:g})"
            )
        )
        print(
            "| pairs | move | moved copies | tiles | flagged | mosaic model ok | within 0.5 m (rel) | "
            "median rel err | within 0.5 m (abs) | mean abs err |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for group in groups:
            for move in moves:
                s = stats[v][(group, move)]
                ab, rel = np.array(s["abs"]), np.array(s["rel"])
                within_rel = (
                    f"{(rel <= 0.5).sum() / max(s['rel_tiles'], 1):.1%} of {s['rel_tiles']}"
                    if s["rel_tiles"]
                    else "–"
                )
                med_rel = f"{np.median(rel):.2f} m" if rel.size else "–"
                print(
                    f"| {group} | {move:g} m | {s['pairs']} | {s['tiles']} | {s['flagged']} "
                    f"| {s['models']}/{s['pairs']} "
                    f"| {within_rel} | {med_rel} | {(ab <= 0.5).sum() / max(s['tiles'], 1):.1%} | "
                    f"{ab.mean() if ab.size else float('nan'):.3f} m |"
                )
            # the group over all moves
            ss = [stats[v][(group, m)] for m in moves]
            rel = np.concatenate([np.array(s["rel"]) for s in ss])
            rel_tiles = sum(s["rel_tiles"] for s in ss)
            tiles = sum(s["tiles"] for s in ss)
            ab = np.concatenate([np.array(s["abs"]) for s in ss])
            within_rel = (
                f"**{(rel <= 0.5).sum() / max(rel_tiles, 1):.1%}** of {rel_tiles}"
                if rel_tiles
                else "–"
            )
            med_rel = f"{np.median(rel):.2f} m" if rel.size else "–"
            print(
                f"| **{group}** | all | {sum(s['pairs'] for s in ss)} | {tiles} | **{sum(s['flagged'] for s in ss)}** "
                f"| {sum(s['models'] for s in ss)}/{sum(s['pairs'] for s in ss)} | {within_rel} | "
                f"{med_rel} | {(ab <= 0.5).sum() / max(tiles, 1):.1%} | "
                f"{ab.mean() if ab.size else float('nan'):.3f} m |"
            )
    # The mosaic model is fitted once per night on a coarse read of at most COARSE_MAX_SIDE pixels,
    # whatever the night's size, so its share per tile shrinks as nights grow; these pairs hold
    # 4-36 tiles, far fewer than a night. Both parts are printed, and the amortised total.
    print("\nregistration cost (reads excluded, one process):")
    per = {}
    for v, (sec, n, msec, pairs) in seconds.items():
        per[v] = (sec / max(n, 1), msec / max(pairs, 1), (sec + msec) / max(n, 1))
        print(
            f"  {v}: register_tile {1000 * per[v][0]:.1f} ms per tile over {n} tiles; "
            f"mosaic model {1000 * per[v][1]:.0f} ms per pair over {pairs} pairs; "
            f"amortised over these pairs {1000 * per[v][2]:.1f} ms per tile"
        )
    if "before" in per:
        r = [a / max(b, 1e-9) for a, b in zip(per["now"], per["before"], strict=True)]
        print(
            f"  now / before: register_tile {r[0]:.2f}x, mosaic model {r[1]:.2f}x, "
            f"amortised over these pairs {r[2]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
