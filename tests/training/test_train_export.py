"""Tiny end-to-end: build a synthetic pair dataset, train 1 epoch, export, run in ONNX Runtime."""

import json

import numpy as np
import pytest

pytest.importorskip(
    "ultralytics", reason="training extra not installed (pip install -e '.[train]')"
)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [6, 3])
def test_tiny_train_export_onnxruntime(tmp_path, monkeypatch, channels):
    import onnxruntime as ort

    from detector.night.model import load_model_spec
    from training.build import build_dataset
    from training.config import load_train_config
    from training.export import export_onnx, read_metadata
    from training.train import train_model

    monkeypatch.chdir(tmp_path)  # .yolo/ config dir lands here
    cfg = load_train_config(
        None,
        {
            "name": f"tiny{channels}",
            "channels": channels,
            "imgsz": 128,
            "data.root": str(tmp_path / "ds"),
            "data.synthetic_train_seeds": [0, 2],
            "data.synthetic_val_seeds": [9000, 9001],
            "data.synthetic_size": 256,
            "data.workers": 1,
            "train.epochs": 1,
            "train.batch": 4,
            "train.workers": 0,
            "train.project": str(tmp_path / "runs"),
        },
    )
    summary = build_dataset(cfg, progress=False)
    assert summary.counts["train"]["images"] == (
        8 if channels == 6 else 16
    )  # 2 scenes x 4 chips (x 2 epochs)
    result = train_model(cfg)
    assert result.best.exists()
    assert (result.run_dir / "results.csv").exists()
    out = export_onnx(
        result.best,
        tmp_path / "m.onnx",
        gsd_m=0.25,
        conf=0.3,
        overlap_px=16,
        model_name="tiny",
        provenance={"test": True},
        metrics={"f1": 0.0},
    )
    spec = load_model_spec(out)
    assert (spec.channels, spec.imgsz, spec.task, spec.gsd_m, spec.conf) == (
        channels,
        (128, 128),
        "obb",
        0.25,
        0.3,
    )
    assert len(spec.names) == (4 if channels == 6 else 1)
    meta = read_metadata(out)
    assert json.loads(meta["buildwatch_provenance"]) == {"test": True}
    assert meta["model_type"] == "Detector" and meta["resolution"] == "25.000"
    assert (tmp_path / "m.onnx.sha256").read_text().split()[0] == spec.sha256
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (output,) = sess.run(
        None, {spec.input_name: np.random.rand(1, channels, 128, 128).astype(np.float32)}
    )
    assert output.shape[0] == 1 and output.ndim == 3
    assert len(spec.names) + 5 in output.shape  # 4 box + classes + angle per anchor (raw OBB head)
    if (
        channels == 6
    ):  # trained on 128-px chips, exported for larger runtime tiles (configs/train/pair-cpu.yaml)
        wide = load_model_spec(
            export_onnx(result.best, tmp_path / "wide.onnx", imgsz=192, model_name="tiny")
        )
        assert wide.imgsz == (192, 192) and wide.channels == 6
        sess = ort.InferenceSession(str(tmp_path / "wide.onnx"), providers=["CPUExecutionProvider"])
        (wide_out,) = sess.run(
            None, {wide.input_name: np.random.rand(1, 6, 192, 192).astype(np.float32)}
        )
        assert wide_out.shape[1:] in {
            (9, 756),
            (756, 9),
        }  # 4 box + 4 classes + angle; 24² + 12² + 6² anchors
    if channels == 6:  # round 2 recipe: fine-tune these weights with the pair batch augmentation
        tuned = load_train_config(
            None,
            cfg.model_dump()
            | {
                "name": "tiny6ft",
                "train": cfg.train.model_dump()
                | {
                    "weights": str(result.best),
                    "pair_aug": {"resolution_prob": 1.0, "season_prob": 1.0},
                },
            },
        )
        again = train_model(tuned)
        assert again.best.exists() and again.run_dir.name == "tiny6ft"
        summary = json.loads((again.run_dir / "buildwatch_train.json").read_text())
        assert summary["config"]["train"]["weights"] == str(result.best)


