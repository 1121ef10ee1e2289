"""End-to-end tests of the nightly run on tiny rasters with exact truth.

The network is replaced by an exact difference "oracle" (tests/pipeline_util.py) so that these
tests check the geometry of the pipeline — windows, warps, tiling, ownership, merging and
georeferencing — to the pixel. The real model is exercised in tests/run/test_sample_demo.py.
"""

from __future__ import annotations

import math
import sqlite3

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from pyproj import Geod, Transformer

from detector.config import RunConfig
from detector.run import run_pipeline
from detector.types import CANDIDATE_COLUMNS
from pipeline_util import make_contract_model, plant, textured_image, write_geotiff

GEOD = Geod(ellps="WGS84")
SRC_GSD = 0.1  # metres, drone-like source
SIZE = 1400  # source pixels (140 m)


@pytest.fixture
def model(tmp_path):
    return make_contract_model(
        tmp_path / "contract.onnx", channels=6, imgsz=256, gsd=0.25, overlap=64
    )


def _transform_for(crs: str, lon=114.25, lat=22.72):
    """North-up transform of a SIZE x SIZE raster centred on (lon, lat) with SRC_GSD ground pixels."""
    if crs == "EPSG:4326":
        dlat = SRC_GSD / 110574.0
        dlon = SRC_GSD / (111320.0 * math.cos(math.radians(lat)))
        return Affine(dlon, 0, lon - dlon * SIZE / 2, 0, -dlat, lat + dlat * SIZE / 2)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    x, y = round(x), round(y)
    return Affine(SRC_GSD, 0, x - SRC_GSD * SIZE / 2, 0, -SRC_GSD, y + SRC_GSD * SIZE / 2)


# (col, row, width, height) in source pixels: 6 m x 4 m up to 12 m x 9 m structures
PLANTED = [(200, 200, 60, 40), (700, 300, 120, 90), (1000, 1100, 80, 80), (300, 900, 100, 60)]


def _scene(tmp_path, crs: str, current_crs: str | None = None, shift_px=(0, 0), planted=PLANTED):
    rgb = textured_image(SIZE, SIZE, seed=1)
    transform = _transform_for(crs)
    base = write_geotiff(tmp_path / "baseline.tif", rgb, crs, transform, date="2026:05:01 00:00:00")
    cur_rgb = plant(np.roll(rgb, shift_px, axis=(0, 1)), planted)
    cur = write_geotiff(
        tmp_path / "current_native.tif", cur_rgb, crs, transform, date="2026:05:02 00:00:00"
    )
    if current_crs:
        cur = _reproject(cur, tmp_path / "current.tif", current_crs)
    truth = []
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    for c, r, w, h in planted:
        x, y = transform @ (c + w / 2, r + h / 2)
        truth.append(to_ll.transform(x, y))
    return base, cur, truth


