"""Two views, one verdict (detector/night/second_view.py): exact rules on boxes, and the nightly run
with a single-epoch building model checking the pair model's candidates.

The models are the exact oracles of tests/pipeline_util.py: the pair "model" finds every blob
that differs between the epochs, the building "model" every saturated red roof.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine

from detector.config import RunConfig, SecondViewConfig
from detector.errors import ModelError, OutputError
from detector.night.second_view import additions, judge, overlap_matrices
from detector.run import run_pipeline
from detector.types import Detection
from pipeline_util import OracleDetector, make_contract_model, plant, textured_image, write_geotiff


def det(cx, cy, w, h, conf=0.9, cls="new_building"):
    return Detection(cx, cy, w, h, 0.0, conf, cls)


# ------------------------------------------------------------------ rules on boxes


def test_overlap_matrices_are_exact():
    iou, cover = overlap_matrices(
        [det(10, 10, 10, 10)], [det(15, 10, 10, 10), det(10, 10, 4, 4), det(50, 50, 2, 2)]
    )
    np.testing.assert_allclose(iou[0], [50 / 150, 16 / 100, 0.0])
    np.testing.assert_allclose(cover[0], [0.5, 1.0, 0.0])


@pytest.mark.parametrize(
    "cls,current,baseline,keep,structure,reason",
    [
        # a new building tonight, nothing in the baseline
        ("new_building", [det(10, 10, 10, 10, 0.7)], [], True, 0.7, ""),
        # no structure tonight: a texture or season difference
        ("new_building", [], [], False, 0.0, "no structure tonight"),
        ("new_building", [det(40, 40, 10, 10)], [], False, 0.0, "no structure tonight"),
        # the baseline shows the same structure, as large: not new
        (
            "new_building",
            [det(10, 10, 10, 10)],
            [det(10, 10, 10, 10, 0.2)],
            False,
            0.9,
            "the baseline shows it already",
        ),
        (
            "temporary_structure",
            [det(10, 10, 10, 10)],
            [det(11, 10, 10, 10)],
            False,
            0.9,
            "the baseline shows it already",
        ),
        # the baseline shows a smaller structure there: it grew, keep
        ("new_building", [det(10, 10, 10, 10)], [det(10, 10, 6, 6)], True, 0.9, ""),
        # an extension: the building was there, larger now or not; a structure tonight is all it needs
        ("extension", [det(10, 10, 10, 10)], [det(10, 10, 10, 10)], True, 0.9, ""),
        ("extension", [], [], False, 0.0, "no structure tonight"),
        # construction sites are not buildings: unchecked
        ("construction_site", [], [], True, 0.0, ""),
    ],
)
def test_judge_each_case(cls, current, baseline, keep, structure, reason):
    (v,) = judge([det(10, 10, 10, 10, 0.8, cls)], current, baseline, cover=0.3, match_iou=0.2)
    assert (v.keep, v.structure_conf, v.reason) == (keep, structure, reason)


def test_judge_takes_the_most_confident_covering_building_and_measures_only_when_not_confirming():
    current = [det(12, 10, 10, 10, 0.4), det(10, 10, 9, 9, 0.8), det(60, 60, 10, 10, 0.99)]
    (v,) = judge([det(10, 10, 10, 10)], current, [], cover=0.3, match_iou=0.2)
    assert v.structure_conf == 0.8
    (v,) = judge([det(10, 10, 10, 10)], [], [], cover=0.3, match_iou=0.2, confirm=False)
    assert v.keep and v.structure_conf == 0.0


def test_additions_are_strong_unexplained_and_uncovered():
    current = [
        det(10, 10, 10, 10, 0.9),
        det(40, 40, 10, 10, 0.3),
        det(70, 70, 10, 10, 0.8),
        det(100, 100, 8, 8, 0.8),
    ]
    baseline = [det(70, 70, 10, 10, 0.2)]  # explains the third
    candidates = [det(100, 100, 10, 10)]  # the pair model already reports the fourth
    added = additions(current, baseline, candidates, add_conf=0.5, cover=0.3, match_iou=0.2)
    assert [(d.cx, d.class_name, iou) for d, iou in added] == [(10, "new_building", 0.0)]


@pytest.mark.parametrize(
    "baseline_box,added",
    [
        ((10, 10, 40, 10), False),  # IoU 0.25 >= 0.2: the same building
        (
            (10, 10, 60, 60),
            False,
        ),  # IoU 0.03, but it lies over all of tonight's box: drawn larger, not new
        ((14, 10, 10, 10), False),  # IoU 0.43: shifted
        (
            (17, 10, 10, 10),
            True,
        ),  # 30 % of tonight's box under it, IoU 0.18: a neighbour, not this one
        ((10, 10, 2, 2), True),  # a speck inside (4 % of the box): not a building there before
    ],
)
def test_a_baseline_structure_over_half_of_tonights_box_explains_it(baseline_box, added):
    tonight = det(10, 10, 10, 10, 0.9)
    out = additions(
        [tonight], [det(*baseline_box, 0.2)], [], add_conf=0.5, cover=0.3, match_iou=0.2
    )
    assert bool(out) is added


# ------------------------------------------------------------------ the nightly run

SIZE = 1400  # source pixels at 0.1 m
RED, TOUCHED_ROOF, NOT_A_ROOF = (230, 30, 30), (230, 30, 200), (40, 40, 230)
NEW = [(200, 200, 60, 40), (700, 300, 120, 90), (1000, 1100, 80, 80)]  # red roofs tonight only
OLD_ROOF = (300, 900, 100, 60)  # red in both; its blue channel changed: the pair sees a change
PATCH = (900, 600, 90, 90)  # a blue tarp on the ground: a change, but no structure
FAINT = (150, 1100, 70, 70)  # a roof the pair misses (too faint a change), the building model sees


@pytest.fixture
def roofs_pair(tmp_path):
    """The roofs above as (baseline, current) GeoTIFFs, 1400 px at 0.1 m, EPSG:32650."""
    rgb = textured_image(SIZE, SIZE, seed=1)
    transform = Affine(0.1, 0, 500000.0, 0, -0.1, 2500000.0)
    base_rgb = plant(plant(rgb, [OLD_ROOF], RED), [FAINT], (200, 70, 70))
    cur_rgb = plant(
        plant(plant(plant(rgb, NEW, RED), [OLD_ROOF], TOUCHED_ROOF), [PATCH], NOT_A_ROOF),
        [FAINT],
        RED,
    )
    return (
        write_geotiff(tmp_path / "baseline.tif", base_rgb, "EPSG:32650", transform),
        write_geotiff(tmp_path / "current.tif", cur_rgb, "EPSG:32650", transform),
    )


def _run(tmp_path, pair, name, **second_view):
    model = make_contract_model(tmp_path / "pair.onnx", channels=6, imgsz=256)
    building = make_contract_model(
        tmp_path / "building.onnx", channels=3, names=("building",), imgsz=256
    )
    sv = (
        SecondViewConfig(model=building, **second_view)
        if second_view
        else SecondViewConfig(enabled=False)
    )
    cfg = RunConfig(
        baseline=pair[0],
        current=pair[1],
        out=tmp_path / name,
        model=model,
        workers=1,
        progress=False,
        detect={"second_view": sv},
    )
    return gpd.read_file(run_pipeline(cfg).candidates_path, layer="candidates")


def _centres(gdf) -> set[tuple[int, int]]:
    """Candidate centres in source pixels (col, row), rounded."""
    return {
        (round((g.centroid.x - 500000.0) / 0.1), round((2500000.0 - g.centroid.y) / 0.1))
        for g in gdf.geometry
    }


def _centre(box):
    c, r, w, h = box
    return (c + w // 2, r + h // 2)


def test_pair_model_alone_reports_every_difference(tmp_path, roofs_pair, oracle):
    gdf = _run(tmp_path, roofs_pair, "alone")
    assert len(gdf) == 5  # 3 new roofs, the touched old roof, the tarp (the faint roof is missed)
    assert gdf["structure_conf"].isna().all()


def test_second_view_confirms_structures_and_drops_what_the_baseline_shows(
    tmp_path, roofs_pair, oracle
):
    gdf = _run(tmp_path, roofs_pair, "confirm", confirm=True, add=False)
    assert len(gdf) == len(NEW)
    found = _centres(gdf)
    assert all(min(abs(a - x) + abs(b - y) for a, b in found) <= 3 for x, y in map(_centre, NEW))
    assert (gdf["structure_conf"] == 0.9).all()
    assert (gdf["baseline_iou"] < 0.2).all()
    assert not gdf["tags"].str.contains("second_view").any()


def test_second_view_adds_a_structure_the_pair_model_missed(tmp_path, roofs_pair, oracle):
    gdf = _run(tmp_path, roofs_pair, "add", confirm=True, add=True)
    assert len(gdf) == len(NEW) + 1
    added = gdf[gdf["tags"] == "second_view"]
    assert len(added) == 1 and added["class"].iloc[0] == "new_building"
    ((x, y),) = _centres(added)
    fx, fy = _centre(FAINT)
    assert abs(x - fx) <= 3 and abs(y - fy) <= 3


def test_the_defaults_add_and_do_not_confirm(tmp_path, roofs_pair, oracle):
    assert (
        SecondViewConfig().add_conf is None
        and SecondViewConfig().add
        and not SecondViewConfig().confirm
    )
    gdf = _run(tmp_path, roofs_pair, "defaults", add=True)
    assert len(gdf) == 5 + 1  # every pair candidate, and the faint roof
    assert (gdf["tags"] == "second_view").sum() == 1


def test_the_shipped_building_model_is_left_out_for_a_pair_model_it_does_not_fit(
    tmp_path, roofs_pair, oracle, caplog
):
    """A 256-px pair model: the shipped 512-px building model cannot look at its tiles."""
    from detector.night.model import DEFAULT_BUILDING_MODEL_PATH

    model = make_contract_model(tmp_path / "pair.onnx", channels=6, imgsz=256)
    cfg = RunConfig(
        baseline=roofs_pair[0],
        current=roofs_pair[1],
        out=tmp_path / "x",
        model=model,
        workers=1,
        progress=False,
    )
    assert cfg.detect.second_view.enabled and cfg.detect.second_view.model is None
    with caplog.at_level("WARNING", logger="detector"):
        gdf = gpd.read_file(run_pipeline(cfg).candidates_path, layer="candidates")
    assert len(gdf) == 5 and gdf["structure_conf"].isna().all()
    words = "works on 512 px tiles" if DEFAULT_BUILDING_MODEL_PATH.exists() else "is missing"
    assert any(words in r.getMessage() for r in caplog.records)


def test_second_view_must_be_a_single_epoch_model_of_the_same_tiles(tmp_path, roofs_pair):
    model = make_contract_model(tmp_path / "pair.onnx", channels=6, imgsz=256)
    for bad, words in (
        (make_contract_model(tmp_path / "p2.onnx", channels=6, imgsz=256), "single-epoch"),
        (
            make_contract_model(tmp_path / "b512.onnx", channels=3, names=("building",), imgsz=512),
            "same tile size",
        ),
        (tmp_path / "missing.onnx", "detect.second_view.model not found"),
    ):
        cfg = RunConfig(
            baseline=roofs_pair[0],
            current=roofs_pair[1],
            out=tmp_path / "bad",
            model=model,
            workers=1,
            progress=False,
            detect={"second_view": {"model": bad}},
        )
        with pytest.raises(ModelError, match=words):
            run_pipeline(cfg)
        assert not (tmp_path / "bad" / "candidates.gpkg").exists()


def test_confident_pair_candidates_need_no_confirmation():
    sure, unsure = det(10, 10, 10, 10, 0.8), det(50, 50, 10, 10, 0.3)
    verdicts = judge([sure, unsure], [], [], cover=0.3, match_iou=0.2, confirm_below=0.5)
    assert [v.keep for v in verdicts] == [True, False]


def _counting(monkeypatch):
    """The oracle models, recording each building-model call as "baseline" or "tonight" (by the
    confidence asked)."""
    import detector.night.detect

    calls = []

    class Counting(OracleDetector):
        def __call__(self, images, conf, iou):
            if images[0].shape[2] == 3:
                calls.append("baseline" if conf < 0.2 else "tonight")
            return super().__call__(images, conf, iou)

    monkeypatch.setattr(detector.night.detect, "OnnxDetector", Counting)
    return calls


def test_the_baseline_is_looked_at_only_where_it_can_change_the_verdict(
    tmp_path, roofs_pair, monkeypatch
):
    """Tiles without pair candidates and without a structure tonight that could be added cost one
    building-model inference (tonight's), not two; the candidates are the same."""
    calls = _counting(monkeypatch)
    gdf = _run(tmp_path, roofs_pair, "lazy", confirm=True, add=True)
    assert len(gdf) == len(NEW) + 1
    tiles = gpd.read_file(tmp_path / "lazy" / "candidates.gpkg", layer="tiles")
    done = int((tiles["status"] == "done").sum())
    assert calls.count("tonight") == done
    assert 0 < calls.count("baseline") < done


# ------------------------------------------------------------------ baseline views kept between nights


def test_baseline_views_are_kept_between_nights(tmp_path, roofs_pair, monkeypatch):
    """The second night against the same baseline reads the building model's baseline view instead
    of running it, and reports exactly the same candidates."""
    calls = _counting(monkeypatch)
    cache = tmp_path / "views"
    first = _run(tmp_path, roofs_pair, "night1", confirm=True, add=True, baseline_cache=cache)
    computed = calls.count("baseline")
    assert computed > 0
    stored = [p for p in cache.rglob("*.json") if p.name != "key.json"]
    assert len(stored) == computed  # one file per tile whose baseline was looked at
    calls.clear()
    second = _run(tmp_path, roofs_pair, "night2", confirm=True, add=True, baseline_cache=cache)
    assert calls.count("baseline") == 0 and calls.count("tonight") > 0
    cols = ["class", "confidence", "baseline_iou", "structure_conf", "tags"]
    assert second[cols].equals(first[cols])
    assert [g.wkt for g in second.geometry] == [g.wkt for g in first.geometry]
    uncached = _run(tmp_path, roofs_pair, "plain", confirm=True, add=True)
    assert uncached[cols].equals(first[cols])


def test_a_changed_setting_or_unreadable_view_is_computed_again(tmp_path, roofs_pair, monkeypatch):
    calls = _counting(monkeypatch)
    cache = tmp_path / "views"
    _run(tmp_path, roofs_pair, "night1", confirm=True, add=True, baseline_cache=cache)
    computed = calls.count("baseline")
    (key,) = [p for p in cache.iterdir() if p.is_dir()]
    victim = sorted(p for p in key.glob("*.json") if p.name != "key.json")[0]
    victim.write_text("{not json")
    calls.clear()
    _run(tmp_path, roofs_pair, "night2", confirm=True, add=True, baseline_cache=cache)
    assert calls.count("baseline") == 1  # the unreadable one, rewritten
    assert victim.read_text().startswith("[")
    calls.clear()
    _run(tmp_path, roofs_pair, "night3", confirm=True, add=True, baseline_cache=cache, conf=0.3)
    assert (
        calls.count("baseline") == computed
    )  # another confidence: another key, nothing stale is read
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_an_unwritable_view_cache_is_refused_before_work(tmp_path, roofs_pair, oracle):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="baseline_cache"):
        _run(tmp_path, roofs_pair, "night", baseline_cache=blocker)
    assert not (tmp_path / "night" / "candidates.gpkg").exists()


