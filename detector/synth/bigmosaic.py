"""A large textured mosaic for the throughput benchmarks (``scripts/bench_run.py``, ``scripts/bench_dask.py``).

Not a scene: no plan, no truth; random texture written block by block (bounded memory), the
same ground in both epochs for one seed, and with ``plant`` a few red roofs in every block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.fileio import atomic_path


def write_big(path: Path, size: int, gsd: float, seed: int, plant: bool) -> None:
    """A textured size x size RGB GeoTIFF written block by block (bounded memory).

    JPEG (YCbCr) compressed, 512 px blocks, overviews 2-16: the shape of a drone orthomosaic as
    photogrammetry tools deliver it.
    """
    import cv2
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=Affine(gsd, 0, 520000, 0, -gsd, 2515000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="jpeg",
        photometric="ycbcr",
        jpeg_quality=90,
        BIGTIFF="IF_SAFER",
    )
    block = 2048
    with atomic_path(path, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                rng = np.random.default_rng(
                    seed * 1_000_003 + r * 7919 + c
                )  # same ground in both epochs
                low = rng.integers(40, 200, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
                img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
                img = np.clip(
                    img.astype(np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255
                ).astype(np.uint8)
                if plant:
                    prng = np.random.default_rng(r * 31 + c)
                    for _ in range(3):
                        y, x = prng.integers(0, max(1, h - 150)), prng.integers(0, max(1, w - 150))
                        img[y : y + 100, x : x + 120] = (200, 60, 50)
                dst.write(np.moveaxis(img, -1, 0), window=Window(c, r, w, h))
        dst.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.average)
