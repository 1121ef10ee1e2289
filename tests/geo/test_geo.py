"""detector.geo: the one stretch, the one metric-CRS rule, ground lengths, window arithmetic, raster validation."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.transform import from_origin
from rasterio.windows import Window

from detector.errors import InputError
from detector.geo import crs as gcrs
from detector.geo import grid as ggrid
from detector.geo import raster as graster

SHENZHEN = (114.05, 22.55)  # lon, lat
NEW_YORK = (-73.97, 40.78)


# --- stretch ---------------------------------------------------------------------------------


def test_stretch_maps_the_percentiles_of_valid_nonzero_pixels_per_band():
    band0 = np.arange(1, 101, dtype=np.uint16).reshape(10, 10)  # 1..100
    band1 = band0 * 10  # 10..1000
    band2 = np.zeros((10, 10), np.uint16)  # no valid non-zero pixel: 0..1
    data = np.stack([band0, band1, band2])
    lo, hi = graster.stretch_from_array(data, low=0, high=100)
    assert lo.tolist() == [1, 10, 0] and hi.tolist() == [100, 1000, 1]
    out = graster.apply_stretch(data, (lo, hi))
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, -1] == 255 and out[1, -1, -1] == 255
    assert out[0].ravel()[49] == int(
        (50 - 1) * 255 / 99
    )  # linear in between (truncated like a cast)
    assert (out[2] == 0).all()


def test_stretch_ignores_masked_and_invalid_pixels_and_keeps_a_range_of_one():
    data = np.full((1, 4, 4), 500, np.uint16)
    data[0, 0, 0] = 60000  # outside the valid area: must not set the top
    valid = np.ones((4, 4), bool)
    valid[0, 0] = False
    lo, hi = graster.stretch_from_array(data, valid)
    assert (lo[0], hi[0]) == (500, 501)  # a flat band still maps without dividing by zero
    masked = np.ma.masked_array(data, np.broadcast_to(~valid, data.shape))
    assert graster.stretch_from_array(masked)[0][0] == 500


def test_apply_stretch_without_stretch_only_casts():
    data = np.array([[[0, 7, 255]]], np.uint8)
    assert graster.apply_stretch(data, None).tolist() == data.tolist()


def test_raster_stretch_uses_the_whole_raster_and_is_none_for_uint8(tmp_path):
    path = tmp_path / "u16.tif"
    vals = np.arange(1, 10001, dtype=np.uint16).reshape(100, 100)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=100,
        height=100,
        count=3,
        dtype="uint16",
        crs="EPSG:32650",
        transform=from_origin(500000, 2500000, 1, 1),
    ) as dst:
        dst.write(np.stack([vals, vals, vals]))
    lo, hi = graster.raster_stretch(path)
    assert lo == pytest.approx([np.percentile(vals, 1)] * 3) and hi == pytest.approx(
        [np.percentile(vals, 99)] * 3
    )
    path8 = tmp_path / "u8.tif"
    with rasterio.open(
        path8,
        "w",
        driver="GTiff",
        width=4,
        height=4,
        count=3,
        dtype="uint8",
        crs="EPSG:32650",
        transform=from_origin(500000, 2500000, 1, 1),
    ) as dst:
        dst.write(np.zeros((3, 4, 4), np.uint8))
    assert graster.raster_stretch(path8) is None


# --- the metric working CRS ---------------------------------------------------------------------


def test_metric_crs_rule():
    # CGCS2000 3-degree Gauss-Krüger CM 114E: true metres in Shenzhen -> kept
    kept = gcrs.as_crs("EPSG:4547")
    assert gcrs.working_crs(kept, *SHENZHEN) is kept
    # degrees -> the UTM zone (50N for Shenzhen)
    assert gcrs.working_crs("EPSG:4326", *SHENZHEN).to_epsg() == 32650
    # Web Mercator: metres that are 8 % off at 22.5 N -> UTM, not kept
    assert gcrs.scale_error("EPSG:3857", *SHENZHEN) > 0.05
    assert gcrs.working_crs("EPSG:3857", *SHENZHEN).to_epsg() == 32650
    # New York State Plane Long Island in US feet -> UTM 18N
    assert gcrs.working_crs("EPSG:2263", *NEW_YORK).to_epsg() == 32618
    # southern hemisphere
    assert gcrs.working_crs("EPSG:4326", 18.42, -33.92).to_epsg() == 32734


def test_utm_zone_edges_follow_the_west_inclusive_zones():
    assert gcrs.utm_crs(114.0, 22.5).to_epsg() == 32650  # 114 E starts zone 50
    assert gcrs.utm_crs(113.999, 22.5).to_epsg() == 32649
    assert gcrs.utm_crs(0.0, 10.0).to_epsg() == 32631


def test_working_crs_wkt_keeps_the_same_string():
    wkt = gcrs.as_crs("EPSG:4547").to_wkt()
    t = Transformer.from_crs("EPSG:4326", "EPSG:4547", always_xy=True)
    x, y = t.transform(*SHENZHEN)
    assert gcrs.working_crs_wkt(wkt, (x - 100, y - 100, x + 100, y + 100)) is wkt
    geo = gcrs.as_crs("EPSG:4326").to_wkt()
    assert gcrs.as_crs(gcrs.working_crs_wkt(geo, (114.0, 22.5, 114.1, 22.6))).to_epsg() == 32650


# --- ground lengths -------------------------------------------------------------------------


def test_unit_lengths_for_degrees_feet_and_utm():
    east, north = gcrs.unit_lengths_m("EPSG:4326", 0.0, 0.0)
    assert east == pytest.approx(
        111_319.49, abs=0.05
    )  # a degree of longitude on the equator (WGS84)
    assert north == pytest.approx(110_574.39, abs=0.2)  # a degree of latitude there
    east60, _ = gcrs.unit_lengths_m("EPSG:4326", 0.0, 60.0)
    assert east60 == pytest.approx(55_799.98, rel=1e-4)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:2263", always_xy=True).transform(*NEW_YORK)
    ft = gcrs.unit_lengths_m("EPSG:2263", x, y)
    assert ft == pytest.approx((0.3048006, 0.3048006), rel=2e-4)  # US survey foot, scale ~1
    assert gcrs.metres_per_unit("EPSG:32650", 500_000.0, 2_500_000.0) == pytest.approx(
        1 / 0.9996, rel=1e-6
    )


def test_source_gsd_is_geodesic_for_any_crs():
    utm = from_origin(500_000, 2_500_000, 0.5, 0.5)
    assert gcrs.source_gsd_m("EPSG:32650", utm, 100, 100) == pytest.approx(0.5 / 0.9996, rel=1e-6)
    deg = Affine(1e-5, 0, 114.0, 0, -1e-5, 22.6)
    expected = max(
        Geod(ellps="WGS84").inv(114.00050, 22.59950, 114.00051, 22.59950)[2],
        Geod(ellps="WGS84").inv(114.00050, 22.59950, 114.00050, 22.59949)[2],
    )
    assert gcrs.source_gsd_m("EPSG:4326", deg, 100, 100) == pytest.approx(expected, rel=1e-6)


# --- windows ----------------------------------------------------------------------------------

T = from_origin(1000.0, 5000.0, 0.25, 0.25)  # 0.25 m pixels, upper-left corner at (1000, 5000)


def test_window_at_and_map_to_pixel():
    assert ggrid.window_at(T, 1010.0, 4990.0) == (40, 40)
    assert ggrid.window_at(T, 990.0, 5002.5) == (-40, -10)  # outside the grid: negative
    rows, cols = ggrid.map_to_pixel(T, [1000.125, 1001.0], [4999.875, 4999.0])
    assert rows.tolist() == [0.5, 4.0] and cols.tolist() == [0.5, 4.0]  # pixel centre at +0.5
    xs, ys = ggrid.pixel_to_map(T, [4.0], [4.0])
    assert (xs[0], ys[0]) == (1001.0, 4999.0)


def test_clip_window_and_inner_slices():
    wanted = Window(-5, 90, 20, 20)
    clipped = ggrid.clip_window(wanted, 100, 100)
    assert (clipped.col_off, clipped.row_off, clipped.width, clipped.height) == (0, 90, 15, 10)
    rows, cols = ggrid.inner_slices(wanted, clipped)
    assert (rows, cols) == (slice(0, 10), slice(5, 20))
    assert ggrid.clip_window(Window(200, 0, 10, 10), 100, 100) is None
    assert (
        ggrid.clip_window(Window(100, 0, 10, 10), 100, 100) is None
    )  # touching is not overlapping


def test_sub_window_snaps_outwards_and_clips():
    win = ggrid.sub_window(T, 100, 100, (1000.3, 4990.1, 1002.0, 4999.9))
    assert (win.col_off, win.row_off, win.width, win.height) == (1, 0, 7, 40)
    # exactly on pixel edges: no extra pixel from rounding noise
    win = ggrid.sub_window(T, 100, 100, (1000.0 + 0.1 * 2.5, 4990.0, 1000.0 + 0.7 * 5, 5000.0))
    assert (win.col_off, win.width) == (1, 13)
    assert ggrid.sub_window(T, 100, 100, (2000, 4000, 2010, 4010)) is None
    win = ggrid.sub_window(T, 100, 100, (990.0, 4970.0, 1100.0, 5010.0))  # larger than the grid
    assert (win.col_off, win.row_off, win.width, win.height) == (0, 0, 100, 100)


def test_grid_for_bounds():
    transform, height = ggrid.grid_for_bounds((0.0, 0.0, 200.0, 100.0), 400)
    assert transform == from_origin(0.0, 100.0, 0.5, 0.5) and height == 200


def test_tile_window_matches_the_tile_bounds():
    from detector.geo.grid import WorkingGrid
    from detector.night.tiles import iter_tiles, tile_window

    grid = WorkingGrid(
        crs_wkt="", output_crs_wkt="", gsd=0.25, left=1000.0, top=5000.0, width=900, height=700
    )
    for tile in iter_tiles(grid, 256, 64):
        col, row = tile_window(grid, tile)
        assert (grid.left + col * grid.gsd, grid.top - row * grid.gsd) == pytest.approx(
            (tile.bounds[0], tile.bounds[3])
        )


# --- open / validate --------------------------------------------------------------------------


def _write(
    path,
    count=3,
    dtype="uint8",
    crs="EPSG:32650",
    transform=None,
    interp=None,
):
    transform = transform if transform is not None else from_origin(500000, 2500000, 1, 1)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=32,
        height=32,
        count=count,
        dtype=dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(np.ones((count, 32, 32), dtype))
        if interp:
            dst.colorinterp = interp
    return path


def test_open_raster_band_rules(tmp_path):
    from rasterio.enums import ColorInterp as C

    info = graster.open_raster(_write(tmp_path / "rgb.tif"), "mosaic")
    assert info.bands == (1, 2, 3) and info.transform == from_origin(500000, 2500000, 1, 1)
    bgra = _write(tmp_path / "bgra.tif", 4, interp=[C.blue, C.green, C.red, C.alpha])
    info = graster.open_raster(bgra, "mosaic")
    assert info.bands == (3, 2, 1) and info.has_alpha
    pan = _write(tmp_path / "pan.tif", 1)
    assert graster.open_raster(pan, "baseline mosaic").bands == (1, 1, 1)
    with pytest.raises(InputError, match="needs RGB"):
        graster.open_raster(pan, "mosaic", allow_pan=False)
    with pytest.raises(InputError, match="2 band"):
        graster.open_raster(_write(tmp_path / "two.tif", 2), "mosaic")


def test_open_raster_refusals(tmp_path):
    with pytest.raises(InputError, match="nope.tif: current mosaic not found"):
        graster.open_raster(tmp_path / "nope.tif", "current mosaic")
    with pytest.raises(InputError, match="pixel type float32"):
        graster.open_raster(_write(tmp_path / "f.tif", dtype="float32"), "mosaic")
    south_up = _write(tmp_path / "s.tif", transform=Affine(1, 0, 500000, 0, 1, 2500000))
    assert graster.open_raster(south_up, "mosaic").width == 32  # read through a warp: fine
    with pytest.raises(InputError, match="not a north-up grid"):
        graster.open_raster(south_up, "baseline", north_up=True)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\0garbage")
    with pytest.raises(InputError, match="cannot be read"):
        graster.open_raster(bad, "mosaic")


def test_acquisition_date_forms():
    from datetime import date

    assert graster.acquisition_date({"TIFFTAG_DATETIME": "2024:05:01 10:00:00"}) == date(2024, 5, 1)
    assert graster.acquisition_date({"DATE": "2024-05-02"}) == date(2024, 5, 2)
    assert graster.acquisition_date({"ACQUISITIONDATETIME": "2024-05-03T01:02:03Z"}) == date(
        2024, 5, 3
    )
    assert graster.acquisition_date({"TIFFTAG_DATETIME": "yesterday"}) is None
    assert graster.acquisition_date({}) is None