@pytest.mark.slow
def test_int8_copy_keeps_class_scores_and_metadata(tmp_path):
    """Static QDQ int8 of the shipped model: the decode tail stays float, scores track fp32."""
    import onnx
    import onnxruntime as ort

    from detector.night.model import DEFAULT_MODEL_PATH, load_model_spec
    from training.evaluate import calibration_inputs
    from training.export import decode_tail_nodes, quantize_int8, read_metadata

    tail = decode_tail_nodes(onnx.load(str(DEFAULT_MODEL_PATH)))
    assert tail[-1].endswith("Conv") and any(
        n.endswith("Concat_5") for n in tail
    )  # last concat = output0
    calib = calibration_inputs(DEFAULT_MODEL_PATH, count=4)
    out = quantize_int8(DEFAULT_MODEL_PATH, tmp_path / "q.onnx", calib)
    spec = load_model_spec(out)
    assert spec.model_name.endswith("-int8") and spec.channels == 6
    assert read_metadata(out)["buildwatch_gsd_m"] == "0.25"
    assert out.stat().st_size < DEFAULT_MODEL_PATH.stat().st_size / 2
    assert (tmp_path / "q.onnx.sha256").read_text().split()[0] == spec.sha256
    x = calibration_inputs(DEFAULT_MODEL_PATH, count=4, seed=990100)[0]
    runs = [
        ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(
            None, {spec.input_name: x}
        )[0]
        for m in (DEFAULT_MODEL_PATH, out)
    ]
    scores = [
        r[0, 4 : 4 + len(spec.names)].max(axis=0) for r in runs
    ]  # best class score per anchor
    assert scores[1].max() > 0.25  # a quantized tail used to zero every score
    diff = np.abs(scores[0] - scores[1])
    confident = (scores[0] > 0.25) | (scores[1] > 0.25)
    assert (
        np.percentile(diff, 99) < 0.05 and diff[confident].mean() < 0.06
    )  # single anchors may move ~0.2
    assert ((scores[0] > 0.25) != (scores[1] > 0.25)).sum() <= 0.15 * confident.sum()
    boxes = [r[0, :4, scores[0] > 0.25] for r in runs]
    assert np.abs(boxes[0] - boxes[1]).max() < 12  # px, on confident anchors


@pytest.mark.slow
def test_weights_stored_in_half_precision_compute_the_float32_graph(tmp_path, monkeypatch):
    """export --weights-fp16: half the file, the same detections, and fine-tuning can still start from it."""
    import shutil

    import onnxruntime as ort
    import torch

    from detector.night.model import DEFAULT_MODEL_PATH, load_model_spec
    from training.checkpoint import _calibration_batch, checkpoint_from_onnx
    from training.export import store_weights_fp16

    monkeypatch.chdir(tmp_path)
    half = tmp_path / "half.onnx"
    shutil.copyfile(DEFAULT_MODEL_PATH, half)
    store_weights_fp16(half)
    assert half.stat().st_size < 0.55 * DEFAULT_MODEL_PATH.stat().st_size
    spec = load_model_spec(half)  # the sidecar was rewritten with the new sha256
    assert spec.channels == 6 and spec.model_name == load_model_spec(DEFAULT_MODEL_PATH).model_name
    x = _calibration_batch(6, 512, count=1, seed=4242)
    full, halved = (
        ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        for m in (DEFAULT_MODEL_PATH, half)
    )
    assert np.abs(full[0, 4:8] - halved[0, 4:8]).max() < 5e-3  # class scores (0..1)
    assert np.abs(full[0, :4] - halved[0, :4]).max() < 0.5  # box centres and sizes, pixels
    ck = checkpoint_from_onnx(half, tmp_path / "half.pt")
    assert torch.load(ck, weights_only=False)["buildwatch"]["onnx_max_abs_diff"] < 1e-2