def _reproject(src_path, dst_path, dst_crs):
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds
        )
        profile = src.profile | {
            "crs": dst_crs,
            "transform": transform,
            "width": width,
            "height": height,
            "nodata": 0,
        }
        with rasterio.open(dst_path, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(
                    rasterio.band(src, b), rasterio.band(dst, b), resampling=Resampling.bilinear
                )
            dst.update_tags(**src.tags())
    return dst_path


def _run(tmp_path, base, cur, model, **kw):
    cfg = RunConfig(
        baseline=base,
        current=cur,
        out=tmp_path / "out",
        model=model,
        workers=1,
        progress=False,
        **kw,
    )
    return run_pipeline(cfg)


def _errors_m(gdf, truth):
    errs = []
    for lon, lat in truth:
        d = [GEOD.inv(lon, lat, a, b)[2] for a, b in zip(gdf["lon"], gdf["lat"])]
        errs.append(min(d) if d else np.inf)
    return np.array(errs)


@pytest.mark.parametrize(
    "crs,current_crs",
    [
        ("EPSG:4547", None),
        ("EPSG:32650", None),
        ("EPSG:4326", None),
        ("EPSG:4547", "EPSG:32650"),
    ],
)
def test_planted_structures_come_back_within_one_pixel(tmp_path, oracle, model, crs, current_crs):
    base, cur, truth = _scene(tmp_path, crs, current_crs)
    summary = _run(tmp_path, base, cur, model)
    gdf = gpd.read_file(summary.candidates_path, layer="candidates")
    assert len(gdf) == len(PLANTED)
    errs = _errors_m(gdf, truth)
    assert errs.max() <= 0.25, errs  # one pixel of the 0.25 m working GSD
    expected_area = sorted(w * h * SRC_GSD**2 for _, _, w, h in PLANTED)
    assert np.allclose(sorted(gdf["area_m2"]), expected_area, rtol=0.12)
    assert (gdf["status"] == "new").all()
    assert set(gdf["baseline_date"]) == {"2026-05-01"} and set(gdf["current_date"]) == {
        "2026-05-02"
    }


def test_output_crs_is_the_baseline_crs(tmp_path, oracle, model):
    base, cur, _ = _scene(tmp_path, "EPSG:4326", "EPSG:32650")
    gdf = gpd.read_file(_run(tmp_path, base, cur, model).candidates_path, layer="candidates")
    assert gdf.crs.to_epsg() == 4326


def test_structure_straddling_tile_boundary_yields_one_candidate(tmp_path, oracle, model):
    # tile cells are (256 - 64) * 0.25 = 48 m wide, anchored at map x = k * 48 m
    transform = _transform_for("EPSG:32650")
    x0 = transform.c
    k = math.ceil((x0 + 40) / 48.0)
    boundary_col = int(round((k * 48.0 - x0) / SRC_GSD))
    y_bound = transform.f
    kr = math.floor((y_bound - 40) / 48.0)
    boundary_row = int(round((y_bound - kr * 48.0) / SRC_GSD))
    straddler = [(boundary_col - 50, boundary_row - 40, 100, 80)]  # 10 m x 8 m across a tile corner
    base, cur, truth = _scene(tmp_path, "EPSG:32650", planted=straddler)
    from detector.config import ChangeConfig, DetectConfig

    summary = _run(
        tmp_path,
        base,
        cur,
        model,
        detect=DetectConfig(overlap_px=64),
        change=ChangeConfig(max_structure_m=16.0),
    )
    tiles = gpd.read_file(summary.candidates_path, layer="tiles")
    cells = {(int(t.split("_")[0][1:]), int(t.split("_")[1][1:])) for t in tiles.tile_id}
    assert {
        (k - 1, -kr - 1),
        (k, -kr - 1),
        (k - 1, -kr),
        (k, -kr),
    } <= cells  # the four tiles meeting at the corner
    gdf = gpd.read_file(summary.candidates_path, layer="candidates")
    assert len(gdf) == 1
    assert _errors_m(gdf, truth).max() <= 0.25
    assert gdf["area_m2"].iloc[0] == pytest.approx(80.0, rel=0.1)


def test_misregistered_current_is_corrected(tmp_path, oracle, model):
    base, cur, truth = _scene(tmp_path, "EPSG:32650", shift_px=(12, -15))  # 1.2 m / 1.5 m shift
    summary = _run(tmp_path, base, cur, model)
    gdf = gpd.read_file(summary.candidates_path, layer="candidates")
    tiles = gpd.read_file(summary.candidates_path, layer="tiles")
    done = tiles[tiles.status == "done"]
    assert (done.shift_m - math.hypot(1.2, 1.5)).abs().max() < 0.2
    assert len(gdf) == len(PLANTED)  # no false changes from the shift itself
    # the planted boxes moved with the current epoch: compare against the shifted positions
    assert _errors_m(gdf, truth).max() <= math.hypot(1.2, 1.5) + 0.25


def test_rerun_resumes_and_gives_same_ids(tmp_path, oracle, model):
    base, cur, _ = _scene(tmp_path, "EPSG:4547")
    first = _run(tmp_path, base, cur, model)
    ids1 = sorted(gpd.read_file(first.candidates_path, layer="candidates")["candidate_id"])
    second = _run(tmp_path, base, cur, model)
    ids2 = sorted(gpd.read_file(second.candidates_path, layer="candidates")["candidate_id"])
    assert (
        second.tiles_resumed == second.tiles_total - second.tiles_nodata
        or second.tiles_resumed == second.tiles_total
    )
    assert ids1 == ids2 and len(ids1) == len(PLANTED)


def test_geopackage_layout(tmp_path, oracle, model):
    base, cur, _ = _scene(tmp_path, "EPSG:4547")
    path = _run(tmp_path, base, cur, model).candidates_path
    con = sqlite3.connect(path)
    assert con.execute("pragma user_version").fetchone()[0] == 10200  # GeoPackage 1.2
    contents = dict(con.execute("select table_name, data_type from gpkg_contents").fetchall())
    assert contents == {
        "candidates": "features",
        "tiles": "features",
        "runs": "attributes",
        "layer_styles": "attributes",
    }
    styles = dict(con.execute("select f_table_name, useAsDefault from layer_styles").fetchall())
    assert styles == {"candidates": 1, "tiles": 1}
    assert (
        con.execute(
            "select count(*) from sqlite_master where name like 'rtree_candidates_geom%'"
        ).fetchone()[0]
        > 0
    )
    cols = [
        r[1] for r in con.execute("pragma table_info(candidates)") if r[1] not in ("fid", "geom")
    ]
    # docs/operations.md#output-schema, in order; the one schema is detector.types.Candidate
    assert (
        cols
        == list(CANDIDATE_COLUMNS)
        == [
            "candidate_id",
            "class",
            "confidence",
            "area_m2",
            "lon",
            "lat",
            "tile_id",
            "baseline_date",
            "current_date",
            "shift_m",
            "model_name",
            "model_sha256",
            "run_id",
            "status",
            "tags",
            "pixel_change",
            "baseline_iou",
            "structure_conf",
            "height_gain_m",
            "baseline_height_m",
            "current_height_m",
            "model_version",
        ]
    )
    run = con.execute("select baseline_sha256, candidates, tiles_total from runs").fetchone()
    assert len(run[0]) == 64 and run[1] == len(PLANTED) and run[2] > 0
    assert not list(path.parent.glob(".*.tmp*"))


def test_nodata_tiles_are_skipped_and_counted(tmp_path, oracle, model):
    rgb = textured_image(SIZE, SIZE, seed=3)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[:, : SIZE // 2] = 0  # western half has no data in the current epoch
    transform = _transform_for("EPSG:32650")
    base = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:32650", transform)
    cur_rgb = plant(rgb, [(200, 200, 60, 40), (1000, 600, 80, 80)])
    cur = write_geotiff(tmp_path / "c.tif", cur_rgb, "EPSG:32650", transform, alpha=alpha)
    summary = _run(tmp_path, base, cur, model)
    gdf = gpd.read_file(summary.candidates_path, layer="candidates")
    assert summary.tiles_nodata > 0
    assert len(gdf) == 1  # the structure in the no-data half is not reported


def test_exclusion_layer_tags_and_drops(tmp_path, oracle, model):
    from shapely.geometry import box

    from detector.config import ChangeConfig, ExclusionLayer

    base, cur, truth = _scene(tmp_path, "EPSG:4547")
    to_4326 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x, y = to_4326.transform(*truth[1])  # a permit (in another CRS) over the second structure
    permits = gpd.GeoDataFrame(
        {"permit": ["P-17"], "valid_from": ["2026-01-01"], "valid_to": ["2026-12-31"]},
        geometry=[box(x - 10, y - 10, x + 10, y + 10)],
        crs="EPSG:3857",
    )
    permits.to_file(tmp_path / "permits.gpkg")
    layer = ExclusionLayer(
        path=tmp_path / "permits.gpkg", kind="permitted", action="tag", id_field="permit"
    )
    s = _run(tmp_path, base, cur, model, change=ChangeConfig(exclusions=[layer]))
    gdf = gpd.read_file(s.candidates_path, layer="candidates")
    assert (gdf["tags"] == "permitted:P-17").sum() == 1 and len(gdf) == len(PLANTED)
    layer_drop = ExclusionLayer(path=tmp_path / "permits.gpkg", kind="permitted", action="drop")
    s = _run(tmp_path, base, cur, model, change=ChangeConfig(exclusions=[layer_drop]))
    assert len(gpd.read_file(s.candidates_path, layer="candidates")) == len(PLANTED) - 1
    expired = ExclusionLayer(
        path=tmp_path / "permits.gpkg", kind="permitted", action="drop", valid_to_field="valid_from"
    )  # "valid until" 2026-01-01: expired by May
    s = _run(tmp_path, base, cur, model, change=ChangeConfig(exclusions=[expired]))
    assert len(gpd.read_file(s.candidates_path, layer="candidates")) == len(PLANTED)


def test_two_worker_processes_give_the_same_tiles(tmp_path, model):
    base, cur, _ = _scene(tmp_path, "EPSG:4547")
    one = run_pipeline(
        RunConfig(
            baseline=base, current=cur, out=tmp_path / "w1", model=model, workers=1, progress=False
        )
    )
    two = run_pipeline(
        RunConfig(
            baseline=base, current=cur, out=tmp_path / "w2", model=model, workers=2, progress=False
        )
    )
    t1 = gpd.read_file(one.candidates_path, layer="tiles").sort_values("tile_id")
    t2 = gpd.read_file(two.candidates_path, layer="tiles").sort_values("tile_id")
    assert list(t1.tile_id) == list(t2.tile_id) and two.tiles_total == one.tiles_total
    assert np.allclose(t1.shift_m, t2.shift_m)


def test_run_updates_the_case_registry_across_nights(tmp_path, oracle, model):
    from detector.config import CasesConfig

    base, cur, _ = _scene(tmp_path, "EPSG:4547")
    reg = tmp_path / "cases.gpkg"
    cfg = dict(cases=CasesConfig(registry=reg, evidence=True, report=True))
    first = _run(tmp_path, base, cur, model, **cfg)
    assert first.cases.opened == len(PLANTED) and first.cases.updated == 0
    # the same mosaic again is a rerun of the same night: nothing new is inserted, and the night
    # still reports its structures as tonight's new cases (not "0 opened, N updated")
    second = _run(tmp_path, base, cur, model, **cfg)
    assert second.cases.opened == len(PLANTED) and second.cases.updated == 0
    assert sorted(second.cases.opened_ids) == sorted(first.cases.opened_ids)
    cases = gpd.read_file(reg, layer="cases")
    assert len(cases) == len(PLANTED) and second.cases.total == len(PLANTED)
    assert first.cases.report_html is not None and first.cases.report_html.exists()


def test_mosaic_model_matches_the_applied_shift(tmp_path, model):
    from detector.night.align import estimate_mosaic_model
    from detector.night.mosaic import make_grid, open_mosaic

    base, cur, _ = _scene(
        tmp_path, "EPSG:32650", shift_px=(12, -15)
    )  # rows +1.2 m south, cols -1.5 m
    b, c = open_mosaic(base, "baseline"), open_mosaic(cur, "current")
    grid = make_grid(b, c, 0.25)
    m = estimate_mosaic_model(b, c, grid)
    assert m.ok, m.reason
    dx, dy = m.at(grid.width / 2, grid.height / 2)
    assert dx * 0.25 == pytest.approx(-1.5, abs=0.05)
    assert dy * 0.25 == pytest.approx(1.2, abs=0.05)


def test_fully_changed_tile_falls_back_to_the_mosaic_shift(tmp_path, oracle, model):
    """A tile where everything changed (block development) cannot register on its own."""
    rgb = textured_image(SIZE, SIZE, seed=1)
    transform = _transform_for("EPSG:32650")
    base = write_geotiff(tmp_path / "baseline.tif", rgb, "EPSG:32650", transform)
    cur_rgb = rgb.copy()
    cur_rgb[600:1400, 600:1400] = textured_image(800, 800, seed=99)  # an 80 m block redeveloped
    cur = write_geotiff(tmp_path / "current.tif", cur_rgb, "EPSG:32650", transform)
    s = _run(tmp_path, base, cur, model)
    tiles = gpd.read_file(s.candidates_path, layer="tiles")
    assert s.tiles_unregistered == 0
    assert (tiles.registration == "mosaic").any()


def test_overviews_are_used_and_georeferencing_stays_exact(tmp_path, oracle, model):
    import rasterio
    from rasterio.enums import Resampling

    from detector.night.mosaic import EpochReader, choose_overview_level, make_grid, open_mosaic

    base, cur, truth = _scene(tmp_path, "EPSG:32650")
    for p in (base, cur):
        with rasterio.open(p, "r+") as ds:
            ds.build_overviews([2, 4, 8], Resampling.average)
    info = open_mosaic(base, "baseline")
    assert choose_overview_level(info, 0.25) == 0  # 0.2 m overview for the 0.25 m working grid
    assert choose_overview_level(info, 0.8) == 2
    assert choose_overview_level(info, 0.15) is None
    reader = EpochReader(info, make_grid(info, open_mosaic(cur, "current"), 0.25))
    assert reader.overview_level == 0
    reader.close()
    gdf = gpd.read_file(_run(tmp_path, base, cur, model).candidates_path, layer="candidates")
    assert len(gdf) == len(PLANTED)
    assert _errors_m(gdf, truth).max() <= 0.25


def test_single_epoch_model_reports_only_structures_absent_from_the_baseline(tmp_path, oracle):
    """A 3-channel model runs on both epochs; a structure in both is not new."""
    model3 = make_contract_model(
        tmp_path / "single.onnx", channels=3, names=("building",), imgsz=256, overlap=64
    )
    rgb = textured_image(SIZE, SIZE, seed=1)
    transform = _transform_for("EPSG:32650")
    existing = [(100, 1000, 80, 60), (900, 900, 70, 70)]
    base = write_geotiff(tmp_path / "baseline.tif", plant(rgb, existing), "EPSG:32650", transform)
    cur = write_geotiff(
        tmp_path / "current.tif", plant(rgb, existing + PLANTED), "EPSG:32650", transform
    )
    gdf = gpd.read_file(_run(tmp_path, base, cur, model3).candidates_path, layer="candidates")
    assert len(gdf) == len(PLANTED)
    assert set(gdf["class"]) == {"new_building"}
    assert (gdf["baseline_iou"] < 0.2).all()


def test_internal_mask_is_respected(tmp_path, oracle, model):
    """COGs from `buildwatch ortho` and other tools mark no-data with an internal mask band."""
    import rasterio

    rgb = textured_image(SIZE, SIZE, seed=3)
    transform = _transform_for("EPSG:32650")
    base = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:32650", transform)
    cur_path = tmp_path / "c.tif"
    cur_rgb = plant(rgb, [(200, 200, 60, 40), (1000, 600, 80, 80)])
    mask = np.full((SIZE, SIZE), 255, np.uint8)
    mask[:, : SIZE // 2] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            cur_path,
            "w",
            driver="GTiff",
            width=SIZE,
            height=SIZE,
            count=3,
            dtype="uint8",
            crs="EPSG:32650",
            transform=transform,
            tiled=True,
        ) as dst:
            dst.write(np.moveaxis(cur_rgb, -1, 0))
            dst.write_mask(mask)
    s = _run(tmp_path, base, cur_path, model)
    gdf = gpd.read_file(s.candidates_path, layer="candidates")
    assert s.tiles_nodata > 0
    assert len(gdf) == 1


@pytest.mark.parametrize("crs,lon,lat", [("EPSG:3857", 114.25, 45.0), ("EPSG:2263", -73.95, 40.75)])
def test_crs_whose_units_are_not_ground_metres(tmp_path, oracle, model, crs, lon, lat):
    """Web Mercator (scale 1/cos(lat)) and US-feet state plane: areas and GSD must be true metres."""
    from shapely.geometry import box
    from shapely.ops import transform as shp_transform

    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    unit = 0.1 if crs == "EPSG:3857" else 0.3  # CRS units per source pixel
    transform = Affine(unit, 0, x - unit * SIZE / 2, 0, -unit, y + unit * SIZE / 2)
    rgb = textured_image(SIZE, SIZE, seed=1)
    base = write_geotiff(tmp_path / "baseline.tif", rgb, crs, transform)
    planted = [(200, 200, 60, 40), (700, 300, 120, 90)]
    cur = write_geotiff(tmp_path / "current.tif", plant(rgb, planted), crs, transform)
    gdf = gpd.read_file(_run(tmp_path, base, cur, model).candidates_path, layer="candidates")
    assert len(gdf) == len(planted)
    to_utm = Transformer.from_crs(crs, "EPSG:32618" if lon < 0 else "EPSG:32650", always_xy=True)
    truth_areas = []
    truth_ll = []
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    for c, r, w, h in planted:
        x0, y0 = transform @ (c, r)
        x1, y1 = transform @ (c + w, r + h)
        poly = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        truth_areas.append(shp_transform(to_utm.transform, poly).area)
        truth_ll.append(to_ll.transform(*transform @ (c + w / 2, r + h / 2)))
    assert np.allclose(sorted(gdf["area_m2"]), sorted(truth_areas), rtol=0.12)
    assert _errors_m(gdf, truth_ll).max() <= 0.3


@pytest.mark.parametrize("max_structure_m,overlap,length_m", [(None, 127, 25.0), (24.0, 96, 23.0)])
def test_large_structure_across_a_tile_border_comes_back_whole(
    tmp_path, oracle, model, max_structure_m, overlap, length_m
):
    """A building larger than the model's own 16 m overlap, centred on a border: one, whole, up to
    ``change.max_structure_m`` (default 32 m; 24 m when configured)."""
    from detector.night.tiles import tile_layout

    # the rule: max(model 64 px, max_structure_m / 0.25 m), capped below half the 256 px tile
    cell = tile_layout(256, overlap)[0] * 0.25
    transform = _transform_for("EPSG:32650")
    k = math.ceil((transform.c + 60) / cell)
    col = int(round((k * cell - transform.c) / SRC_GSD))
    n = int(round(length_m / SRC_GSD))
    big = [(col - n // 2, 600, n, 120)]  # length_m x 12 m, centred on the border
    base, cur, truth = _scene(tmp_path, "EPSG:32650", planted=big)
    from detector.config import ChangeConfig

    kw = (
        {} if max_structure_m is None else {"change": ChangeConfig(max_structure_m=max_structure_m)}
    )
    gdf = gpd.read_file(_run(tmp_path, base, cur, model, **kw).candidates_path, layer="candidates")
    assert len(gdf) == 1
    assert gdf["area_m2"].iloc[0] == pytest.approx(length_m * 12.0, rel=0.08)
    assert _errors_m(gdf, truth).max() <= 0.25


def test_one_logging_root_reaches_the_run_log(tmp_path):
    """Every project module logs under ``detector`` (getLogger(__name__)), so the run log gets them all."""
    import logging
    import re
    from pathlib import Path

    import detector.run.night as pipeline

    root = Path(pipeline.__file__).parents[2]
    names = [
        m
        for f in [*root.glob("detector/**/*.py"), *root.glob("training/**/*.py")]
        for m in re.findall(r"getLogger\(([^)]*)\)", f.read_text())
    ]
    named = {
        n for n in names if n not in ("__name__", "", "LOG_ROOT")
    }  # "": the root logger's handlers
    assert names and all(n.strip("\"'").split(".")[0] == pipeline.LOG_ROOT for n in named), named
    handler, path = pipeline._attach_log(tmp_path)
    try:
        for name in (
            "detector.flight.ortho",
            "detector.flight.ingest",
            "detector.cli",
            "detector.review.registry",
        ):
            logging.getLogger(name).warning("hello from %s", name)
    finally:
        pipeline._detach_log(handler)
    text = path.read_text()
    assert all(
        f"hello from {n}" in text
        for n in (
            "detector.flight.ortho",
            "detector.flight.ingest",
            "detector.cli",
            "detector.review.registry",
        )
    )
