"""Height change from DSM pairs (detector/night/height.py): regions, offsets, fusion, validation.

Tiny synthetic height grids with exact truth; the run-level tests use the difference oracle of
tests/pipeline_util.py in place of the network, so every number is known in advance.
"""

from __future__ import annotations

import cv2
import geopandas as gpd
import numpy as np
import pytest
from affine import Affine

from detector.cli import main
from detector.config import HeightConfig, RunConfig
from detector.geo.dsm import DsmPair
from detector.night.change import polygon_mask
from detector.night.height import fuse, greenness, tile_heights
from detector.run import run_pipeline
from detector.types import Detection
from height_util import CRS, SRC_GSD, X0, Y0, fusion_scene, write_dsm
from pipeline_util import make_contract_model, run_argv, textured_image, write_geotiff

GSD = 0.25
RULES = HeightConfig()
PAIR = DsmPair(None, None, 1.0, 1.0, 1.0, 0.1, 1.0)  # the run's offset: 1.0 m; tiles refine it


def _smear(h, sigma_m=0.3):
    return cv2.GaussianBlur(h.astype(np.float32), (0, 0), sigma_m / GSD)


def _grids(seed=0, offset=1.2, noise=0.08, storey=True, new=True, shift_px=0.0):
    """A 256 x 256 tile: ground 20 m (tilted), an 8 x 8 m house of 6 m, a 4 x 4 m storey on it, a new 6 x 5 m
    building of 9 m, a tree; both DSMs smeared and noisy; the current one offset by ``offset``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) * GSD
    ground = 20 + 0.01 * xx - 0.005 * yy
    b = ground.copy()
    b[40:72, 40:72] += 6  # house (rows, cols), 8 x 8 m
    c = b.copy()
    if storey:
        c[48:64, 48:64] += 3  # new storey, 4 x 4 m = 16 m²
    if new:
        c[150:174, 100:120] += 9  # new building, 6 x 5 m = 30 m²
    tree = ((xx - 50) ** 2 + (yy - 12) ** 2) < 9
    b[tree] = np.maximum(b[tree], ground[tree] + 6)
    b, c = _smear(b), _smear(c)
    if shift_px:
        c = cv2.warpAffine(
            c, np.float32([[1, 0, shift_px], [0, 1, 0]]), (256, 256), borderMode=cv2.BORDER_REFLECT
        )
    b += rng.normal(0, noise, b.shape).astype(np.float32)
    c += rng.normal(0, noise, c.shape).astype(np.float32) + offset
    ok = np.ones((256, 256), bool)
    return b, ok, c, ok.copy()


def test_storey_and_new_building_regions_with_offset_removed():
    b, vb, c, vc = _grids()
    th = tile_heights(b, vb, c, vc, GSD, PAIR, RULES)
    assert th.offset_m == pytest.approx(1.2, abs=0.02)
    assert 0.08 <= th.noise_m <= 0.16
    regions = sorted(th.regions, key=lambda r: r.gain_m)
    assert len(regions) == 2
    storey, new = regions
    assert storey.gain_m == pytest.approx(3.0, abs=0.1) and new.gain_m == pytest.approx(
        9.0, abs=0.1
    )
    assert storey.area_m2 == pytest.approx(16, rel=0.2) and new.area_m2 == pytest.approx(
        30, rel=0.2
    )
    assert (storey.cx, storey.cy) == pytest.approx((56, 56), abs=1)
    assert storey.baseline_m == pytest.approx(6.0, abs=0.4) and storey.current_m == pytest.approx(
        9.0, abs=0.4
    )
    assert new.baseline_m == pytest.approx(0.0, abs=0.4) and new.current_m == pytest.approx(
        9.0, abs=0.4
    )


def test_no_change_gives_no_region_despite_noise_and_misregistered_edges():
    for seed in range(3):
        b, vb, c, vc = _grids(seed, offset=0.3, noise=0.12, storey=False, new=False, shift_px=1.5)
        assert tile_heights(b, vb, c, vc, GSD, PAIR, RULES).regions == []


def test_gain_below_a_storey_or_area_below_minimum_is_no_region():
    b, vb, c, vc = _grids(storey=False, new=False)
    c[150:174, 100:120] += 2.0  # a 2 m gain: below min_gain_m 2.5
    c[200:208, 200:208] += 5.0  # 2 x 2 m: below min_area_m2 6
    assert tile_heights(b, vb, c, vc, GSD, PAIR, RULES).regions == []
    rules = HeightConfig(min_gain_m=1.5, min_area_m2=3.0)
    assert len(tile_heights(b, vb, c, vc, GSD, PAIR, rules).regions) == 2


def _det(col0, row0, w, h, conf=0.6, cls="new_building"):
    return Detection(col0 + w / 2, row0 + h / 2, w, h, 0.0, conf, cls)


def test_fusion_confirms_downweights_adds_extensions_and_rejects_vegetation():
    b, vb, c, vc = _grids()
    c[200:240, 20:60] += 5  # a crown grew: 10 x 10 m of gain
    th = tile_heights(b, vb, c, vc, GSD, PAIR, RULES)
    assert len(th.regions) == 3
    rgb = np.full((256, 256, 3), 128, np.uint8)
    rgb[200:240, 20:60] = (60, 140, 50)  # the crown is green in tonight's image
    changes = [
        (_det(100, 150, 20, 24, 0.6), 0.9),  # the new building, seen by the image model
        (_det(180, 60, 20, 20, 0.6), 0.9),
    ]  # something the image saw where the height did not change
    per_det, extra = fuse(changes, th, rgb, RULES, 0, 256, polygon_mask)
    assert per_det[0].tags == ["height_confirmed"] and per_det[0].confidence == pytest.approx(0.8)
    assert per_det[0].gain_m == pytest.approx(9.0, abs=0.1)
    assert per_det[1].tags == ["no_height_change"] and per_det[1].confidence == pytest.approx(0.3)
    assert abs(per_det[1].gain_m) < 0.1
    assert len(extra) == 1  # the storey; the crown is vegetation
    assert extra[0].class_name == "extension" and extra[0].tags == ["height_only"]
    assert extra[0].gain_m == pytest.approx(3.0, abs=0.1) and extra[0].baseline_m == pytest.approx(
        6.0, abs=0.4
    )
    # down-weighting is configurable; a region outside the tile's core is another tile's
    per_det, extra = fuse(
        changes, th, rgb, HeightConfig(no_change_weight=1.0), 100, 100, polygon_mask
    )
    assert per_det[1].confidence == 0.6 and extra == []
    assert greenness(rgb, np.ones((256, 256), bool)) == pytest.approx(1600 / 65536)


# ---------------------------------------------------------------- through the run (oracle)


def test_fusion_through_the_run(tmp_path, oracle):
    base, cur, bd, cd, t = fusion_scene(tmp_path)
    model = make_contract_model(tmp_path / "m.onnx", channels=6, imgsz=256, gsd=0.25, overlap=64)
    cfg = RunConfig(
        baseline=base,
        current=cur,
        out=tmp_path / "out",
        model=model,
        workers=1,
        progress=False,
        baseline_dsm=bd,
        current_dsm=cd,
    )
    summary = run_pipeline(cfg)
    gdf = gpd.read_file(summary.candidates_path, layer="candidates")
    gdf["x"], gdf["y"] = gdf.geometry.centroid.x, gdf.geometry.centroid.y
    gdf = gdf.sort_values("x").reset_index(drop=True)
    assert len(gdf) == 3, gdf[["class", "tags", "confidence", "height_gain_m"]]
    a, c, b = gdf.iloc[0], gdf.iloc[1], gdf.iloc[2]  # A at x 25 m, C at 37.5 m, B at 74.5 m
    assert (a["x"] - X0) == pytest.approx(25, abs=0.5) and a["tags"] == "height_confirmed"
    assert a["confidence"] == pytest.approx(0.95) and a["height_gain_m"] == pytest.approx(
        6.0, abs=0.15
    )
    assert b["tags"] == "no_height_change" and b["confidence"] == pytest.approx(0.45)
    assert abs(b["height_gain_m"]) < 0.15
    assert c["class"] == "extension" and c["tags"] == "height_only"
    assert c["height_gain_m"] == pytest.approx(3.0, abs=0.15) and c[
        "baseline_height_m"
    ] == pytest.approx(6, abs=0.3)
    assert c["area_m2"] == pytest.approx(100, rel=0.2)
    # without DSMs: the two image candidates as before, no height columns filled
    cfg = RunConfig(
        baseline=base, current=cur, out=tmp_path / "out2", model=model, workers=1, progress=False
    )
    plain = gpd.read_file(run_pipeline(cfg).candidates_path, layer="candidates")
    assert (
        len(plain) == 2
        and plain["height_gain_m"].isna().all()
        and set(plain["confidence"]) == {0.9}
    )


def test_feet_declared_current_dsm_is_converted(tmp_path, oracle):
    base, cur, bd, cd, t = fusion_scene(tmp_path, units_current="ft", scale_current=1 / 0.3048)
    model = make_contract_model(tmp_path / "m.onnx", channels=6, imgsz=256, gsd=0.25, overlap=64)
    cfg = RunConfig(
        baseline=base,
        current=cur,
        out=tmp_path / "out",
        model=model,
        workers=1,
        progress=False,
        baseline_dsm=bd,
        current_dsm=cd,
    )
    gdf = gpd.read_file(run_pipeline(cfg).candidates_path, layer="candidates")
    assert len(gdf) == 3
    assert sorted(gdf["height_gain_m"].round(0)) == [0.0, 3.0, 6.0]


# ---------------------------------------------------------------- bad DSMs: exit 2, one line


@pytest.fixture
def dsm_pair(tmp_path):
    t = Affine(SRC_GSD, 0, X0, 0, -SRC_GSD, Y0)
    rgb = textured_image(600, 600)
    b = write_geotiff(tmp_path / "b.tif", rgb, CRS, t)
    c = write_geotiff(tmp_path / "c.tif", rgb, CRS, t)
    m = make_contract_model(tmp_path / "m.onnx")
    hb = 30 + np.random.default_rng(1).normal(0, 0.05, (120, 120)).astype(np.float32)
    hb[20:60, 20:60] += 12
    return b, c, m, hb


def _cli(capsys, tmp_path, b, c, m, *extra):
    out = tmp_path / "out"
    code = main(run_argv(b, c, m, out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert not (out / "candidates.gpkg").exists()
    return code, err


@pytest.mark.parametrize(
    "case,needle",
    [
        ("only_one", "needs both DSMs"),
        ("missing", "nope.tif: current DSM not found"),
        ("no_crs", "current DSM has no CRS"),
        ("elsewhere", "does not overlap the mosaics"),
        ("all_nodata", "has no valid heights over the mosaics"),
        ("feet_undeclared", "one is in feet, the other in metres"),
        ("offset", "from the baseline DSM"),
    ],
)
def test_bad_dsm_is_refused_before_work(capsys, tmp_path, dsm_pair, case, needle):
    b, c, m, hb = dsm_pair
    bd = write_dsm(tmp_path / "dsm_b.tif", hb)
    hc, kw = hb.copy(), {}
    if case == "no_crs":
        kw["crs"] = None
    elif case == "elsewhere":
        kw["x0"] = X0 + 5000
    elif case == "all_nodata":
        hc[:] = -9999
    elif case == "feet_undeclared":
        hc = hc / 0.3048
        kw["units"] = None
    elif case == "offset":
        hc = hc + 400
    cd = write_dsm(tmp_path / "dsm_c.tif", hc, **kw)
    args = ["--baseline-dsm", str(bd)]
    if case != "only_one":
        args += ["--current-dsm", str(tmp_path / "nope.tif") if case == "missing" else str(cd)]
    code, err = _cli(capsys, tmp_path, b, c, m, *args)
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_good_dsm_pair_runs_from_the_cli(capsys, tmp_path, dsm_pair):
    b, c, m, hb = dsm_pair
    bd = write_dsm(tmp_path / "dsm_b.tif", hb)
    cd = write_dsm(tmp_path / "dsm_c.tif", hb + 0.4, nodata=None, units=None)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--baseline",
            str(b),
            "--current",
            str(c),
            "--out",
            str(out),
            "--model",
            str(m),
            "--workers",
            "1",
            "--no-progress",
            "--baseline-dsm",
            str(bd),
            "--current-dsm",
            str(cd),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "candidates.gpkg").exists()
    assert "vertical offset +0.40 m" in (out / "buildwatch.log").read_text()
