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
import os
import threading
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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


class RssSampler(threading.Thread):
    """Samples the resident memory of this process and its children every 0.2 s (Linux /proc)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_main = 0.0
        self.peak_child = 0.0
        self.peak_total = 0.0
        self._halt = threading.Event()

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _children(self) -> list[int]:
        me = os.getpid()
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                    kids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return kids

    def run(self) -> None:
        while not self._halt.is_set():
            main = self._rss_mb(os.getpid())
            kids = [self._rss_mb(k) for k in self._children()]
            self.peak_main = max(self.peak_main, main)
            self.peak_child = max([self.peak_child, *kids])
            self.peak_total = max(self.peak_total, main + sum(kids))
            time.sleep(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--gsd", type=float, default=0.1, help="source GSD in metres (drone: 0.02-0.1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="folder for temporary files")
    ap.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the generated mosaics in this folder")
    args = ap.parse_args()

    from detector.config import RunConfig
    from detector.night.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        tmp = Path(args.keep) if args.keep else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not ((tmp / "baseline.tif").exists() and (tmp / "current.tif").exists()):
            # Generate in a child process so that the numbers below are the run's alone.
            with ProcessPoolExecutor(1) as pool:
                list(pool.map(write_big, [tmp / "baseline.tif", tmp / "current.tif"], [args.size] * 2,
                              [args.gsd] * 2, [1, 1], [False, True]))
            print(f"wrote two {args.size}x{args.size} mosaics at {args.gsd} m in {time.perf_counter() - t0:.1f} s "
                  f"({(tmp / 'baseline.tif').stat().st_size / 1e6:.0f} MB each on disk)")
        else:
            print(f"reusing the mosaics in {tmp}")
        cfg = RunConfig(baseline=tmp / "baseline.tif", current=tmp / "current.tif", out=Path(scratch) / "out",
                        model=args.model, workers=args.workers, progress=True)
        sampler = RssSampler()
        sampler.start()
        s = run_pipeline(cfg)
        sampler.stop()
        print(s.text())
        print(f"tiles: {s.tiles_total}; mosaic: {args.size}x{args.size} px = {(args.size * args.gsd / 1000) ** 2:.2f} km²")
        print(f"peak RSS: main process {sampler.peak_main:.0f} MB, largest worker {sampler.peak_child:.0f} MB, "
              f"all processes together {sampler.peak_total:.0f} MB")
        peak = max(sampler.peak_main, sampler.peak_child)
        print(f"largest single process: {peak:.0f} MB -> {peak / 1536:.2f} x the 1.5 GB target "
              f"({'OK' if peak < 1536 else 'OVER'}); throughput {s.km2_per_hour:.2f} km²/h")

if __name__ == "__main__":
    main()
