#!/usr/bin/env python
"""Benchmark the nightly run on a large synthetic mosaic pair: peak memory and km²/h.

Target (issue 4): peak RSS under 1.5 GB for a 20,000 x 20,000 px pair, i.e. memory must not
grow with the mosaic. Prints peak RSS of the main process and of the largest worker, the number
of tiles, wall time and km²/h.

    python scripts/bench_run.py --size 20000 --gsd 0.1 --workers 2
    python scripts/bench_run.py --size 4000            # quick check
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def write_big(path: Path, size: int, gsd: float, seed: int, plant: bool) -> None:
    """A textured size x size RGB GeoTIFF written block by block (bounded memory)."""
    import cv2
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:4547",
                   transform=Affine(gsd, 0, 520000, 0, -gsd, 2515000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
    block = 2048
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                rng = np.random.default_rng(seed * 1_000_003 + r * 7919 + c)  # same ground in both epochs
                low = rng.integers(40, 200, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
                img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
                img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
                if plant:
                    prng = np.random.default_rng(r * 31 + c)
                    for _ in range(3):
                        y, x = prng.integers(0, max(1, h - 150)), prng.integers(0, max(1, w - 150))
                        img[y : y + 100, x : x + 120] = (200, 60, 50)
                dst.write(np.moveaxis(img, -1, 0), window=Window(c, r, w, h))
        dst.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.average)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--gsd", type=float, default=0.1, help="source GSD in metres (drone: 0.02-0.1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from detector.config import RunConfig
    from detector.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_big(tmp / "baseline.tif", args.size, args.gsd, 1, plant=False)
        write_big(tmp / "current.tif", args.size, args.gsd, 1, plant=True)
        print(f"wrote two {args.size}x{args.size} mosaics at {args.gsd} m in {time.perf_counter() - t0:.1f} s "
              f"({(tmp / 'baseline.tif').stat().st_size / 1e6:.0f} MB each on disk)")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cfg = RunConfig(baseline=tmp / "baseline.tif", current=tmp / "current.tif", out=tmp / "out",
                        model=args.model, workers=args.workers, progress=True)
        s = run_pipeline(cfg)
        main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(s.text())
        print(f"tiles: {s.tiles_total}; mosaic: {args.size}x{args.size} px = {(args.size * args.gsd / 1000) ** 2:.2f} km²")
        print(f"peak RSS main process: {main_rss:.0f} MB (before run {rss0:.0f} MB); largest worker: {child_rss:.0f} MB")
        peak = max(main_rss, child_rss)
        print(f"peak RSS of any process: {peak:.0f} MB -> {peak / 1536:.2f} x the 1.5 GB target "
              f"({'OK' if peak < 1536 else 'OVER'}); throughput {s.km2_per_hour:.2f} km²/h")


if __name__ == "__main__":
    main()
