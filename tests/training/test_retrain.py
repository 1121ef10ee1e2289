"""Retraining pieces without training: model registry, model resolution for a run, gate rules,
the district's label formats and the geography split."""

from __future__ import annotations

import json

import cv2
import geopandas as gpd
import numpy as np
import pytest
import shapely

from detector.cli import main
from detector.config import load_config
from detector.errors import ConfigError, InputError
from detector.night.context import resolve_model
from detector.night.model_registry import ModelRegistry
from pipeline_util import make_contract_model
from training.district import mask_objects, read_labelled_tiles, split_groups
from training.retrain import gate_decision


@pytest.fixture
def three_models(tmp_path):
    return [make_contract_model(tmp_path / f"m{i}.onnx", imgsz=128 + 32 * i) for i in range(3)]


def test_registry_versions_promote_rollback(tmp_path, three_models):
    reg = ModelRegistry(tmp_path / "models")
    assert (
        reg.versions() == [] and reg.promoted is None and not (tmp_path / "models").exists()
    )  # reading writes nothing
    v1 = reg.add(three_models[0], note="first", data_manifest={"tiles": ["a"]})
    assert v1.version == "v0001" and v1.parent is None and v1.checkpoint is None
    with pytest.raises(InputError, match="no model version 'v0009'"):
        reg.add(three_models[1], parent="v0009")
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"checkpoint")
    v2 = reg.add(
        three_models[1], checkpoint=ck, parent="v0001", metrics={"new": {"district_f1": 0.5}}
    )
    reg.add(three_models[2], parent="v0002")
    assert [v.version for v in reg.versions()] == ["v0001", "v0002", "v0003"]
    assert v2.checkpoint.read_bytes() == b"checkpoint" and reg.get("v0002").parent == "v0001"
    record = json.loads((tmp_path / "models" / "v0001" / "version.json").read_text())
    assert (
        record["data_manifest"] == {"tiles": ["a"]}
        and len(record["sha256"]) == 64
        and record["created"]
    )
    from detector.fileio import file_sha256

    assert reg.get("v0003").sha256 == file_sha256(three_models[2])
    with pytest.raises(ConfigError, match="no promoted version"):
        reg.resolve()
    reg.promote("v0001")
    reg.promote("v0002")
    reg.promote("v0003")
    assert reg.resolve().version == "v0003" and reg.resolve("v0001").version == "v0001"
    assert reg.rollback("bad night").version == "v0002"
    assert reg.rollback().version == "v0001"  # walks back the chain, not back and forth
    with pytest.raises(ConfigError, match="first promoted version"):
        reg.rollback()
    actions = [(h["action"], h["version"]) for h in reg.history]
    assert (
        actions[-2:] == [("rollback", "v0002"), ("rollback", "v0001")]
        and reg.history[-2]["reason"] == "bad night"
    )
    assert not list((tmp_path / "models").glob(".part-*"))
    # a changed model file is refused before a run uses it
    (tmp_path / "models" / "v0001" / "model.onnx").write_bytes(three_models[1].read_bytes())
    with pytest.raises(InputError, match="differs from the registry"):
        reg.resolve()


def test_run_resolves_the_promoted_model(tmp_path, three_models):
    reg = ModelRegistry(tmp_path / "models")
    for m in three_models[:2]:
        reg.add(m)
    reg.promote("v0002")
    cfg = load_config(None, {"models": str(tmp_path / "models")})
    assert resolve_model(cfg) == (tmp_path / "models" / "v0002" / "model.onnx", "v0002")
    cfg = load_config(None, {"models": str(tmp_path / "models"), "model_version": "v0001"})
    assert resolve_model(cfg) == (tmp_path / "models" / "v0001" / "model.onnx", "v0001")
    cfg = load_config(None, {"models": str(tmp_path / "models"), "model": str(three_models[2])})
    assert resolve_model(cfg) == (three_models[2], "")  # told otherwise: a file, no version
    assert resolve_model(load_config(None, {})) == (None, "")  # shipped model
    with pytest.raises(ConfigError, match="not both"):
        resolve_model(load_config(None, {"model": str(three_models[2]), "model_version": "v0001"}))
    with pytest.raises(ConfigError, match="needs the registry folder"):
        resolve_model(load_config(None, {"model_version": "v0001"}))
    # a config file's models path is relative to the file
    (tmp_path / "night.yaml").write_text("models: models\n")
    assert load_config(tmp_path / "night.yaml").models == tmp_path / "models"


