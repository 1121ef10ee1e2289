"""The model contract shared by the nightly run and training.

A buildwatch model is an ONNX file exported by ultralytics (task ``obb`` or ``detect``)
whose metadata (``metadata_props``) says how to feed it:

ultralytics' own keys (written by its exporter)
    ``task``      ``obb`` or ``detect``
    ``channels``  ``6`` = a co-registered pair (baseline RGB, current RGB) -> change boxes;
                  ``3`` = one epoch -> structure boxes, compared between epochs at run time
    ``imgsz``     ``[H, W]``
    ``names``     ``{0: 'new_building', ...}`` (a Python dict literal)
    ``end2end``   ``True`` when the graph already applies NMS-free selection (YOLO26)

buildwatch keys (written by ``buildwatch export``; see :data:`BUILDWATCH_KEYS`)
    ``buildwatch_contract``  contract version (``1``)
    ``buildwatch_gsd_m``     working ground sample distance in metres per pixel
    ``buildwatch_input``     input normalisation, ``rgb_uint8_div255`` (RGB order, x / 255)
    ``buildwatch_tile_overlap_px``  recommended overlap between tiles, pixels
    ``buildwatch_conf``      recommended confidence threshold
    ``buildwatch_iou``       NMS / merge IoU threshold
    ``buildwatch_model_name`` a human name (e.g. ``buildwatch-pair-v1``)
    ``buildwatch_provenance`` JSON: training data, licences, command, time
    ``buildwatch_metrics``   JSON: evaluation results

QGIS Deepness plugin keys (so the same file loads there)
    ``model_type`` (``Detector``), ``class_names`` (JSON), ``resolution`` (cm/px),
    ``tiles_overlap`` (percent), ``det_conf``, ``det_iou_thresh``, ``tiles_size``.

A two-view model (``training/twoview.py``: one encoder pass, a change head and a building head)
is a 6-channel pair model whose graph has two more outputs, named by these keys:
    ``buildwatch_building_output``           building boxes tonight (same layout as a 3-channel model's)
    ``buildwatch_building_baseline_output``  building boxes in the baseline
    ``buildwatch_building_names``            their classes (``{0: 'building'}``)
    ``buildwatch_building_conf``             the building confidence chosen on validation
It is its own second view (:class:`BuildingHead`): no separate building model runs.

The model's sha256 is stored beside it in ``<model>.onnx.sha256`` and recomputed at load.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

from detector.errors import ModelError
from detector.fileio import file_sha256

CONTRACT_VERSION = "1"
INPUT_NORMALISATION = "rgb_uint8_div255"
DEFAULT_MODEL_PATH = Path(__file__).parents[1] / "models" / "buildwatch-default.onnx"
#: The shipped second view (``detect.second_view``): a 3-channel building detector.
DEFAULT_BUILDING_MODEL_PATH = Path(__file__).parents[1] / "models" / "buildwatch-buildings.onnx"

BUILDWATCH_KEYS = (
    "buildwatch_contract",
    "buildwatch_gsd_m",
    "buildwatch_input",
    "buildwatch_tile_overlap_px",
    "buildwatch_conf",
    "buildwatch_iou",
    "buildwatch_model_name",
    "buildwatch_provenance",
    "buildwatch_metrics",
)
REQUIRED_KEYS = ("task", "channels", "imgsz", "names", "buildwatch_gsd_m")
#: Largest tile side a model may declare: a tile pair is held several times over in memory
#: (uint8 and float32, both epochs), so 8192 px already needs about 2.4 GiB per worker.
MAX_IMGSZ = 8192


@dataclass(frozen=True)
class BuildingHead:
    """The building outputs of a two-view model (see the module docstring)."""

    output: str
    baseline_output: str
    names: dict[int, str]
    conf: float


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runtime needs to know about a model, read from its ONNX metadata."""

    path: Path
    sha256: str
    task: str  # "obb" | "detect"
    channels: int  # 6 (pair) | 3 (single epoch)
    imgsz: tuple[int, int]  # (H, W)
    names: dict[int, str]
    gsd_m: float
    end2end: bool
    conf: float = 0.25
    iou: float = 0.5
    overlap_px: int = 64
    model_name: str = ""
    input_name: str = "images"
    metadata: dict = field(default_factory=dict, compare=False, repr=False)
    building: BuildingHead | None = None  # a two-view model's building outputs
    embedded: bool = False  # the building head of a two-view model, read from its pair run

    @property
    def is_pair(self) -> bool:
        return self.channels == 6

    def building_view(self) -> ModelSpec:
        """The spec of a two-view model's building head, as the second view reads it."""
        from dataclasses import replace

        head = self.building
        return replace(
            self,
            channels=3,
            names=dict(head.names),
            conf=head.conf,
            building=None,
            embedded=True,
            model_name=f"{self.model_name} (building head)",
        )


