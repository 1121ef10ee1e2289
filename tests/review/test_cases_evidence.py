"""Evidence chips: the right pixels, the polygon drawn where it belongs, any CRS."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject

from cases_util import GROUND, ROOF, STRUCTURES, write_scene
from detector.errors import InputError
from detector.review.evidence import CHIP_PANEL_PX, GAP_PX, HEADER_PX, read_rgb, render_chip

REGISTRY_CRS = CRS.from_epsg(4547)


def _warp(src_path, dst_path, dst_crs):
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds
        )
        profile = src.profile | {
            "crs": dst_crs,
            "transform": transform,
            "width": width,
            "height": height,
        }
        with rasterio.open(dst_path, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(
                    rasterio.band(src, band),
                    rasterio.band(dst, band),
                    resampling=Resampling.nearest,
                )
    return dst_path


@pytest.mark.parametrize("current_crs", [None, "EPSG:32650"])
def test_chip_shows_before_and_after_with_outline(tmp_path, current_crs):
    baseline = write_scene(tmp_path / "baseline.tif", [])
    current = write_scene(tmp_path / "current.tif", ["A"])
    if current_crs:
        current = _warp(current, tmp_path / "current_utm.tif", current_crs)
    polygon = shapely.box(
        *STRUCTURES["A"]
    )  # 10 m x 10 m -> chip window 30 m (min context 15 m each side)
    chip = render_chip(polygon, REGISTRY_CRS, baseline, current, title="test")
    assert chip.shape == (HEADER_PX + CHIP_PANEL_PX, 2 * CHIP_PANEL_PX + GAP_PX, 3)
    before = chip[HEADER_PX:, :CHIP_PANEL_PX]
    after = chip[HEADER_PX:, CHIP_PANEL_PX + GAP_PX :]
    centre = CHIP_PANEL_PX // 2
    assert tuple(before[centre, centre]) == (GROUND,) * 3
    assert tuple(after[centre, centre]) == (ROOF,) * 3
    # roof spans 10 m of 30 m: 85 px; inside 40 px from the centre it is roof, outside 50 px ground
    assert np.all(after[centre, centre - 38 : centre + 38] == ROOF)
    assert tuple(after[centre, centre - 60]) == (GROUND,) * 3
    # the outline (red in 'after', amber in 'before') sits on the polygon edge, 42.7 px left of centre
    edge = centre - round(5 * CHIP_PANEL_PX / 30)
    red = after[centre, edge - 2 : edge + 3]
    assert np.any((red[:, 2] > 200) & (red[:, 0] < 120))
    amber = before[centre, edge - 2 : edge + 3]
    assert np.any((amber[:, 1] > 170) & (amber[:, 0] < 80))


def test_read_rgb_outside_the_mosaic_is_black_and_missing_file_is_input_error(tmp_path):
    scene = write_scene(tmp_path / "s.tif", ["A"])
    left, bottom, right, top = STRUCTURES["A"]
    pixels = read_rgb(scene, REGISTRY_CRS, (left - 400, bottom, right - 400, top), 16, 16)
    assert pixels.shape == (16, 16, 3) and pixels.max() == 0
    with pytest.raises(InputError, match="orthomosaic not found"):
        read_rgb(tmp_path / "nope.tif", REGISTRY_CRS, (0, 0, 1, 1), 4, 4)


def test_uint16_mosaic_is_stretched(tmp_path):
    path = tmp_path / "u16.tif"
    data = np.full((1, 64, 64), 1000, dtype=np.uint16)
    data[:, 16:48, 16:48] = 3000
    profile = dict(
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint16",
        crs="EPSG:4547",
        transform=rasterio.transform.from_origin(500_000, 2_500_064, 1, 1),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    rgb = read_rgb(path, REGISTRY_CRS, (500_000, 2_500_000, 500_064, 2_500_064), 64, 64)
    assert rgb[32, 32].tolist() == [255, 255, 255] and rgb[2, 2].tolist() == [0, 0, 0]
