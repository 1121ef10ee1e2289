"""Training checkpoints beside ONNX models: where they are, and how to recover one from the ONNX.

Fine-tuning never starts from scratch: every model version in a registry
(:mod:`detector.night.model_registry`) keeps its ultralytics checkpoint ``model.pt`` beside
``model.onnx``. The shipped model predates that rule and ships without one (the ONNX is the
only large binary in the repository), so :func:`checkpoint_from_onnx` rebuilds an exact
training checkpoint from the ONNX weights:

1. the architecture (``yolo26n-obb.yaml``, the ONNX's channel count and class names) is built;
2. ultralytics exports with every BatchNorm folded into its convolution, so the ONNX holds one
   weight and one bias per Conv. Each Conv gets the folded weight; its BatchNorm is rebuilt so
   that it reproduces the folded bias exactly *and* sees data it knows: running mean/variance
   are measured on calibration pairs (synthetic scenes) and gamma/beta chosen so that
   ``(z - mean) / sqrt(var + eps) * gamma + beta == z + bias``. In evaluation mode the
   checkpoint computes what the ONNX computes; in training mode, batch statistics are close to
   the running ones, so the first fine-tuning steps start from the shipped model's behaviour;
3. the one-to-one (end-to-end) head, absent from the exported graph, starts as a copy of the
   one-to-many head (ultralytics builds it that way);
4. the result is checked against ONNX Runtime on an input (max abs difference of the raw
   output, pixel coordinates and scores) before it is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.errors import InputError, ModelError

ARCHITECTURE = "yolo26n-obb.yaml"
MAX_OUTPUT_DIFF = 1e-2  # raw output (box pixels 0..imgsz, scores 0..1), float32 rounding only


def checkpoint_beside(onnx_path: Path) -> Path:
    """Where the training checkpoint of ``<name>.onnx`` is kept: ``<name>.pt`` in the same folder."""
    return Path(onnx_path).with_suffix(".pt")


def _onnx_weights(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import onnx
    from onnx import numpy_helper

    from training.export import FP16_SUFFIX

    model = onnx.load(str(onnx_path))
    inits = {}
    for i in (
        model.graph.initializer
    ):  # weights stored in half precision (export --weights-fp16) under their own name
        name = i.name[: -len(FP16_SUFFIX)] if i.name.endswith(FP16_SUFFIX) else i.name
        inits[name] = (
            numpy_helper.to_array(i).astype(np.float32)
            if name != i.name
            else numpy_helper.to_array(i)
        )
    return inits, {p.key: p.value for p in model.metadata_props}


def _calibration_batch(channels: int, size: int, count: int = 8, seed: int = 991000) -> np.ndarray:
    """(count, C, size, size) float32 pairs cut from synthetic scenes (never evaluation seeds)."""
    from detector.synth.scene import generate_scene

    out = []
    for i in range(count):
        scene = generate_scene(seed + i, size=size, gsd=0.25)
        b, c = scene.epochs[0][:size, :size], scene.epochs[1][:size, :size]
        img = np.concatenate([b, c], axis=2) if channels == 6 else c
        out.append(img.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.stack(out)


def recover_model(
    onnx_path: Path, architecture: str = ARCHITECTURE, calibration: np.ndarray | None = None
):
    """An ultralytics ``OBBModel`` holding the weights of an exported buildwatch ONNX (see module doc).

    Returns
    -------
    (model, metadata) : the torch model (eval mode) and the ONNX metadata.
    """
    import ast

    import torch
    from torch import nn

    from training.offline import prepare_offline

    prepare_offline()
    from ultralytics.nn.modules import Conv
    from ultralytics.nn.tasks import OBBModel

    inits, meta = _onnx_weights(onnx_path)
    if meta.get("task", "obb") != "obb":
        raise ModelError(
            f"{onnx_path}: task {meta.get('task')!r}; only OBB models can be recovered"
        )
    channels = int(meta.get("channels", 3))
    names = {int(k): v for k, v in ast.literal_eval(meta["names"]).items()}
    imgsz = int(ast.literal_eval(meta.get("imgsz", "[512, 512]"))[0])
    model = OBBModel(architecture, ch=channels, nc=len(names), verbose=False)
    model.names = names
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv)}
    plain = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not any(name.startswith(c + ".") for c in convs)
    }
    used: set[str] = set()

    def tensor(key, like):
        value = inits[key]
        if tuple(value.shape) != tuple(like.shape):
            raise ModelError(
                f"{onnx_path}: {key} has shape {tuple(value.shape)}, {architecture} expects "
                f"{tuple(like.shape)}; the model was not trained from {architecture}"
            )
        used.add(key)
        return torch.from_numpy(value.copy()).to(like.dtype)

    folded_bias: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, m in convs.items():
            key = f"{name}.conv.weight"
            if key not in inits:
                continue
            m.conv.weight.copy_(tensor(key, m.conv.weight))
            folded_bias[name] = tensor(f"{name}.conv.bias", m.bn.bias)
        for name, m in plain.items():
            if f"{name}.weight" in inits:
                m.weight.copy_(tensor(f"{name}.weight", m.weight))
                if m.bias is not None:
                    m.bias.copy_(tensor(f"{name}.bias", m.bias))
    unused = sorted(set(inits) - used)
    if unused:
        raise ModelError(
            f"{onnx_path}: {len(unused)} ONNX weights have no place in {architecture} (e.g. {unused[0]})"
        )

    # BatchNorm statistics of the folded convolutions, measured on calibration pairs
    # (fully convolutional: 256-px scenes give the same per-channel statistics at a quarter of the cost)
    calibration = (
        _calibration_batch(channels, min(imgsz, 256)) if calibration is None else calibration
    )
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, m in convs.items():
        if name in folded_bias:
            m.bn.weight.data.fill_(1.0)
            m.bn.bias.data.copy_(folded_bias[name])
            m.bn.running_mean.zero_()
            m.bn.running_var.fill_(1.0 - m.bn.eps)  # exact identity + bias while measuring

            def hook(mod, inp, out, name=name):
                z = out.detach().double()
                stats[name] = (z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=False))

            hooks.append(m.conv.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(calibration))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, (mean, var) in stats.items():
            bn = convs[name].bn
            var = var.clamp_min(1e-6)
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
            bn.weight.copy_(torch.sqrt(var + bn.eps).float())
            bn.bias.copy_((folded_bias[name].double() + mean).float())
        head = model.model[-1]
        for attr in ("cv2", "cv3", "cv4"):  # one-to-one head starts as the one-to-many head
            if hasattr(head, f"one2one_{attr}") and hasattr(head, attr):
                getattr(head, f"one2one_{attr}").load_state_dict(getattr(head, attr).state_dict())
    return model, meta


def onnx_output_difference(model, onnx_path: Path, x: np.ndarray) -> float:
    """Max abs difference between the torch model (export-style output) and ONNX Runtime on ``x``."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    head = model.model[-1]
    saved = (
        getattr(head, "export", False),
        getattr(head, "format", None),
        getattr(head, "end2end", False),
    )
    head.export, head.format = True, "onnx"
    if hasattr(head, "end2end"):
        head.end2end = False
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
    finally:
        head.export, head.format = saved[0], saved[1]
        if hasattr(head, "end2end"):
            head.end2end = saved[2]
    out = out[0] if isinstance(out, (list, tuple)) else out
    out = out.numpy()
    if out.shape != ref.shape:
        raise ModelError(f"{onnx_path}: recovered model gives output {out.shape}, ONNX {ref.shape}")
    return float(np.abs(out - ref).max())