def test_models_cli(tmp_path, three_models, capsys):
    reg = ModelRegistry(tmp_path / "models")
    reg.add(three_models[0])
    reg.add(three_models[1], parent="v0001")
    root = str(tmp_path / "models")
    assert main(["models", "promote", "v0001", "--models", root]) == 0
    assert main(["models", "promote", "v0002", "--models", root, "--reason", "better on Buji"]) == 0
    assert main(["models", "list", "--models", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert listed["promoted"] == "v0002" and [v["parent"] for v in listed["versions"]] == [
        None,
        "v0001",
    ]
    assert main(["models", "rollback", "--models", root]) == 0
    assert "v0002 -> v0001" in capsys.readouterr().out
    assert main(["models", "rollback", "--models", root]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert main(["models", "promote", "v0007", "--models", root]) == 2
    assert main(["models", "list", "--models", str(tmp_path / "nowhere")]) == 2
    assert "model registry folder not found" in capsys.readouterr().err


def _metrics(district, syn=None, dis_cls=None):
    return {
        "district_f1": district,
        "synthetic_per_class": syn or {},
        "district_per_class": dis_cls or {},
    }


def test_gate_rules():
    old = _metrics(0.40, {"new_building": 0.80, "extension": 0.60}, {"new_building": 0.40})
    better = gate_decision(
        old, _metrics(0.55, {"new_building": 0.78, "extension": 0.57}, {"new_building": 0.55})
    )
    assert better.promote and "0.400 -> 0.550" in better.reason
    same = gate_decision(old, _metrics(0.40, {"new_building": 0.9, "extension": 0.9}))
    assert not same.promote and "no improvement" in same.reason
    district = {"new_building": 0.70}
    worse_class = gate_decision(
        old, _metrics(0.70, {"new_building": 0.80, "extension": 0.50}, district), margin=0.05
    )
    assert (
        not worse_class.promote
        and "synthetic extension F1@0.3 drops 0.600 -> 0.500" in worse_class.reason
    )
    assert gate_decision(
        old, _metrics(0.70, {"new_building": 0.80, "extension": 0.50}, district), margin=0.15
    ).promote
    lost = gate_decision(
        old, _metrics(0.70, {"new_building": 0.80}, district)
    )  # a class no longer found at all
    assert not lost.promote and "extension" in lost.reason
    district_drop = gate_decision(
        old, _metrics(0.70, old["synthetic_per_class"], {"new_building": 0.30})
    )
    assert not district_drop.promote and "district new_building" in district_drop.reason
    assert not gate_decision(
        old, _metrics(0.45, old["synthetic_per_class"], district), min_gain=0.1
    ).promote
    assert not gate_decision(_metrics(None), _metrics(0.9)).promote
    for result in (better, same, worse_class, lost):
        assert "\n" not in result.reason


def _write_pair(folder, rgb_b, rgb_c, left, top, gsd=0.5, crs="EPSG:32650"):
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True)
    h, w = rgb_b.shape[:2]
    for name, img in (("baseline.tif", rgb_b), ("current.tif", rgb_c)):
        with rasterio.open(
            folder / name,
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=3,
            dtype="uint8",
            crs=crs,
            transform=from_origin(left, top, gsd, gsd),
        ) as ds:
            ds.write(img.transpose(2, 0, 1))


def test_label_formats_agree(tmp_path):
    """One house (10 x 6 m) as polygons, as a change mask and as a YOLO OBB line: same object at 0.25 m."""
    rng = np.random.default_rng(0)
    b = rng.integers(60, 90, (64, 64, 3), dtype=np.uint8)
    c = b.copy()
    c[20:32, 10:30] = 200  # rows 20..31, cols 10..29 at 0.5 m: 20 x 12 px = 10 x 6 m
    left, top = 400000.0, 2500000.0
    house = shapely.box(left + 10 * 0.5, top - 32 * 0.5, left + 30 * 0.5, top - 20 * 0.5)
    for name, write in (
        (
            "poly",
            lambda d: gpd.GeoDataFrame(
                {"class": ["extension"]},
                geometry=[house],  # noqa: B023 - called at once
                crs="EPSG:32650",
            ).to_file(d / "labels.gpkg"),
        ),
        (
            "mask",
            lambda d: cv2.imwrite(
                str(d / "change.png"), ((c[:, :, 0] == 200) * 255).astype(np.uint8)
            ),
        ),
        (
            "yolo",
            lambda d: (d / "labels.txt").write_text(
                "0 "
                + " ".join(
                    f"{v:.6f}"
                    for v in (
                        10 / 64,
                        20 / 64,
                        30 / 64,
                        20 / 64,
                        30 / 64,
                        32 / 64,
                        10 / 64,
                        32 / 64,
                    )
                )
                + "\n"
            ),
        ),
    ):
        k = ["poly", "mask", "yolo"].index(name)
        _write_pair(tmp_path / "tiles" / name, b, c, left + k * 1000.0, top)
        if name == "poly":
            house = shapely.affinity.translate(house, 0, 0)
        write(tmp_path / "tiles" / name)
    pairs = read_labelled_tiles(tmp_path / "tiles", gsd_m=0.25)
    assert [p.label_format for p in pairs] == ["mask", "polygons", "yolo_obb"]
    assert [p.group for p in pairs] == ["mask", "poly", "yolo"]  # 1 km apart: three groups
    for p in pairs:
        assert p.image.shape == (128, 128, 6)
        ((cls, poly),) = p.objects
        area = shapely.Polygon(poly).area * 0.25**2
        assert area == pytest.approx(60.0, abs=0.5), p.label_format  # 10 m x 6 m
        x0, y0 = poly.min(axis=0)
        assert (x0, y0) == pytest.approx((20.0, 40.0), abs=0.01)
        assert cls == (1 if p.label_format == "polygons" else 0)
        assert set(p.sha256) == {
            "baseline.tif",
            "current.tif",
            {"mask": "change.png", "polygons": "labels.gpkg", "yolo_obb": "labels.txt"}[
                p.label_format
            ],
        }
    # a bad label file: one clear line before anything is trained
    (tmp_path / "tiles" / "yolo" / "labels.txt").write_text("7 0 0 1 0 1 1 0 1\n")
    with pytest.raises(InputError, match="labels.txt:1: class must be"):
        read_labelled_tiles(tmp_path / "tiles", gsd_m=0.25)


def test_levir_layout_groups_and_split(tmp_path):
    """Crops inside a tile stay with it; the split never cuts a group; masks give >= 10 m² objects."""
    root = tmp_path / "levir"
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True)
    names = ["test_1", "test_2", "test_2_3", "test_2_11", "train_5"]
    for i, name in enumerate(names):
        img = np.full((32, 32, 3), 80 + i, np.uint8)
        lab = np.zeros((32, 32), np.uint8)
        lab[4:12, 4:12] = 255  # 64 px at 0.5 m = 16 m²: kept
        lab[20:22, 20:23] = 255  # 6 px = 1.5 m²: below 10 m², dropped
        for sub, arr in (("A", img), ("B", img), ("label", lab)):
            cv2.imwrite(str(root / sub / f"{name}.png"), arr)
    with pytest.raises(InputError, match="--tiles-gsd"):
        read_labelled_tiles(root, gsd_m=0.25)
    pairs = read_labelled_tiles(root, gsd_m=0.25, tiles_gsd=0.5)
    assert {p.name: p.group for p in pairs} == {
        "test_1": "test_1",
        "test_2": "test_2",
        "test_2_3": "test_2",
        "test_2_11": "test_2",
        "train_5": "train_5",
    }
    assert all(p.image.shape == (64, 64, 6) and len(p.objects) == 1 for p in pairs)
    assert shapely.Polygon(pairs[0].objects[0][1]).area == pytest.approx(
        256.0
    )  # 8x8 px at 0.5 m -> 16x16 at 0.25
    train, held = split_groups(pairs, 0.2, ["test_2"])
    assert sorted(p.name for p in held) == ["test_2", "test_2_11", "test_2_3"]
    for seed in range(5):
        train, held = split_groups(pairs, 0.3, seed=seed)
        assert {p.group for p in train}.isdisjoint({p.group for p in held}) and train and held
    with pytest.raises(InputError, match="no such tile group"):
        split_groups(pairs, 0.2, ["test_9"])
    assert len(mask_objects(np.pad(np.full((4, 4), 255, np.uint8), 2), 0.5)) == 0  # 4 m² < 10 m²


def test_retrain_bad_input_fails_before_any_work(tmp_path, capsys):
    """One line, exit 2, and no registry written when the district's data is unusable."""
    models, work = tmp_path / "models", tmp_path / "work"
    assert main(["retrain", "--models", str(models), "--work", str(work)]) == 2
    assert "give --tiles and/or --cases" in capsys.readouterr().err
    b = np.zeros((16, 16, 3), np.uint8)
    _write_pair(tmp_path / "tiles" / "t0", b, b, 400000.0, 2500000.0)
    assert (
        main(
            [
                "retrain",
                "--models",
                str(models),
                "--work",
                str(work),
                "--tiles",
                str(tmp_path / "tiles"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t0: no labels" in err and "labels.geojson" in err
    assert (
        main(
            [
                "retrain",
                "--models",
                str(models),
                "--work",
                str(work),
                "--tiles",
                str(tmp_path / "nowhere"),
            ]
        )
        == 2
    )
    assert "labelled tiles folder not found" in capsys.readouterr().err
    assert (
        main(
            [
                "retrain",
                "--models",
                str(models),
                "--work",
                str(work),
                "--cases",
                str(tmp_path / "cases.gpkg"),
            ]
        )
        == 2
    )
    assert "case registry not found" in capsys.readouterr().err
    assert not models.exists()


def test_holdout_scene_without_change_is_scored(tmp_path):
    """A held-out tile with no change (empty truth) counts its false positives instead of failing."""
    from training.district import LabelledPair, write_holdout_scene
    from training.evaluate import evaluate_pairs

    img = np.random.default_rng(1).integers(0, 255, (96, 96, 6), dtype=np.uint8)
    write_holdout_scene(
        LabelledPair("calm", img, [], "x", "mask"), tmp_path / "hold" / "calm", 0.25
    )
    report = evaluate_pairs(
        make_contract_model(tmp_path / "m.onnx", imgsz=128),
        tmp_path / "hold",
        "synth",
        tmp_path / "r.json",
    )
    assert report["summary"]["any_class"]["0.3"] == {
        "iou_threshold": 0.3,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


def test_a_finished_finetune_is_reused_only_for_the_same_data_recipe_and_parent(tmp_path):
    """A retrain killed during export or the gate restarts there; anything that changes what is
    learnt (an input's sha256, the recipe, the parent model) means a new fine-tune."""
    from training.config import load_train_config
    from training.retrain import finetune_digest, finished_finetune, record_finetune
    from training.train import TrainResult

    cfg = load_train_config(None, {"name": "retrain"})
    data = {
        "tiles": [{"name": "t0", "sha256": ["a", "b", "c"]}],
        "counts": {"train": {"images": 12}},
    }
    digest = finetune_digest(data, cfg, "parent-sha")
    assert finished_finetune(tmp_path, digest) is None  # nothing recorded yet
    best = tmp_path / "runs" / "finetune" / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"weights")
    record_finetune(
        tmp_path,
        digest,
        TrainResult(
            best.parent.parent, best, best.with_name("last.pt"), 1234.5, {"metrics/mAP50(B)": 0.8}
        ),
    )
    again = finished_finetune(tmp_path, finetune_digest(data, cfg, "parent-sha"))
    assert again is not None and again.best == best and again.seconds == 1234.5
    assert again.metrics == {"metrics/mAP50(B)": 0.8}
    moved = cfg.model_copy(deep=True)
    moved.train.project = tmp_path / "elsewhere"  # where the run is written does not matter
    assert finished_finetune(tmp_path, finetune_digest(data, moved, "parent-sha")) is not None
    changed_data = {**data, "tiles": [{"name": "t0", "sha256": ["a", "b", "X"]}]}
    longer = cfg.model_copy(deep=True)
    longer.train.time_hours = 2.0
    for d in (
        finetune_digest(changed_data, cfg, "parent-sha"),
        finetune_digest(data, longer, "parent-sha"),
        finetune_digest(data, cfg, "another-parent"),
    ):
        assert d != digest and finished_finetune(tmp_path, d) is None
    best.unlink()  # weights gone: train again
    assert finished_finetune(tmp_path, digest) is None