def parse_metadata(
    meta: dict[str, str], path: Path, sha256: str, input_name: str = "images"
) -> ModelSpec:
    """Validate raw ONNX metadata against the contract; raise :class:`ModelError` naming the file."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(
            f"{path}: ONNX model lacks buildwatch metadata {missing}; export it with "
            f"'buildwatch export' (or add the keys with training.export.write_metadata)"
        )
    try:
        task = meta["task"].strip()
        channels = int(meta["channels"])
        imgsz = ast.literal_eval(meta["imgsz"])
        if isinstance(imgsz, int):
            imgsz = (imgsz, imgsz)
        imgsz = (int(imgsz[0]), int(imgsz[1]))
        names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
        gsd = float(meta["buildwatch_gsd_m"])
        end2end = str(meta.get("end2end", "False")).strip().lower() == "true"
        conf = float(meta.get("buildwatch_conf", 0.25))
        iou = float(meta.get("buildwatch_iou", 0.5))
        overlap = int(float(meta.get("buildwatch_tile_overlap_px", max(imgsz) // 8)))
        building = None
        if "buildwatch_building_output" in meta:
            building = BuildingHead(
                output=meta["buildwatch_building_output"],
                baseline_output=meta["buildwatch_building_baseline_output"],
                names={
                    int(k): str(v)
                    for k, v in ast.literal_eval(meta["buildwatch_building_names"]).items()
                },
                conf=float(meta.get("buildwatch_building_conf", conf)),
            )
    except (ValueError, SyntaxError, TypeError, IndexError, AttributeError, KeyError) as exc:
        raise ModelError(
            f"{path}: malformed model metadata ({exc}); re-export with 'buildwatch export'"
        ) from None
    if task not in ("obb", "detect"):
        raise ModelError(f"{path}: model task '{task}' is not supported (need 'obb' or 'detect')")
    if channels not in (3, 6):
        raise ModelError(
            f"{path}: model has {channels} input channels; buildwatch needs 6 (pair) or 3 (single epoch)"
        )
    if not gsd > 0:
        raise ModelError(f"{path}: buildwatch_gsd_m must be > 0, got {gsd}")
    if not all(32 <= side <= MAX_IMGSZ for side in imgsz):
        gib = imgsz[0] * imgsz[1] * channels * 4 / 2**30  # one float32 input tensor
        raise ModelError(
            f"{path}: model metadata imgsz {list(imgsz)} is outside 32..{MAX_IMGSZ} px (one input "
            f"tile alone would take {gib:.1f} GiB); re-export the model with a usual imgsz (e.g. 1024)"
        )
    return ModelSpec(
        path=Path(path),
        sha256=sha256,
        task=task,
        channels=channels,
        imgsz=imgsz,
        names=names,
        gsd_m=gsd,
        end2end=end2end,
        conf=conf,
        iou=iou,
        overlap_px=overlap,
        model_name=meta.get("buildwatch_model_name", Path(path).stem),
        input_name=input_name,
        metadata=dict(meta),
        building=building,
    )


def load_model_spec(path: str | Path | None = None) -> ModelSpec:
    """Read and validate a model's contract (no inference session is created)."""
    import onnxruntime as ort

    path = Path(path) if path else DEFAULT_MODEL_PATH
    if not path.exists():
        hint = (
            "the shipped default model is missing from the installation"
            if path == DEFAULT_MODEL_PATH
            else "check --model"
        )
        raise ModelError(f"{path}: model file not found ({hint})")
    sha = file_sha256(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        recorded = (
            sidecar.read_text().split()[0].strip().lower() if sidecar.read_text().strip() else ""
        )
        if recorded != sha:
            raise ModelError(
                f"{path}: sha256 {sha[:12]}… does not match {sidecar.name} ({recorded[:12]}…); "
                "the file changed since export: re-export it or restore the original"
            )
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable ONNX model ({first})") from None
    meta = sess.get_modelmeta().custom_metadata_map
    inputs = sess.get_inputs()
    spec = parse_metadata(meta, path, sha, input_name=inputs[0].name)
    shape = inputs[0].shape
    if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != spec.channels:
        raise ModelError(
            f"{path}: metadata says {spec.channels} channels but the graph input has {shape[1]}"
        )
    if spec.building is not None:
        outputs = {o.name for o in sess.get_outputs()}
        lacking = [
            n for n in (spec.building.output, spec.building.baseline_output) if n not in outputs
        ]
        if not spec.is_pair or lacking:
            raise ModelError(
                f"{path}: metadata names building outputs {lacking or ''} the graph does not have "
                "(a two-view model is a 6-channel graph with three outputs); re-export it"
            )
    return spec


def deepness_metadata(
    channels: int,
    names: dict[int, str],
    gsd_m: float,
    imgsz: int,
    overlap_px: int,
    conf: float,
    iou: float,
) -> dict[str, str]:
    """Keys the QGIS Deepness plugin reads, so an operator can also run the model there."""
    return {
        "model_type": "Detector",
        "class_names": json.dumps({str(k): v for k, v in names.items()}),
        "resolution": f"{gsd_m * 100:.3f}",
        "tiles_size": str(imgsz),
        "tiles_overlap": f"{100.0 * overlap_px / imgsz:.1f}",
        "det_conf": f"{conf:.3f}",
        "det_iou_thresh": f"{iou:.3f}",
        "standardization_mean": json.dumps([0.0] * channels),
        "standardization_std": json.dumps([1.0] * channels),
    }
