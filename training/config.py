"""Training configuration (``configs/train/<name>.yaml``), validated with pydantic (``extra="forbid"``).

Relative paths in it are relative to the working folder, the repository root (not to the file,
as in a run config): :func:`load_train_config` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from detector.config import validate_settings
from detector.fileio import apply_dotted_overrides, read_yaml_mapping
from detector.types import CHANGE_CLASSES
from training.augment import PairAugParams

SINGLE_CLASSES = ("building",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the training chips come from and where the YOLO dataset goes."""

    root: Path = Path("runs/datasets/default")  # dataset folder written by build-dataset
    data_root: Path | None = None  # ../shared/data (real sets, needs rasterio)
    pack: Path | None = None  # or a source pack (JPEG + JSON, numpy/cv2 only)
    real_sets: list[str] = [
        "oam_banepa_fair",
        "oam_kampala_fair",
        "spacenet1_rio",
        "negatives_deepforest",
    ]
    chip_stride: int = Field(256, ge=32)
    pairs_per_chip: int = Field(
        3, ge=1, description="copy-paste pairs made from each real chip (channels 6)"
    )
    synthetic_train_seeds: tuple[int, int] = (0, 200)  # [start, stop) of generate_scene seeds
    synthetic_val_seeds: tuple[int, int] = (500000, 500016)
    synthetic_size: int = Field(1024, ge=64)
    seed: int = 0
    workers: int = Field(2, ge=1)
    parallel_real: bool = Field(
        False,
        description="copy-paste pairs in worker processes too (chunks of chips, "
        "one seeded generator per chunk: a different draw than the serial build), "
        "and every chip written by its worker",
    )


class TrainSettings(_Strict):
    """Arguments handed to ultralytics ``model.train`` (plus any ``extra`` ones)."""

    model: str = "yolo26n-obb.yaml"
    epochs: int = Field(30, ge=1)
    batch: int = Field(16, ge=1)
    device: str = "cpu"
    workers: int = Field(2, ge=0)
    seed: int = 0
    patience: int = 100
    project: Path = Path("runs/train")
    time_hours: float | None = Field(
        None,
        ge=0,
        description="stop after this many hours (ultralytics 'time', "
        "which fits the learning-rate schedule to the epochs that fit); 0: no limit, "
        "train 'epochs'",
    )
    weights: Path | None = Field(
        None,
        description="fine-tune from these ultralytics weights (our own best.pt) instead of 'model'",
    )
    init_from: Path | None = Field(
        None,
        description="start 'model' with every layer whose shape matches taken from "
        "these weights (an ultralytics .pt, or a buildwatch .onnx, whose checkpoint is "
        "recovered first): e.g. a 3-channel model from the pair model's backbone. Unlike "
        "'weights', the architecture, channels and classes stay those of this config",
    )
    pair_aug: PairAugParams | None = Field(
        None, description="batch augmentation of 6-channel pairs (training.augment)"
    )
    extra: dict = {}


class ExportSettings(_Strict):
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.5, ge=0, le=1)
    overlap_px: int = Field(64, ge=0)
    model_name: str = "buildwatch-pair-v1"
    imgsz: int | None = Field(
        None,
        ge=64,
        multiple_of=32,
        description="input size of the exported model, i.e. the runtime tile "
        "in pixels (default: the training chip size). The network is fully "
        "convolutional, so chips smaller than the runtime tile train faster at the same GSD",
    )


class TrainConfig(_Strict):
    name: str
    channels: Literal[3, 6] = 6
    imgsz: int = Field(512, ge=64)
    gsd_m: float = Field(0.25, gt=0)
    data: DataConfig = DataConfig()
    train: TrainSettings = TrainSettings()
    export: ExportSettings = ExportSettings()

    @property
    def names(self) -> tuple[str, ...]:
        return CHANGE_CLASSES if self.channels == 6 else SINGLE_CLASSES


def load_train_config(path: Path | str | None, overrides: dict | None = None) -> TrainConfig:
    """Read a training YAML and apply ``overrides``: dotted keys (``"train.epochs"``) to values;
    None values are ignored.

    Paths in config files, one rule per kind of file: in a run config (``configs/*.yaml``,
    :func:`detector.config.load_config`) a relative path is relative to the folder of that file,
    wherever the command is run from (:func:`detector.config.resolve_relative_paths`); in a
    training config (``configs/train/*.yaml``, :func:`training.config.load_train_config`) a
    relative path is relative to the working folder, which is the repository root. A relative
    path given on the command line is relative to the working folder, as for any command.

    Why they differ: a run config is an operator's file, kept with a district's data and run by
    cron from any folder; a training config describes a build of this repository (datasets under
    ``runs/``, architectures under ``training/arch/``, the shipped models under
    ``detector/models/``, the data in ``../shared/data`` beside the checkout), and every
    documented training command is run from the repository root. ``train.model`` may also be an
    ultralytics model name, not a file.
    """
    data = (
        read_yaml_mapping(path, "training config", " (see configs/train/)")
        if path is not None
        else {}
    )
    apply_dotted_overrides(data, overrides)
    return validate_settings(TrainConfig, data, path or "training config")
