"""Ingest: an external orthomosaic (other CRS / GSD / bands) into the baseline's grid, validated."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from detector.cli import main
from detector.errors import InputError
from detector.flight.ingest import ingest

LEFT, TOP, RES, N = 500_000.0, 2_500_200.0, 0.5, 200  # EPSG:32650, 100 m x 100 m


def _write(path, data, crs, transform, **kw):
    count = data.shape[0]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        **kw,
    ) as dst:
        dst.write(data)
    return path


@pytest.fixture
def baseline(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, N, N), dtype=np.uint8)
    return _write(tmp_path / "baseline.tif", data, "EPSG:32650", from_origin(LEFT, TOP, RES, RES))


def _ramp_mosaic(tmp_path, crs="EPSG:4326", alpha_hole=True):
    """An RGBA uint8 mosaic in another CRS whose red band encodes the baseline-CRS easting (exact truth)."""
    res = 0.25
    n = int(120 / res)
    src_t = from_origin(LEFT - 10, TOP + 10, res, res)
    xs = LEFT - 10 + (np.arange(n) + 0.5) * res
    red = np.tile(np.round((xs - LEFT) * 2).clip(0, 255).astype(np.uint8), (n, 1))
    rgba = np.stack([red, np.full_like(red, 100), np.full_like(red, 50), np.full_like(red, 255)])
    if alpha_hole:
        rgba[3, : n // 2, : n // 2] = 0  # a quarter with no data (upper-left)
    dst_t, w, h = rasterio.warp.calculate_default_transform(
        "EPSG:32650", crs, n, n, *rasterio.transform.array_bounds(n, n, src_t)
    )
    out = np.zeros((4, h, w), np.uint8)
    reproject(
        rgba,
        out,
        src_transform=src_t,
        src_crs="EPSG:32650",
        dst_transform=dst_t,
        dst_crs=crs,
        resampling=Resampling.nearest,
    )
    path = _write(tmp_path / "odm.tif", out, crs, dst_t, photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [
            rasterio.enums.ColorInterp.red,
            rasterio.enums.ColorInterp.green,
            rasterio.enums.ColorInterp.blue,
            rasterio.enums.ColorInterp.alpha,
        ]
    return path


def test_reprojects_into_the_baseline_grid(tmp_path, baseline):
    out = tmp_path / "current.tif"
    rep = ingest(_ramp_mosaic(tmp_path), baseline, out)
    with rasterio.open(out) as src, rasterio.open(baseline) as b:
        assert src.crs == b.crs and src.res == b.res
        col0 = (src.transform.c - b.transform.c) / RES
        assert col0 == pytest.approx(round(col0), abs=1e-6)  # aligned to the baseline's pixels
        red = src.read(1).astype(float)
        mask = src.read_masks(1) > 0
        xs = src.transform.c + (np.arange(src.width) + 0.5) * RES
        expected = np.tile((xs - LEFT) * 2, (src.height, 1))
        inner = mask & (expected > 2) & (expected < 250)
        bias_m = (
            red[inner] - expected[inner]
        ).mean() / 2.0  # red = 2 x easting offset (uint8-rounded)
        assert abs(bias_m) < 0.1, f"georeferencing shift {bias_m:.3f} m"
        assert np.abs(red[inner] - expected[inner]).max() / 2.0 <= 0.5
    assert rep.coverage == pytest.approx(0.75, abs=0.03)  # the alpha hole is masked out
    assert rep.source_gsd_m < 0.5


def test_no_crs_no_overlap_and_too_few_bands_are_refused(tmp_path, baseline):
    data = np.zeros((3, 50, 50), np.uint8) + 100
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(
        no_crs, "w", driver="GTiff", width=50, height=50, count=3, dtype="uint8"
    ) as dst:
        dst.write(data)
    with pytest.raises(InputError, match="no CRS"):
        ingest(no_crs, baseline, tmp_path / "o.tif")
    far = _write(
        tmp_path / "far.tif", data, "EPSG:32650", from_origin(LEFT + 10_000, TOP, 0.5, 0.5)
    )
    with pytest.raises(InputError, match="does not overlap"):
        ingest(far, baseline, tmp_path / "o.tif")
    gray = _write(tmp_path / "gray.tif", data[:1], "EPSG:32650", from_origin(LEFT, TOP, 0.5, 0.5))
    with pytest.raises(InputError, match="needs RGB"):
        ingest(gray, baseline, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()


def test_cli_ingest_exit_codes(tmp_path, baseline, capsys):
    assert (
        main(
            [
                "ingest",
                str(_ramp_mosaic(tmp_path)),
                "--baseline",
                str(baseline),
                "--out",
                str(tmp_path / "c.tif"),
            ]
        )
        == 0
    )
    assert "covers 75" in capsys.readouterr().out
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\0garbage")
    assert (
        main(["ingest", str(bad), "--baseline", str(baseline), "--out", str(tmp_path / "d.tif")])
        == 2
    )
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.realdata
def test_webodm_orthophoto_ingests_onto_itself(shared_data, tmp_path):
    ortho = shared_data / "webodm_test_fixtures" / "orthophoto.tif"
    rep = ingest(ortho, ortho, tmp_path / "c.tif")
    assert rep.coverage > 0.9 and rep.source_gsd_m == pytest.approx(0.5, abs=0.01)
    with rasterio.open(tmp_path / "c.tif") as src, rasterio.open(ortho) as o:
        assert src.transform == o.transform and src.count == 3
        assert np.array_equal(src.read(1)[src.read_masks(1) > 0], o.read(1)[src.read_masks(1) > 0])


def _feet_dsm(tmp_path, crs="EPSG:4326"):
    """A DSM in another CRS, heights in feet (declared): ground 10 m, a 20 m x 20 m roof at 16 m
    (baseline-CRS easting 40-60, northing 40-60 m from the lower-left), nodata in one corner."""
    res = 0.5
    n = int(120 / res)
    src_t = from_origin(LEFT - 10, TOP + 10, res, res)
    xs = LEFT - 10 + (np.arange(n) + 0.5) * res
    ys = TOP + 10 - (np.arange(n) + 0.5) * res
    z = np.full((n, n), 10.0, np.float32)
    z[np.ix_((ys > TOP - 60) & (ys < TOP - 40), (xs > LEFT + 40) & (xs < LEFT + 60))] = 16.0
    z_ft = (z / 0.3048).astype(np.float32)
    z_ft[: n // 4, : n // 4] = -32767.0  # no data (upper-left)
    dst_t, w, h = rasterio.warp.calculate_default_transform(
        "EPSG:32650", crs, n, n, *rasterio.transform.array_bounds(n, n, src_t)
    )
    out = np.full((1, h, w), -32767.0, np.float32)
    reproject(
        z_ft[None],
        out,
        src_transform=src_t,
        src_crs="EPSG:32650",
        dst_transform=dst_t,
        dst_crs=crs,
        resampling=Resampling.nearest,
        src_nodata=-32767.0,
        dst_nodata=-32767.0,
    )
    path = _write(tmp_path / "odm_dsm.tif", out, crs, dst_t, nodata=-32767.0)
    with rasterio.open(path, "r+") as ds:
        ds.units = ("ft",)
    return path


def test_dsm_in_feet_and_another_crs_comes_out_in_metres_on_the_baseline_grid(
    tmp_path, baseline, capsys
):
    from detector.flight.ingest import DSM_NODATA
    from detector.geo.raster import open_raster

    out = tmp_path / "current_dsm.tif"
    assert (
        main(
            [
                "ingest",
                str(_feet_dsm(tmp_path)),
                "--baseline",
                str(baseline),
                "--out",
                str(out),
                "--dsm",
            ]
        )
        == 0
    )
    with rasterio.open(out) as src, rasterio.open(baseline) as b:
        assert (
            src.crs == b.crs and src.res == b.res and src.count == 1 and src.dtypes[0] == "float32"
        )
        assert src.nodata == DSM_NODATA and src.units[0] == "metre"
        z = src.read(1)
        x0, y0 = src.transform.c, src.transform.f

        def at(east, north):  # metres from the baseline's upper-left corner
            return z[int((y0 - (TOP - north)) / RES), int((LEFT + east - x0) / RES)]

        assert at(50, 50) == pytest.approx(16.0, abs=0.01)  # the roof, feet -> metres
        assert at(80, 80) == pytest.approx(10.0, abs=0.01)  # the ground
        assert at(2, 2) == DSM_NODATA  # the source's nodata corner
    assert (
        open_raster(out, "DSM", elevation=True).z_unit == "metre"
    )  # what run --baseline-dsm reads


def test_ingest_makes_a_new_output_folder_and_refuses_an_image_as_dsm(tmp_path, baseline, capsys):
    out = tmp_path / "night-2" / "current.tif"  # a new night's folder, as run --out makes one
    assert (
        main(
            ["ingest", str(_ramp_mosaic(tmp_path)), "--baseline", str(baseline), "--out", str(out)]
        )
        == 0
    )
    assert out.is_file()
    capsys.readouterr()
    code = main(
        [
            "ingest",
            str(out),
            "--baseline",
            str(baseline),
            "--out",
            str(tmp_path / "dsm.tif"),
            "--dsm",
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "this is an image, not a DSM" in err[0]
    assert not (tmp_path / "dsm.tif").exists()
