"""Retraining end to end (tiny training, seconds): the shipped model's checkpoint recovered from its
ONNX, the gate refusing a model trained on shuffled labels, and three nights of a district that
reviews, retrains, promotes and rolls back."""

from __future__ import annotations

import json
import logging
import sqlite3

import geopandas as gpd
import numpy as np
import pytest

pytest.importorskip(
    "ultralytics", reason="training extra not installed (pip install -e '.[train]')"
)

from detector.cli import main  # noqa: E402
from detector.fileio import file_sha256  # noqa: E402
from detector.night.model import DEFAULT_MODEL_PATH  # noqa: E402
from detector.night.model_registry import ModelRegistry  # noqa: E402
from detector.synth.scene import generate_scene, write_scene  # noqa: E402

GSD = 0.25


def _scene_dir(root, seed, size=512, lon=114.25, nights=1):
    paths = write_scene(
        generate_scene(seed, size=size, gsd=GSD, nights=nights), root, center_lonlat=(lon, 22.72)
    )
    return root, paths


@pytest.mark.slow
def test_checkpoint_recovered_from_the_shipped_onnx(tmp_path, monkeypatch):
    """The shipped model ships without a .pt; the recovered checkpoint computes what the ONNX computes
    and exports back to the same outputs."""
    import onnxruntime as ort
    import torch

    from training.checkpoint import _calibration_batch, checkpoint_from_onnx
    from training.export import export_onnx

    monkeypatch.chdir(tmp_path)
    ck = checkpoint_from_onnx(DEFAULT_MODEL_PATH, tmp_path / "shipped.pt")
    data = torch.load(ck, weights_only=False)
    assert data["buildwatch"]["onnx_max_abs_diff"] < 1e-3
    bn = data["model"].model[0].bn
    assert not torch.allclose(
        bn.running_var, torch.ones_like(bn.running_var)
    )  # statistics measured, not identity
    again = export_onnx(ck, tmp_path / "again.onnx", model_name="again", imgsz=512)
    x = _calibration_batch(6, 512, count=1, seed=4242)
    outs = [
        ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        for m in (DEFAULT_MODEL_PATH, again)
    ]
    assert np.abs(outs[0] - outs[1]).max() < 1e-3
    assert (outs[0][0, 4:8].max(axis=0) > 0.25).sum() > 0  # the comparison covers confident anchors


def _shuffled_label_dataset(root, seeds, imgsz):
    """Pair chips of synthetic scenes whose boxes belong to other chips, classes rotated."""
    from detector.types import CHANGE_CLASSES
    from training.datasets import (
        ChipSample,
        DatasetWriter,
        OrientedBox,
        chip_samples,
        polygon_to_obb,
    )

    chips = []
    for seed in seeds:
        scene = generate_scene(seed, size=256, gsd=GSD)
        boxes = [
            OrientedBox(CHANGE_CLASSES.index(c.cls), polygon_to_obb(c.polygon))
            for c in scene.changes[0]
        ]
        chips += chip_samples(
            np.concatenate(scene.epochs[:2], axis=2), boxes, imgsz, imgsz, f"s{seed}"
        )
    writer = DatasetWriter(root, 6, CHANGE_CLASSES)
    for i, chip in enumerate(chips):
        donor = chips[(i + 1) % len(chips)]
        wrong = [OrientedBox((b.class_id + 1) % 4, b.corners) for b in donor.boxes]
        writer.add("train" if i % 4 else "val", ChipSample(chip.stem, chip.image, wrong))
    return writer.write_yaml()


@pytest.mark.slow
def test_gate_refuses_a_model_trained_on_shuffled_labels(tmp_path, monkeypatch, caplog):
    from training.config import load_train_config
    from training.export import export_onnx
    from training.retrain import gate_and_register
    from training.train import train_model

    monkeypatch.chdir(tmp_path)
    data = _shuffled_label_dataset(tmp_path / "ds", range(930000, 930004), 128)
    cfg = load_train_config(
        None,
        {
            "name": "shuffled",
            "imgsz": 128,
            "train.epochs": 1,
            "train.batch": 4,
            "train.workers": 0,
            "train.project": str(tmp_path / "runs"),
        },
    )
    bad = export_onnx(
        train_model(cfg, data).best, tmp_path / "bad.onnx", model_name="shuffled", imgsz=256
    )
    reg = ModelRegistry(tmp_path / "models")
    reg.promote(reg.add(DEFAULT_MODEL_PATH, model_name="buildwatch-pair-v2").version)
    _scene_dir(tmp_path / "holdout" / "synthetic" / "s1", 940001)
    _scene_dir(tmp_path / "holdout" / "district" / "d1", 940002)
    with caplog.at_level(logging.INFO, logger="training.retrain"):
        version, gate = gate_and_register(
            reg,
            reg.promoted,
            bad,
            None,
            tmp_path / "holdout" / "synthetic",
            tmp_path / "holdout" / "district",
            tmp_path / "gate",
        )
    assert not gate.promote
    assert gate.old["district_f1"] > 0.5 and gate.new["district_f1"] < gate.old["district_f1"] - 0.3
    assert "no improvement" in gate.reason and "\n" not in gate.reason
    assert (
        reg.promoted.version == "v0001" and version.version == "v0002"
    )  # registered, not promoted
    assert reg.get("v0002").gate["promote"] is False and reg.get("v0002").note.startswith(
        "gate refused"
    )
    assert any("kept v0001, v0002 not promoted" in r.getMessage() for r in caplog.records)


