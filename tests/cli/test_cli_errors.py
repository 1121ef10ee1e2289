"""Bad input gets exit code 2, one clear line naming the file, and no partial GeoPackage."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from detector.cli import main
from pipeline_util import (
    PAIR_TRANSFORM,
    make_contract_model,
    run_argv,
    textured_image,
    write_geotiff,
)

T = PAIR_TRANSFORM  # the grid of the `pair` fixture (conftest.py)


def _run(capsys, tmp_path, b, c, m, *extra):
    out = tmp_path / "out"
    code = main(run_argv(b, c, m, out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err, out


def _assert_clean_failure(code, err, out, needle):
    assert code == 2, err
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]
    assert not (out / "candidates.gpkg").exists()
    assert not list(out.glob(".*.tmp*")) if out.exists() else True


def test_good_pair_runs(capsys, tmp_path, pair):
    code, err, out = _run(capsys, tmp_path, *pair)
    assert code == 0
    assert (out / "candidates.gpkg").exists()


def test_missing_file(capsys, tmp_path, pair):
    b, c, m = pair
    code, err, out = _run(capsys, tmp_path, tmp_path / "nope.tif", c, m)
    _assert_clean_failure(code, err, out, "nope.tif: baseline mosaic not found")


def test_not_a_raster(capsys, tmp_path, pair):
    b, c, m = pair
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not a raster")
    code, err, out = _run(capsys, tmp_path, b, bad, m)
    _assert_clean_failure(code, err, out, "notes.tif")


def test_no_crs(capsys, tmp_path, pair):
    import rasterio

    b, c, m = pair
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(
        nocrs, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8", transform=T
    ) as d:
        d.write(np.zeros((3, 100, 100), np.uint8))
    code, err, out = _run(capsys, tmp_path, b, nocrs, m)
    _assert_clean_failure(code, err, out, "has no CRS")


def test_no_overlap(capsys, tmp_path, pair):
    b, c, m = pair
    far = write_geotiff(
        tmp_path / "far.tif",
        textured_image(100, 100),
        "EPSG:4547",
        Affine(0.1, 0, 600000, 0, -0.1, 2513000),
    )
    code, err, out = _run(capsys, tmp_path, b, far, m)
    _assert_clean_failure(code, err, out, "does not overlap")


def test_band_count_mismatch(capsys, tmp_path, pair):
    import rasterio

    b, c, m = pair
    two = tmp_path / "two.tif"
    with rasterio.open(
        two,
        "w",
        driver="GTiff",
        width=100,
        height=100,
        count=2,
        dtype="uint8",
        transform=T,
        crs="EPSG:4547",
    ) as d:
        d.write(np.zeros((2, 100, 100), np.uint8))
    code, err, out = _run(capsys, tmp_path, b, two, m)
    _assert_clean_failure(code, err, out, "2 band(s)")


def test_truncated_tiff(capsys, tmp_path, pair):
    b, c, m = pair
    cut = tmp_path / "cut.tif"
    data = c.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    code, err, out = _run(capsys, tmp_path, b, cut, m)
    _assert_clean_failure(code, err, out, "cut.tif")


def test_all_nodata_current_is_refused_not_reported_as_nothing_new(capsys, tmp_path, pair):
    """A night that saw nothing is not 'zero increment': exit 2 before any output."""
    b, c, m = pair
    empty = write_geotiff(
        tmp_path / "empty.tif", np.zeros((600, 600, 3), np.uint8), "EPSG:4547", T, nodata=0
    )
    code, err, out = _run(capsys, tmp_path, b, empty, m)
    _assert_clean_failure(code, err, out, "covers 0.0% of the baseline")
    assert "was the flight processed?" in err[0]


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("missing", "model file not found"),
        ("not_onnx", "not a readable ONNX model"),
        ("no_metadata", "lacks buildwatch metadata"),
        ("wrong_channels", "model has 4 input channels"),
    ],
)
def test_bad_model(capsys, tmp_path, pair, kind, needle):
    b, c, _ = pair
    m = tmp_path / "bad.onnx"
    if kind == "not_onnx":
        m.write_bytes(b"\x00garbage")
    elif kind == "no_metadata":
        make_contract_model(m, drop_keys=("buildwatch_gsd_m",))
    elif kind == "wrong_channels":
        make_contract_model(m, channels=4)
    code, err, out = _run(capsys, tmp_path, b, c, m)
    _assert_clean_failure(code, err, out, needle)


def test_bad_config(capsys, tmp_path, pair):
    b, c, m = pair
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("detect:\n  conff: 0.3\n")
    code, err, out = _run(capsys, tmp_path, b, c, m, "--config", str(cfg))
    _assert_clean_failure(code, err, out, "detect.conff")


def test_model_not_matching_its_sha256_sidecar(capsys, tmp_path, pair):
    b, c, m = pair
    m.with_name(m.name + ".sha256").write_text("0" * 64 + "  m.onnx\n")
    code, err, out = _run(capsys, tmp_path, b, c, m)
    _assert_clean_failure(code, err, out, "does not match m.onnx.sha256")


def test_truncated_cog(capsys, tmp_path, pair):
    """COGs keep overviews first: a cut file still opens and shows its overviews."""
    import rasterio.shutil

    b, c, m = pair
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(str(c), str(cog), driver="COG", compress="DEFLATE", blocksize=256)
    cut = tmp_path / "cog_cut.tif"
    data = cog.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.3)])
    code, err, out = _run(capsys, tmp_path, b, cut, m)
    _assert_clean_failure(code, err, out, "cog_cut.tif: current mosaic cannot be read")


def test_rgb_baseline_with_panchromatic_current(capsys, tmp_path, pair):
    b, c, m = pair
    pan = write_geotiff(tmp_path / "pan.tif", textured_image(600, 600)[..., :1], "EPSG:4547", T)
    code, err, out = _run(capsys, tmp_path, b, pan, m)
    _assert_clean_failure(
        code, err, out, "pan.tif: current mosaic has 1 colour band(s) but the baseline"
    )


def test_dated_permits_need_a_current_date(capsys, tmp_path, pair):
    import geopandas as gpd
    from shapely.geometry import box

    b, c, m = pair  # neither mosaic carries TIFFTAG_DATETIME
    gpd.GeoDataFrame(
        {"valid_to": ["2020-01-01"]},
        geometry=[box(500000, 2512990, 500010, 2513000)],
        crs="EPSG:4547",
    ).to_file(tmp_path / "permits.gpkg")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "change:\n  exclusions:\n    - path: permits.gpkg\n      kind: permitted\n      action: drop\n"
    )
    code, err, out = _run(capsys, tmp_path, b, c, m, "--config", str(cfg))
    _assert_clean_failure(code, err, out, "has no acquisition date")
    cfg.write_text(cfg.read_text() + "current_date: 2026-05-02\n")
    code, err, out = _run(capsys, tmp_path, b, c, m, "--config", str(cfg))
    assert code == 0, err


def test_missing_exclusion_layer_fails_before_any_tile(capsys, tmp_path, pair):
    b, c, m = pair
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("change:\n  exclusions:\n    - path: nowhere.gpkg\n      kind: known_building\n")
    code, err, out = _run(capsys, tmp_path, b, c, m, "--config", str(cfg))
    _assert_clean_failure(
        code, err, out, "nowhere.gpkg: exclusion layer (known_building) not found"
    )
    assert not (out / "work").exists()


def test_conf_flag_is_validated(capsys, tmp_path, pair):
    b, c, m = pair
    code, err, out = _run(capsys, tmp_path, b, c, m, "--conf", "1.5")
    _assert_clean_failure(code, err, out, "detect.conf")
