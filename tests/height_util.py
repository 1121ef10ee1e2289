"""The height-fusion scene: imagery and a DSM pair with exact truth, for runs through the oracle.

Used by tests/night/test_height.py (the run's fusion) and tests/review/test_height_cases.py (the
cases it makes).
"""

from __future__ import annotations

import numpy as np
from affine import Affine

from pipeline_util import plant, textured_image, write_geotiff

SRC_GSD, SIZE, DSM_GSD = 0.1, 1400, 0.5
X0, Y0 = 500000.0, 2500000.0
CRS = "EPSG:32650"


def write_dsm(path, h, crs=CRS, gsd=DSM_GSD, nodata=-9999.0, units="metre", x0=X0):
    import rasterio

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=h.shape[1],
        height=h.shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=Affine(gsd, 0, x0, 0, -gsd, Y0),
        nodata=nodata,
    ) as dst:
        dst.write(h.astype(np.float32), 1)
        if units:
            dst.units = (units,)
    return path


def dsm_cells(col, row, w, h):
    """Source-pixel box (col, row, w, h) at 0.1 m -> DSM slices at 0.5 m."""
    f = int(DSM_GSD / SRC_GSD)
    return slice(row // f, (row + h) // f), slice(col // f, (col + w) // f)


def fusion_scene(tmp_path, units_current="metre", scale_current=1.0, offset=0.9):
    """Imagery: A and B planted (seen by the oracle). DSM: A gains 6 m (confirmed), B nothing (down-weighted),
    a house C gains a 3 m storey invisible in the image (-> extension), a green patch D gains 5 m (a tree)."""
    t = Affine(SRC_GSD, 0, X0, 0, -SRC_GSD, Y0)
    rgb = textured_image(SIZE, SIZE, seed=2)
    rgb = np.repeat(rgb[..., :1], 3, axis=2)
    d_box = (1000, 200, 120, 120)
    rgb[200:320, 1000:1120] = (50, 150, 60)  # D is green in both epochs
    base = write_geotiff(tmp_path / "b.tif", rgb, CRS, t, date="2026:05:01 00:00:00")
    a_box, b_box, c_box = (200, 200, 100, 80), (700, 900, 90, 90), (300, 800, 150, 150)
    cur = write_geotiff(
        tmp_path / "c.tif", plant(rgb, [a_box, b_box]), CRS, t, date="2026:06:01 00:00:00"
    )
    n = SIZE * SRC_GSD / DSM_GSD
    hb = np.full((int(n), int(n)), 30.0, np.float32)
    hb[dsm_cells(*c_box)] += 6  # house C
    hc = hb.copy()
    hc[dsm_cells(*a_box)] += 6
    ys, xs = dsm_cells(*c_box)
    hc[ys.start + 5 : ys.stop - 5, xs.start + 5 : xs.stop - 5] += 3  # storey on C: 10 x 10 m
    hc[dsm_cells(*d_box)] += 5
    rng = np.random.default_rng(0)
    hb += rng.normal(0, 0.05, hb.shape).astype(np.float32)
    hc = (hc + rng.normal(0, 0.05, hc.shape).astype(np.float32) + offset) * scale_current
    bd = write_dsm(tmp_path / "dsm_b.tif", hb)
    cd = write_dsm(tmp_path / "dsm_c.tif", hc, units=units_current)
    return base, cur, bd, cd, t