def test_two_view_metadata_naming_missing_outputs_is_refused(tmp_path):
    """A model whose metadata names building outputs its graph lacks is one ModelError line at load."""
    import shutil

    pytest.importorskip("onnx", reason="training extra not installed")
    from detector.errors import ModelError
    from detector.night.model import DEFAULT_MODEL_PATH, load_model_spec
    from training.export import write_metadata

    bad = tmp_path / "bad.onnx"
    shutil.copyfile(DEFAULT_MODEL_PATH, bad)
    write_metadata(
        bad,
        {
            "buildwatch_building_output": "buildings",
            "buildwatch_building_baseline_output": "b0",
            "buildwatch_building_names": "{0: 'building'}",
            "buildwatch_building_conf": "0.3",
        },
    )
    with pytest.raises(ModelError, match="building outputs .*'buildings'.* re-export"):
        load_model_spec(bad)


@pytest.mark.parametrize(
    "configured, embedded, expected",
    [(None, False, 0.3), (None, True, 0.42), (0.5, True, 0.5), (0.5, False, 0.5)],
)
def test_add_confidence_is_the_configs_else_the_models_validation_choice(
    configured, embedded, expected
):
    from types import SimpleNamespace

    from detector.config import RunConfig
    from detector.night.tile import second_view_add_conf

    cfg = RunConfig.model_validate({"detect": {"second_view": {"add_conf": configured}}})
    ctx = SimpleNamespace(config=cfg, second=SimpleNamespace(conf=0.42, embedded=embedded))
    assert second_view_add_conf(ctx) == expected
