"""Helpers for pipeline tests: tiny georeferenced rasters with planted structures, a model file
that follows the contract, and an exact "oracle" change detector to stand in for the network."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from affine import Affine

from detector.types import CHANGE_CLASSES, Detection

PAIR_TRANSFORM = Affine(
    0.1, 0, 500000, 0, -0.1, 2513000
)  # the `pair` fixture's grid (tests/conftest.py)


def make_contract_model(
    path: Path,
    channels: int = 6,
    imgsz: int = 256,
    gsd: float = 0.25,
    names: tuple[str, ...] = CHANGE_CLASSES,
    overlap: int = 64,
    extra_meta: dict | None = None,
    drop_keys: tuple[str, ...] = (),
) -> Path:
    """A tiny valid ONNX graph with the buildwatch contract metadata; it outputs no detections."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, channels, imgsz, imgsz])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 300, 7])
    zeros = helper.make_tensor(
        "zeros", TensorProto.FLOAT, [1, 300, 7], np.zeros(2100, dtype=np.float32)
    )
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Add", ["zeros", "m0"], ["output0"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(nodes, "contract", [inp], [out], initializer=[zeros, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "task": "obb",
        "channels": str(channels),
        "imgsz": f"[{imgsz}, {imgsz}]",
        "names": str({i: n for i, n in enumerate(names)}),
        "end2end": "True",
        "buildwatch_contract": "1",
        "buildwatch_gsd_m": str(gsd),
        "buildwatch_conf": "0.25",
        "buildwatch_iou": "0.5",
        "buildwatch_tile_overlap_px": str(overlap),
        "buildwatch_model_name": "test-contract",
    }
    meta.update(extra_meta or {})
    for k in drop_keys:
        meta.pop(k, None)
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, str(path))
    return path


class OracleDetector:
    """Finds every blob that differs between the two halves of a 6-channel input (exact truth)."""

    def __init__(self, spec, *args, **kwargs):
        self.spec = spec

    def __call__(self, images, conf, iou):
        out = []
        for img in images:
            if img.shape[2] == 6:
                diff = np.abs(img[..., :3].astype(int) - img[..., 3:].astype(int)).max(axis=2)
                base_zero = (img[..., :3].max(axis=2) == 0) | (img[..., 3:].max(axis=2) == 0)
                mask = ((diff > 60) & ~base_zero).astype(np.uint8)
            else:  # single epoch: saturated red roofs are "structures"
                mask = ((img[..., 0] > 200) & (img[..., 1] < 60)).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
            dets = []
            for k in range(1, n):
                x, y, w, h, a = stats[k]
                if a < 20:
                    continue
                dets.append(
                    Detection(x + w / 2, y + h / 2, float(w), float(h), 0.0, 0.9, "new_building")
                )
            out.append(dets)
        return out


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic textured RGB ground (registrable by phase correlation)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    img = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(-20, 20, (height, width, 3))
    return np.clip(img.astype(int) // 2 + 60 + fine, 0, 255).astype(np.uint8)


def write_geotiff(
    path: Path,
    rgb: np.ndarray,
    crs: str,
    transform,
    nodata=None,
    date: str | None = None,
    alpha: np.ndarray | None = None,
) -> Path:
    import rasterio

    bands = [rgb[..., i] for i in range(rgb.shape[2])]
    if alpha is not None:
        bands.append(alpha)
    profile = dict(
        driver="GTiff",
        width=rgb.shape[1],
        height=rgb.shape[0],
        count=len(bands),
        dtype=rgb.dtype,
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack(bands))
        if alpha is not None:
            from rasterio.enums import ColorInterp

            dst.colorinterp = [
                ColorInterp.red,
                ColorInterp.green,
                ColorInterp.blue,
                ColorInterp.alpha,
            ]
        if date:
            dst.update_tags(TIFFTAG_DATETIME=date)
    return path


def plant(
    rgb: np.ndarray, boxes_px: list[tuple[int, int, int, int]], colour=(230, 30, 30)
) -> np.ndarray:
    """Paint solid rectangles (col, row, width, height) on a copy of ``rgb``."""
    out = rgb.copy()
    for c, r, w, h in boxes_px:
        out[r : r + h, c : c + w] = colour
    return out


#: ``python -c SIGNAL_MID_RUN OUT FLAG SIGNAME N buildwatch-args...``: ``buildwatch`` whose detector sends
#: ``SIGNAME`` to the run's whole process group (as Ctrl-C, a power cut or the OOM killer would), once
#: (``FLAG`` is created by whoever sends it), at the first detection after ``N`` tiles' results are in
#: ``OUT/work``. Deterministic however fast the machine, unlike a signal timed from outside the run.
SIGNAL_MID_RUN = r"""
import os, signal, sys
from pathlib import Path

import detector.night.detect as detect

out, flag, signame, after = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])


class SignalledMidRun(detect.OnnxDetector):
    def __call__(self, images, conf, iou):
        if len(list(out.glob("work/*/*.json"))) >= after:
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.killpg(os.getpgid(0), getattr(signal, signame))
        return super().__call__(images, conf, iou)


detect.OnnxDetector = SignalledMidRun
from detector.cli import main

sys.exit(main(sys.argv[5:]))
"""


def folder_digest(folder: Path) -> dict:
    """Every regular file under ``folder`` -> sha256, folders as "dir", FIFOs named only (never
    read): compared before and after a refused command, nothing may differ."""
    import hashlib

    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_fifo():
            out[str(p)] = "fifo"
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p)] = "dir"
    return out


def run_argv(b, c, m, out, *extra) -> list[str]:
    """``buildwatch run`` on baseline ``b``, current ``c`` and model ``m`` into ``out``: one
    worker, no progress bar, then ``extra``."""
    return [
        "run",
        "--baseline",
        str(b),
        "--current",
        str(c),
        "--out",
        str(out),
        "--model",
        str(m),
        "--workers",
        "1",
        "--no-progress",
        *extra,
    ]
