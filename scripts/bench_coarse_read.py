#!/usr/bin/env python
"""Peak memory of the coarse whole-mosaic read (registration model + coverage) vs mosaic extent.

Writes sparse tiled GeoTIFFs *without overviews* (only one block holds data, so files are
small) of growing side, and in a fresh process per size reads each onto the coarse grid the
run uses (2048 px), printing seconds and the peak RSS above the process's baseline. The read
must be flat in the extent (``detector.night.mosaic.read_coarse``). ``--old`` measures the
previous WarpedVRT read for comparison (slow: minutes at 80,000 px).

    python scripts/bench_coarse_read.py 20000 40000 80000 [--old]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, time
from detector.geo.raster import open_raster
from detector.night.mosaic import EpochReader, coarse_grid, make_grid, read_coarse
from detector.night.align import COARSE_MAX_SIDE
info = open_raster({path!r}, "mosaic")
grid = make_grid(info, info, 0.25)
coarse, _ = coarse_grid(grid, COARSE_MAX_SIDE)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
if {old!r}:
    r = EpochReader(info, coarse); r.read(0, 0, coarse.width, coarse.height); r.close()
else:
    read_coarse(info, coarse)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{{time.perf_counter() - t:.1f}} {{peak - before:.0f}}")
"""


def make_sparse(path: Path, side: int) -> None:
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=Affine(0.05, 0, 500000, 0, -0.05, 2513000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        sparse_ok=True,
        bigtiff="YES",
    ) as dst:
        dst.write(np.full((3, 512, 512), 100, np.uint8), window=Window(0, 0, 512, 512))


def main(argv: list[str]) -> None:
    old = "--old" in argv
    sides = [int(a) for a in argv if a.isdigit()] or [20000, 40000, 80000]
    env = dict(os.environ, GDAL_CACHEMAX="128")  # what run_pipeline sets
    print(
        f"{'side px':>9} {'gigapixels':>10} {'seconds':>8} {'peak MB above start':>20}  "
        f"({'old WarpedVRT' if old else 'read_coarse'})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            path = Path(tmp) / f"sparse{side}.tif"
            make_sparse(path, side)
            code = CHILD.format(path=str(path), old=old)
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
            )
            seconds, peak = out.stdout.split()
            print(
                f"{side:>9} {side * side / 1e9:>10.2f} {float(seconds):>8.1f} {float(peak):>20.0f}"
            )
            path.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
