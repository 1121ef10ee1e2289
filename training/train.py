"""Offline, seeded ultralytics training (``buildwatch train``).

Nothing touches the network: ``YOLO_OFFLINE=true``, a project-local ``YOLO_CONFIG_DIR``
holding matplotlib's DejaVuSans as ``Arial.ttf`` / ``Arial.Unicode.ttf`` (ultralytics looks
there before downloading a font), settings ``sync=False``, ``plots=False``, ``amp=False``
(the AMP check would fetch weights), and the model is built from its YAML.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from detector.errors import InputError
from detector.fileio import atomic_write_text
from training.config import TrainConfig
from training.offline import prepare_offline


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    seconds: float
    metrics: dict


def _quiet_settings() -> None:
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})


def train_args(cfg: TrainConfig, data_yaml: Path, name: str | None = None) -> dict:
    """The keyword arguments handed to ``YOLO(model).train``."""
    args = dict(
        data=str(Path(data_yaml).resolve()),
        epochs=cfg.train.epochs,
        imgsz=cfg.imgsz,
        batch=cfg.train.batch,
        device=cfg.train.device,
        workers=cfg.train.workers,
        seed=cfg.train.seed,
        deterministic=True,
        project=str(Path(cfg.train.project).resolve()),
        name=name or cfg.name,
        exist_ok=True,
        amp=False,
        plots=False,
        patience=cfg.train.patience,
        verbose=False,
        val=True,
        pretrained=False,
        # the pair's two epochs are one stack: no colour jitter on 6 channels (ultralytics skips it anyway)
        hsv_h=0.0 if cfg.channels == 6 else 0.015,
        hsv_s=0.0 if cfg.channels == 6 else 0.5,
        hsv_v=0.0 if cfg.channels == 6 else 0.3,
        degrees=0.0,
        flipud=0.5,
        fliplr=0.5,
        mosaic=1.0,
        scale=0.25,
        translate=0.1,
    )
    if cfg.train.time_hours:
        args["time"] = cfg.train.time_hours
    args.update(cfg.train.extra)
    return args


def pair_aug_trainer(params):
    """An ultralytics OBB trainer class that applies :func:`training.augment.augment_pair_batch`
    to every training batch (on the training device, after ultralytics' own augmentation)."""
    from ultralytics.models.yolo.obb import OBBTrainer

    from training.augment import augment_pair_batch

    class PairAugTrainer(OBBTrainer):
        pair_aug = params

        def preprocess_batch(self, batch):
            batch = super().preprocess_batch(batch)
            batch["img"] = augment_pair_batch(batch["img"], self.pair_aug)
            return batch

    return PairAugTrainer


def init_checkpoint(path: Path, run_dir: Path) -> Path:
    """The ultralytics checkpoint behind ``train.init_from``: the file itself, or for a buildwatch ONNX
    the checkpoint recovered from it (:func:`training.checkpoint.checkpoint_from_onnx`) in ``run_dir``.

    ultralytics then copies every tensor whose name and shape match into the new model
    (``Model.load``): a 3-channel model takes the pair model's backbone and neck, but not its
    first convolution (6 input channels) nor its class head (4 classes).
    """
    if path.suffix.lower() != ".onnx":
        return path
    from training.checkpoint import checkpoint_from_onnx

    return checkpoint_from_onnx(path, run_dir / f"init-{path.stem}.pt")


def train_model(
    cfg: TrainConfig, data_yaml: Path | None = None, name: str | None = None
) -> TrainResult:
    """Train ``cfg.train.model`` from scratch (or fine-tune ``cfg.train.weights``); returns the run folder and weights.

    Raises
    ------
    InputError
        When the dataset's ``data.yaml`` is missing or has a different channel count.
    """
    data_yaml = Path(data_yaml or Path(cfg.data.root) / "data.yaml")
    if not data_yaml.exists():
        raise InputError(
            f"{data_yaml}: dataset not found; run 'buildwatch build-dataset --config ...' first"
        )
    import yaml

    declared = int(yaml.safe_load(data_yaml.read_text()).get("channels", 3))
    if declared != cfg.channels:
        raise InputError(
            f"{data_yaml}: dataset has {declared} channels but the config asks for {cfg.channels}"
        )
    prepare_offline()
    from ultralytics import YOLO

    from training.encoder import register_with_ultralytics

    register_with_ultralytics()  # model YAMLs may name the pretrained encoder layer (training/arch/)
    _quiet_settings()
    if cfg.train.weights is not None and not Path(cfg.train.weights).exists():
        raise InputError(f"{cfg.train.weights}: start weights for fine-tuning not found")
    if cfg.train.init_from is not None and not Path(cfg.train.init_from).exists():
        raise InputError(f"{cfg.train.init_from}: 'train.init_from' weights not found")
    model = YOLO(str(cfg.train.weights) if cfg.train.weights else cfg.train.model, task="obb")
    args = train_args(cfg, data_yaml, name)
    if cfg.train.weights:
        args["pretrained"] = (
            True  # with False, ultralytics 8.4 drops the loaded weights and starts from the YAML
        )
    elif cfg.train.init_from is not None:
        args["pretrained"] = str(
            init_checkpoint(Path(cfg.train.init_from), Path(args["project"]) / args["name"])
        )
    if cfg.train.pair_aug is not None and cfg.channels == 6:
        args["trainer"] = pair_aug_trainer(cfg.train.pair_aug)
    start = time.time()
    model.train(**args)
    seconds = time.time() - start
    run_dir = Path(model.trainer.save_dir)
    metrics = {
        k: float(v) for k, v in (model.trainer.metrics or {}).items() if isinstance(v, (int, float))
    }
    summary = {
        "config": json.loads(cfg.model_dump_json()),
        "seconds": round(seconds, 1),
        "metrics": metrics,
        "data": str(data_yaml),
    }
    atomic_write_text(run_dir / "buildwatch_train.json", json.dumps(summary, indent=1))
    return TrainResult(
        run_dir, run_dir / "weights" / "best.pt", run_dir / "weights" / "last.pt", seconds, metrics
    )
