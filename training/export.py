"""ONNX export with the buildwatch contract metadata (``buildwatch export``).

ultralytics writes the graph and its own keys (task, channels, imgsz, names, end2end);
:func:`write_metadata` then adds the ``buildwatch_*`` and Deepness keys, and
:func:`write_sha256` the ``<model>.onnx.sha256`` sidecar.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.fileio import atomic_path, atomic_write_text, file_sha256
from detector.night.model import (
    CONTRACT_VERSION,
    INPUT_NORMALISATION,
    deepness_metadata,
    load_model_spec,
)


def work_folder(out: Path):
    """A temporary work folder beside ``out`` (hidden, marked ``.tmp`` like :func:`detector.fileio.atomic_path`'s
    names, so a killed export's leftovers are recognisable), removed afterwards."""
    return tempfile.TemporaryDirectory(prefix=f".{out.stem}.", suffix=".tmp", dir=out.parent)


def write_metadata(onnx_path: Path, extra: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` of an ONNX file (atomic rewrite)."""
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in extra.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, str(value)
    with atomic_path(onnx_path) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(onnx_path: Path) -> dict[str, str]:
    import onnx

    return {
        p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props
    }


def write_sha256(onnx_path: Path) -> Path:
    """Write ``<model>.onnx.sha256`` (``<hex>  <file name>``) and return its path."""
    onnx_path = Path(onnx_path)
    sidecar = onnx_path.with_name(onnx_path.name + ".sha256")
    return atomic_write_text(sidecar, f"{file_sha256(onnx_path)}  {onnx_path.name}\n")


def buildwatch_metadata(
    channels: int,
    names: dict[int, str],
    imgsz: int,
    gsd_m: float,
    conf: float,
    iou: float,
    overlap_px: int,
    model_name: str,
    provenance: dict,
    metrics: dict,
) -> dict[str, str]:
    """The ``buildwatch_*`` keys plus the Deepness keys for one model."""
    meta = {
        "buildwatch_contract": CONTRACT_VERSION,
        "buildwatch_gsd_m": f"{gsd_m:g}",
        "buildwatch_input": INPUT_NORMALISATION,
        "buildwatch_tile_overlap_px": str(int(overlap_px)),
        "buildwatch_conf": f"{conf:g}",
        "buildwatch_iou": f"{iou:g}",
        "buildwatch_model_name": model_name,
        "buildwatch_provenance": json.dumps(provenance, sort_keys=True),
        "buildwatch_metrics": json.dumps(metrics, sort_keys=True),
    }
    meta.update(deepness_metadata(channels, names, gsd_m, imgsz, overlap_px, conf, iou))
    return meta


def export_onnx(
    weights: Path,
    out: Path,
    gsd_m: float = 0.25,
    conf: float = 0.25,
    iou: float = 0.5,
    overlap_px: int = 64,
    model_name: str | None = None,
    provenance: dict | None = None,
    metrics: dict | None = None,
    imgsz: int | None = None,
    opset: int = 17,
    weights_fp16: bool = False,
) -> Path:
    """Export ultralytics weights to ONNX at ``out`` with the full buildwatch contract.

    Parameters
    ----------
    weights : ``best.pt`` of a ``buildwatch train`` run.
    out : the ONNX file to write (its folder is created); ``<out>.sha256`` is written beside it.
    gsd_m, conf, iou, overlap_px, model_name : the runtime's recommendations stored in metadata.
    provenance, metrics : JSON-able dicts stored as ``buildwatch_provenance`` / ``buildwatch_metrics``.
    imgsz : export input size (default: the training size).
    weights_fp16 : store the weights in half precision (:func:`store_weights_fp16`): half the size.

    Returns
    -------
    Path
        ``out``, verified with :func:`detector.night.model.load_model_spec`.
    """
    weights, out = Path(weights), Path(out)
    if not weights.exists():
        raise InputError(
            f"{weights}: weights file not found (use runs/train/<name>/weights/best.pt)"
        )
    from training.offline import prepare_offline

    prepare_offline()
    from ultralytics import YOLO

    try:
        model = YOLO(str(weights), task="obb")
    except Exception as exc:  # noqa: BLE001 - torch/pickle errors of a broken file
        raise InputError(
            f"{weights}: not readable ultralytics weights ({type(exc).__name__})"
        ) from None
    channels = int(model.model.yaml.get("channels", getattr(model.model, "channels", 3)))
    train_imgsz = (
        int(model.ckpt.get("train_args", {}).get("imgsz", 512))
        if getattr(model, "ckpt", None)
        else 512
    )
    imgsz = imgsz or train_imgsz
    out.parent.mkdir(parents=True, exist_ok=True)
    with work_folder(out) as tmp:
        tmp_weights = Path(tmp) / "model.pt"
        shutil.copyfile(weights, tmp_weights)
        model = YOLO(str(tmp_weights), task="obb")
        exported = Path(
            model.export(
                format="onnx",
                imgsz=imgsz,
                opset=opset,
                simplify=False,
                dynamic=False,
                batch=1,
                device="cpu",
            )
        )
        names = {int(k): str(v) for k, v in model.names.items()}
        meta = buildwatch_metadata(
            channels,
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
        write_metadata(exported, meta)
        with atomic_path(out) as part:
            os.replace(exported, part)
    write_sha256(out)
    if weights_fp16:
        store_weights_fp16(out)
    load_model_spec(out)  # raises ModelError when the contract is not met
    return out


FP16_SUFFIX = (
    "__fp16"  # an initializer stored in half precision; a Cast node restores the float32 name
)


def store_weights_fp16(onnx_path: Path, min_size: int = 16) -> Path:
    """Store the float32 weights of an ONNX model in half precision, computing in float32 still.

    Each float32 initializer of at least ``min_size`` values becomes ``<name>__fp16`` followed by
    a ``Cast`` to float32 under its old name. ONNX Runtime folds those casts into float32
    constants when it opens the session, so inference runs exactly the float32 graph with
    weights rounded to 11 significant bits: half the file, the same speed (unlike an fp16
    *compute* graph, which CPU kernels run slower). Rewrites ``onnx_path`` atomically and its
    sha256 sidecar.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_size:
            half = numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), init.name + FP16_SUFFIX
            )
            inits.append(half)
            casts.append(
                helper.make_node(
                    "Cast",
                    [half.name],
                    [init.name],
                    to=TensorProto.FLOAT,
                    name=init.name + FP16_SUFFIX + "_cast",
                )
            )
        else:
            inits.append(init)
    nodes = list(graph.node)
    del graph.initializer[:], graph.node[:]
    graph.initializer.extend(inits)
    graph.node.extend(casts + nodes)
    with atomic_path(onnx_path) as tmp:
        onnx.save(model, str(tmp))
    write_sha256(onnx_path)
    return onnx_path


def decode_tail_nodes(model, include_last_convs: bool = True) -> list[str]:
    """Names of the box-decoding nodes after the detection head's last convolutions.

    These are the nodes from which no ``Conv`` can be reached (reshape/concat/split, the
    rotated-box decode and the final ``Concat`` that puts pixel coordinates (0..512) and class
    scores (0..1) into one tensor: quantized to one uint8 scale, the scores all become 0).
    With ``include_last_convs`` the convolutions feeding them (raw box / class / angle
    outputs) are listed too.
    """
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    reaches_conv = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):  # graph nodes are topologically sorted
        reaches_conv[i] = any(
            nodes[j].op_type == "Conv" or reaches_conv[j]
            for o in nodes[i].output
            for j in consumers.get(o, [])
        )
    tail = {i for i, n in enumerate(nodes) if not reaches_conv[i] and n.op_type != "Conv"}
    names = [nodes[i].name for i in sorted(tail)]
    if include_last_convs:
        names += [
            n.name for i, n in enumerate(nodes) if n.op_type == "Conv" and not reaches_conv[i]
        ]
    return [n for n in names if n]


def quantize_int8(
    onnx_path: Path, out: Path, calibration: list, exclude_decode: bool = True
) -> Path:
    """Static QDQ int8 copy of a model, calibrated on a list of (1, C, H, W) float32 arrays.

    The box-decoding tail (:func:`decode_tail_nodes`) stays float32 unless ``exclude_decode``
    is False: quantizing it zeroes every class score.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out = Path(onnx_path), Path(out)
    input_name = load_model_spec(onnx_path).input_name

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: x} for x in calibration])

        def get_next(self):
            return next(self._it, None)

    with work_folder(out) as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
            shutil.copyfile(onnx_path, pre)
        part = Path(tmp) / "q.onnx"
        exclude = decode_tail_nodes(onnx.load(str(pre))) if exclude_decode else []
        quantize_static(
            str(pre),
            str(part),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=exclude,
        )
        write_metadata(
            part,
            read_metadata(onnx_path)
            | {
                "buildwatch_model_name": read_metadata(onnx_path).get(
                    "buildwatch_model_name", out.stem
                )
                + "-int8"
            },
        )
        with atomic_path(out) as final:
            os.replace(part, final)
    write_sha256(out)
    return out