def checkpoint_from_onnx(onnx_path: Path, out: Path, architecture: str = ARCHITECTURE) -> Path:
    """Write an ultralytics training checkpoint (``.pt``) equivalent to an exported buildwatch ONNX.

    Parameters
    ----------
    onnx_path : an ONNX written by ``buildwatch export`` (``yolo26n-obb`` pair or single model).
    out : the ``.pt`` to write (atomic).
    architecture : the ultralytics model YAML it was trained from.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ModelError
        When the ONNX does not fit the architecture, or the recovered model's output differs from
        ONNX Runtime's by more than :data:`MAX_OUTPUT_DIFF`.
    """
    import torch

    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.exists():
        raise InputError(f"{onnx_path}: model not found")
    model, meta = recover_model(onnx_path, architecture)
    import ast

    channels, imgsz = (
        int(meta.get("channels", 3)),
        int(ast.literal_eval(meta.get("imgsz", "[512, 512]"))[0]),
    )
    x = _calibration_batch(channels, imgsz, count=1, seed=991900)
    diff = onnx_output_difference(model, onnx_path, x)
    if diff > MAX_OUTPUT_DIFF:
        raise ModelError(
            f"{onnx_path}: recovered checkpoint differs from the ONNX by {diff:.4g} (> {MAX_OUTPUT_DIFF})"
        )
    ckpt = {
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "epoch": -1,
        "train_args": {"task": "obb", "imgsz": imgsz, "model": architecture},
        "buildwatch": {
            "recovered_from": onnx_path.name,
            "onnx_max_abs_diff": diff,
            "model_name": meta.get("buildwatch_model_name", ""),
        },
    }
    from detector.fileio import atomic_path

    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return out