def _review(registry, truth):
    """Operators' verdicts: cases on a true change confirmed, the others false positives."""
    from detector.review.gpkg import connect

    cases = gpd.read_file(registry, layer="cases")
    con = connect(registry)
    for _, case in cases.iterrows():
        status = "confirmed_illegal" if truth.intersects(case.geometry).any() else "false_positive"
        con.execute(
            "UPDATE cases SET status = ?, reviewer = 'li' WHERE case_id = ?", (status, case.case_id)
        )
    con.commit()
    con.close()
    return len(cases)


def _run_record(out):
    with sqlite3.connect(out / "candidates.gpkg") as con:
        return dict(
            zip(
                ("model_version", "model_sha256"),
                con.execute("SELECT model_version, model_sha256 FROM runs").fetchone(),
            )
        )


@pytest.mark.slow
def test_three_nights_review_retrain_promote_rollback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    night, paths = _scene_dir(tmp_path / "district", 3, size=1024, nights=2)
    tiles = tmp_path / "tiles"
    for i, seed in enumerate((21, 22)):  # the district's own labelled tiles, 1 km apart
        _scene_dir(tiles / f"t{i}", seed, lon=114.26 + 0.01 * i)
    cases, models = tmp_path / "cases.gpkg", tmp_path / "models"

    # night 1: the shipped model (no registry yet); operators review the cases
    assert (
        main(
            [
                "run",
                "--baseline",
                str(night / "epoch_00.tif"),
                "--current",
                str(night / "epoch_01.tif"),
                "--out",
                str(tmp_path / "n1"),
                "--cases",
                str(cases),
                "--no-progress",
            ]
        )
        == 0
    )
    assert _run_record(tmp_path / "n1") == {
        "model_version": "",
        "model_sha256": file_sha256(DEFAULT_MODEL_PATH),
    }
    assert _review(cases, gpd.read_file(night / "truth_01.geojson")) > 0

    # retrain: empty registry -> v0001 = the shipped model (checkpoint recovered), v0002 fine-tuned
    capsys.readouterr()
    assert (
        main(
            [
                "retrain",
                "--models",
                str(models),
                "--work",
                str(tmp_path / "work"),
                "--tiles",
                str(tiles),
                "--cases",
                str(cases),
                "--baseline",
                str(night / "epoch_00.tif"),
                "--current",
                str(night / "epoch_01.tif"),
                "--holdout",
                "t1",
                "--epochs",
                "1",
                "--imgsz",
                "128",
                "--batch",
                "4",
                "--time-minutes",
                "0",
                "--synthetic-train",
                "1",
                "--synthetic-holdout",
                "1",
                "--synthetic-size",
                "512",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-2]
    assert line.startswith("v0002 from v0001: ")
    reg = ModelRegistry(models)
    v1, v2 = reg.versions()
    assert (
        v1.sha256 == file_sha256(DEFAULT_MODEL_PATH) and v1.checkpoint is not None
    )  # kept beside the ONNX
    assert v2.parent == "v0001" and v2.checkpoint is not None and v2.sha256 != v1.sha256
    manifest = v2.data_manifest
    assert [t["name"] for t in manifest["tiles"]] == ["t0"] and [
        h["name"] for h in manifest["holdout"]
    ] == ["t1"]
    assert manifest["reviews"]["positives"] + manifest["reviews"]["negatives"] > 0
    assert manifest["tiles"][0]["format"] == "polygons" and len(manifest["tiles"][0]["sha256"]) == 3
    work_manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert work_manifest["version"] == "v0002" and work_manifest["config"]["train"][
        "weights"
    ] == str(v1.checkpoint)
    assert work_manifest["gate"]["reason"] in (tmp_path / "work" / "retrain.log").read_text()
    if (
        reg.promoted.version != "v0002"
    ):  # a one-epoch model rarely passes the gate: the operator promotes it
        assert "kept v0001" in line
        assert (
            main(["models", "promote", "v0002", "--models", str(models), "--reason", "scenario"])
            == 0
        )
    assert reg.promoted.version == "v0002"

    # night 2: the promoted version runs, and says so in the run, the candidates and the cases
    args = [
        "run",
        "--baseline",
        str(night / "epoch_01.tif"),
        "--current",
        str(night / "epoch_02.tif"),
        "--cases",
        str(cases),
        "--models",
        str(models),
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "n2")]) == 0
    assert _run_record(tmp_path / "n2") == {"model_version": "v0002", "model_sha256": v2.sha256}
    cand = gpd.read_file(tmp_path / "n2" / "candidates.gpkg", layer="candidates")
    assert len(cand) and set(cand["model_version"]) == {"v0002"}
    found = gpd.read_file(cases, layer="cases")
    tonight = found[found["last_run_id"] == found["last_run_id"].max()]
    assert len(tonight) and all(name.endswith("@v0002") for name in tonight["model_name"])

    # rollback restores v0001: the same night runs the shipped model again
    assert main(["models", "rollback", "--models", str(models)]) == 0
    assert main([*args, "--out", str(tmp_path / "n2b")]) == 0
    assert _run_record(tmp_path / "n2b") == {
        "model_version": "v0001",
        "model_sha256": file_sha256(DEFAULT_MODEL_PATH),
    }
