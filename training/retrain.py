"""``buildwatch retrain``: a district's reviews and labelled tiles -> a fine-tuned, gated, registered model.

Steps (each recorded in ``<work>/manifest.json`` and ``<work>/retrain.log``):

1. **Parent**: the registry's promoted version (a registry without versions first registers the
   current model, by default the shipped one, as ``v0001`` and promotes it). Its training
   checkpoint ``model.pt`` is the starting point; a version without one (the shipped model)
   gets one recovered from its ONNX (:mod:`training.checkpoint`).
2. **Data**: labelled tiles (:mod:`training.district`) split by geography into train and a
   district hold-out the model never sees; reviewed cases (:mod:`training.reviews`) join the
   training side; a few synthetic scenes (disjoint seeds) keep the other classes in view and
   serve as ultralytics' validation set. Everything that went in is listed with sha256.
3. **Fine-tune** the parent checkpoint (offline, seeded, CPU unless ``device`` says otherwise,
   within a time budget) and export it with the parent's input size, GSD and thresholds.
4. **Gate**: parent and candidate are evaluated through the runtime on the same held-out
   synthetic scenes and the district hold-out (object F1 at IoU 0.3). The candidate is
   promoted only if the district F1 improves by at least ``min_gain`` and no class (synthetic
   per class, and district classes with truth) drops by more than ``margin``; otherwise the
   parent stays promoted and the one-line reason is printed and logged.
5. **Register** the candidate (always, with its gate result) and promote it if the gate passed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.clock import utc_now
from detector.errors import ConfigError, InputError
from detector.fileio import json_digest
from detector.logs import log_to, stop_logging_to
from detector.night.model_registry import ModelRegistry, ModelVersion
from detector.types import CHANGE_CLASSES
from training.config import TrainConfig
from training.datasets import DatasetWriter, OrientedBox, chip_samples, polygon_to_obb

log = logging.getLogger(__name__)

IOU = "0.3"  # the gate's object-matching threshold


@dataclass
class RetrainOptions:
    """What ``buildwatch retrain`` was asked to do."""

    models: Path
    work: Path
    tiles: Path | None = None
    tiles_gsd: float | None = None
    cases: Path | None = None
    baseline: Path | None = None
    current: Path | None = None
    holdout_fraction: float = 0.2
    holdout: list[str] = field(default_factory=list)
    # synthetic scenes mixed into training (keeps the other classes in view; 8 and 16 let them erode)
    synthetic_train: int = 32
    synthetic_holdout: int = 4  # synthetic scenes the gate scores both models on
    synthetic_size: int = 1024
    margin: float = 0.05
    min_gain: float = 0.0
    promote: bool = True
    resume: bool = (
        True  # reuse a finished fine-tune of an earlier attempt on the same data and recipe
    )
    seed: int = 0
    base_model: Path | None = (
        None  # the model v0001 is made from when the registry is empty (default: shipped)
    )


@dataclass
class GateResult:
    promote: bool
    reason: str  # one line
    old: dict
    new: dict

    def to_json(self) -> dict:
        return {"promote": self.promote, "reason": self.reason, "old": self.old, "new": self.new}


def gate_metrics(synthetic_report: dict | None, district_report: dict | None) -> dict:
    """The numbers the gate compares, from two :func:`training.evaluate.evaluate_pairs` reports."""
    out: dict = {
        "district_f1": None,
        "district_per_class": {},
        "synthetic_f1": None,
        "synthetic_per_class": {},
    }
    if district_report is not None:
        s = district_report["summary"]
        out["district_f1"] = s["any_class"][IOU]["f1"]
        out["district_per_class"] = {
            c: v[IOU]["f1"]
            for c, v in s.get("per_class", {}).items()
            if v[IOU]["tp"] + v[IOU]["fn"] > 0
        }
        out["district_counts"] = {k: s["any_class"][IOU][k] for k in ("tp", "fp", "fn")}
    if synthetic_report is not None:
        s = synthetic_report["summary"]
        out["synthetic_f1"] = s["all_classes"][IOU]["f1"]
        out["synthetic_per_class"] = {
            c: v[IOU]["f1"] for c, v in s["per_class"].items() if v[IOU]["tp"] + v[IOU]["fn"] > 0
        }
    return out


def gate_decision(old: dict, new: dict, margin: float = 0.05, min_gain: float = 0.0) -> GateResult:
    """Promote ``new`` only if the district F1 improves (by more than ``min_gain``) and no class
    F1 (synthetic per class, district per class) drops by more than ``margin``.

    Parameters
    ----------
    old, new : dict
        From :func:`gate_metrics` for the promoted model and the candidate.
    """
    if old.get("district_f1") is None or new.get("district_f1") is None:
        return GateResult(
            False,
            "no district hold-out was scored; nothing shows the new model is better",
            old,
            new,
        )
    gain = new["district_f1"] - old["district_f1"]
    if gain <= min_gain:
        return GateResult(
            False,
            f"district F1@{IOU} {old['district_f1']:.3f} -> {new['district_f1']:.3f}: "
            f"no improvement (needs > +{min_gain:.3f})",
            old,
            new,
        )
    for scope in ("synthetic_per_class", "district_per_class"):
        for cls, before in old.get(scope, {}).items():
            after = new.get(scope, {}).get(cls, 0.0)
            if before - after > margin:
                where = scope.split("_")[0]
                return GateResult(
                    False,
                    f"{where} {cls} F1@{IOU} drops {before:.3f} -> {after:.3f} "
                    f"(more than the margin {margin:.2f}), although the district F1 rises "
                    f"{old['district_f1']:.3f} -> {new['district_f1']:.3f}",
                    old,
                    new,
                )
    return GateResult(
        True,
        f"district F1@{IOU} {old['district_f1']:.3f} -> {new['district_f1']:.3f} "
        f"(+{gain:.3f}); no class drops more than {margin:.2f}",
        old,
        new,
    )


def _ensure_parent(registry: ModelRegistry, base_model: Path | None, work: Path) -> ModelVersion:
    """The promoted version; an empty registry first gets the current model as v0001 (promoted)."""
    if registry.promoted is not None:
        return registry.resolve()
    if registry.versions():
        raise ConfigError(
            f"{registry.root}: has versions but none promoted; promote one first "
            "('buildwatch models promote VERSION --models ...')"
        )
    from detector.night.model import load_model_spec

    spec = load_model_spec(base_model)
    from training.checkpoint import checkpoint_beside, checkpoint_from_onnx

    ck = checkpoint_beside(spec.path)
    if not ck.exists():  # the shipped model has none: recover it once, keep it in the registry
        log.info(
            "%s has no training checkpoint beside it: recovering one from the ONNX", spec.path.name
        )
        ck = checkpoint_from_onnx(spec.path, work / "recovered.pt")
    first = registry.add(
        spec.path,
        checkpoint=ck,
        model_name=spec.model_name,
        note=f"initial version: {spec.path.name} ({spec.model_name})",
        metrics={"embedded": spec.metadata.get("buildwatch_metrics", "")},
    )
    registry.promote(first.version, "initial version")
    log.info(
        "registry %s was empty: registered %s as %s and promoted it",
        registry.root,
        spec.path,
        first.version,
    )
    return registry.resolve()


def _parent_checkpoint(parent: ModelVersion, work: Path) -> Path:
    if parent.checkpoint is not None:
        return parent.checkpoint
    from training.checkpoint import checkpoint_from_onnx

    out = work / f"{parent.version}-recovered.pt"
    if not out.exists():
        log.info("%s has no training checkpoint: recovering one from its ONNX", parent.version)
        checkpoint_from_onnx(parent.model, out)
    return out


def _boxes(objects) -> list[OrientedBox]:
    return [OrientedBox(cls, polygon_to_obb(poly)) for cls, poly in objects if len(poly) >= 3]


def _synthetic_scenes(seeds, size: int, gsd: float):
    from detector.synth.scene import generate_scene

    for seed in seeds:
        yield seed, generate_scene(seed, size=size, gsd=gsd)


def build_retrain_dataset(
    opts: RetrainOptions, cfg: TrainConfig, model_gsd: float
) -> tuple[Path, dict, list]:
    """Write the fine-tuning dataset and the district hold-out scenes; return (data.yaml, manifest part, holdout)."""
    from training.district import read_labelled_tiles, split_groups, write_holdout_scene

    root = opts.work / "dataset"
    if root.exists():
        shutil.rmtree(root)
    writer = DatasetWriter(root, 6, CHANGE_CLASSES)
    manifest: dict = {"tiles": [], "holdout": [], "reviews": None, "synthetic": {}}
    holdout_dirs: list[Path] = []
    stride = max(32, cfg.imgsz // 2)
    if opts.tiles is not None:
        pairs = read_labelled_tiles(opts.tiles, model_gsd, opts.tiles_gsd)
        train, held = split_groups(pairs, opts.holdout_fraction, opts.holdout or None, opts.seed)
        for p in train:
            chips = chip_samples(p.image, _boxes(p.objects), cfg.imgsz, stride, f"tile_{p.name}")
            for chip in chips:
                writer.add("train", chip)
            manifest["tiles"].append(
                {
                    "name": p.name,
                    "group": p.group,
                    "format": p.label_format,
                    "source": p.source,
                    "objects": len(p.objects),
                    "chips": len(chips),
                    "sha256": p.sha256,
                }
            )
        hold_root = opts.work / "holdout" / "district"
        if hold_root.exists():
            shutil.rmtree(hold_root)
        for p in held:
            holdout_dirs.append(write_holdout_scene(p, hold_root / p.name, model_gsd))
            manifest["holdout"].append(
                {
                    "name": p.name,
                    "group": p.group,
                    "format": p.label_format,
                    "source": p.source,
                    "objects": len(p.objects),
                    "sha256": p.sha256,
                }
            )
    if opts.cases is not None:
        from training.reviews import review_samples

        if opts.baseline is None or opts.current is None:
            raise InputError(
                "--cases needs --baseline and --current (the mosaics of the night the cases were reviewed on)"
            )
        chips = review_samples(opts.cases, opts.baseline, opts.current, model_gsd, cfg.imgsz)
        for _split, sample in chips.samples:
            writer.add("train", sample)
        from detector.fileio import file_sha256

        manifest["reviews"] = {
            "registry": str(opts.cases),
            "registry_sha256": file_sha256(opts.cases),
            "baseline": str(opts.baseline),
            "current": str(opts.current),
            "positives": chips.positives,
            "negatives": chips.negatives,
            "skipped_unreviewed": chips.skipped_unreviewed,
            "skipped_unregistered": chips.skipped_unregistered,
        }
    district_train = writer.counts["train"]["images"]
    if district_train == 0:
        raise InputError(
            "nothing to learn from: no labelled training tiles and no reviewed cases "
            "(give --tiles and/or --cases with --baseline/--current)"
        )
    train_seeds = range(800000 + opts.seed * 1000, 800000 + opts.seed * 1000 + opts.synthetic_train)
    val_seeds = range(
        810000 + opts.seed * 1000, 810000 + opts.seed * 1000 + max(1, opts.synthetic_train // 4)
    )
    for split, seeds in (("train", train_seeds), ("val", val_seeds)):
        for seed, scene in _synthetic_scenes(seeds, opts.synthetic_size, model_gsd):
            boxes = [
                OrientedBox(CHANGE_CLASSES.index(c.cls), polygon_to_obb(c.polygon))
                for c in scene.changes[0]
            ]
            pair = np.concatenate([scene.epochs[0], scene.epochs[1]], axis=2)
            for chip in chip_samples(pair, boxes, cfg.imgsz, cfg.imgsz, f"syn{seed}"):
                writer.add(split, chip)
    manifest["synthetic"] = {
        "generator": "detector.synth.scene.generate_scene",
        "train_seeds": [train_seeds.start, train_seeds.stop],
        "val_seeds": [val_seeds.start, val_seeds.stop],
        "size": opts.synthetic_size,
    }
    manifest["counts"] = writer.counts
    manifest["class_counts"] = {
        s: dict(zip(CHANGE_CLASSES, c)) for s, c in writer.class_counts.items()
    }
    manifest["district_train_chips"] = district_train
    return writer.write_yaml(), manifest, holdout_dirs


def synthetic_holdout(
    work: Path, count: int, size: int, gsd: float, seed0: int = 820000
) -> Path | None:
    """``count`` synthetic scenes (fixed seeds, never trained on) written for the gate."""
    if count <= 0:
        return None
    from detector.synth.write import write_scene

    root = work / "holdout" / "synthetic"
    for seed, scene in _synthetic_scenes(range(seed0, seed0 + count), size, gsd):
        if not (root / f"scene_{seed}" / "truth.geojson").exists():
            write_scene(scene, root / f"scene_{seed}")
    return root


def evaluate_for_gate(
    model: Path, synthetic_dir: Path | None, district_dir: Path | None, out: Path
) -> dict:
    """Gate numbers of one model (:func:`gate_metrics`); reports written under ``out``."""
    from training.evaluate import evaluate_pairs

    syn = (
        evaluate_pairs(model, synthetic_dir, "synth", out / "synthetic.json")
        if synthetic_dir
        else None
    )
    dis = (
        evaluate_pairs(model, district_dir, "synth", out / "district.json")
        if district_dir
        else None
    )
    return gate_metrics(syn, dis)


def gate_and_register(
    registry: ModelRegistry,
    parent: ModelVersion,
    candidate: Path,
    checkpoint: Path | None,
    synthetic_dir: Path | None,
    district_dir: Path | None,
    out: Path,
    margin: float = 0.05,
    min_gain: float = 0.0,
    promote: bool = True,
    data_manifest: dict | None = None,
    model_name: str = "",
) -> tuple[ModelVersion, GateResult]:
    """Score ``parent`` and ``candidate`` on the same hold-outs, register the candidate with the
    verdict, and promote it only if the gate passes (and ``promote``); the reason is logged."""
    old = evaluate_for_gate(parent.model, synthetic_dir, district_dir, Path(out) / "old")
    new = evaluate_for_gate(candidate, synthetic_dir, district_dir, Path(out) / "new")
    gate = gate_decision(old, new, margin, min_gain)
    version = registry.add(
        candidate,
        checkpoint=checkpoint,
        parent=parent.version,
        model_name=model_name,
        data_manifest=data_manifest or {},
        metrics={"old": old, "new": new},
        gate=gate.to_json(),
        note=("gate passed: " if gate.promote else "gate refused: ") + gate.reason,
    )
    if gate.promote and promote:
        registry.promote(version.version, gate.reason)
        log.info("promoted %s: %s", version.version, gate.reason)
    elif gate.promote:
        log.info(
            "%s passed the gate but --no-promote: %s stays promoted (%s)",
            version.version,
            parent.version,
            gate.reason,
        )
    else:
        log.info("kept %s, %s not promoted: %s", parent.version, version.version, gate.reason)
    return version, gate


FINETUNE_RECORD = "finetune.json"


def finetune_digest(data_manifest: dict, cfg: TrainConfig, parent_sha256: str) -> str:
    """What a fine-tune depends on: every input's sha256 and count, the recipe, the parent model."""
    recipe = json.loads(cfg.model_dump_json())
    recipe["train"].pop("project", None)  # where it is written does not change what is learnt
    return json_digest({"data": data_manifest, "recipe": recipe, "parent": parent_sha256})


def record_finetune(work: Path, digest: str, result) -> None:
    """Note a finished fine-tune in ``<work>/finetune.json`` (written after the weights)."""
    from detector.fileio import atomic_write_text

    atomic_write_text(
        Path(work) / FINETUNE_RECORD,
        json.dumps(
            {
                "digest": digest,
                "run_dir": str(result.run_dir),
                "best": str(result.best),
                "last": str(result.last),
                "seconds": round(result.seconds, 1),
                "metrics": result.metrics,
                "finished": utc_now(),
            },
            indent=1,
        ),
    )


def finished_finetune(work: Path, digest: str):
    """The :class:`training.train.TrainResult` of an earlier attempt's finished fine-tune with the same
    ``digest`` (its weights still there), else None: a retrain killed during export or the gate
    restarts from there, not from a new fine-tune."""
    from training.train import TrainResult

    path = Path(work) / FINETUNE_RECORD
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("digest") != digest or not Path(rec.get("best", "")).is_file():
        return None
    return TrainResult(
        Path(rec["run_dir"]),
        Path(rec["best"]),
        Path(rec["last"]),
        float(rec["seconds"]),
        rec.get("metrics") or {},
    )


@dataclass
class RetrainResult:
    parent: str
    version: str | None
    promoted: str
    gate: GateResult | None
    manifest: Path
    seconds: float


def retrain(opts: RetrainOptions, cfg: TrainConfig) -> RetrainResult:
    """Run the whole retraining (module docstring); returns what was registered and promoted."""
    from detector.night.model import load_model_spec
    from training.district import labelled_sources
    from training.train import train_model

    t0 = time.time()
    opts.work = Path(opts.work)
    for path, what in (
        (opts.tiles, "labelled tiles folder"),
        (opts.cases, "case registry"),
        (opts.baseline, "baseline mosaic"),
        (opts.current, "current mosaic"),
    ):
        if path is not None and not Path(path).exists():
            raise InputError(f"{path}: {what} not found")
    if opts.tiles is not None:  # the layout, before anything is created (no empty dataset tree)
        labelled_sources(opts.tiles, opts.tiles_gsd)
    opts.work.mkdir(parents=True, exist_ok=True)
    # this module's messages go to <work>/retrain.log
    handler = log_to(logging.FileHandler(opts.work / "retrain.log"), logging.INFO, (__name__,))
    try:
        registry = ModelRegistry(opts.models)
        promoted = registry.resolve() if registry.promoted is not None else None
        spec = load_model_spec(promoted.model if promoted else opts.base_model)
        if spec.channels != 6:
            raise ConfigError(
                f"{spec.path}: retraining needs a pair (6-channel) model; it has {spec.channels} channels"
            )
        if spec.building is not None:
            raise ConfigError(
                f"{spec.path}: a two-view model (pretrained encoder, change and building heads) "
                "cannot be retrained yet; retrain the shipped pair model (leave --base-model out) "
                "or train the two heads with configs/train/enc-*.yaml"
            )
        if abs(cfg.gsd_m - spec.gsd_m) > 1e-9:
            log.info(
                "training GSD set to the parent's %.3f m (config had %.3f m)", spec.gsd_m, cfg.gsd_m
            )
            cfg.gsd_m = spec.gsd_m
        # the data first: bad labels fail before anything is written to the registry
        data_yaml, data_manifest, holdout_dirs = build_retrain_dataset(opts, cfg, spec.gsd_m)
        parent = _ensure_parent(registry, opts.base_model, opts.work)
        start = _parent_checkpoint(parent, opts.work)
        log.info(
            "retrain from %s (%s, sha256 %s), checkpoint %s",
            parent.version,
            spec.model_name,
            spec.sha256[:12],
            start,
        )
        log.info(
            "dataset %s: %s; district hold-out %s",
            data_yaml.parent,
            data_manifest["counts"],
            [h["name"] for h in data_manifest["holdout"]],
        )
        if cfg.train.device == "auto":
            import torch

            cfg.train.device = "0" if torch.cuda.is_available() else "cpu"
        cfg.train.weights = start
        cfg.train.seed = opts.seed
        cfg.train.project = opts.work / "runs"
        digest = finetune_digest(data_manifest, cfg, parent.sha256)
        result = finished_finetune(opts.work, digest) if opts.resume else None
        if result is not None:
            log.info(
                "reusing the fine-tune an earlier attempt finished (%s, %.0f s): same data, recipe and parent",
                result.best,
                result.seconds,
            )
        else:
            result = train_model(cfg, data_yaml, name="finetune")
            record_finetune(opts.work, digest, result)
            log.info("fine-tuned in %.0f s: %s", result.seconds, result.metrics)
        from training.export import export_onnx

        name = f"{spec.model_name.split('+')[0]}+ft"
        candidate = export_onnx(
            result.best,
            opts.work / "candidate.onnx",
            gsd_m=spec.gsd_m,
            conf=spec.conf,
            iou=spec.iou,
            overlap_px=spec.overlap_px,
            model_name=name,
            imgsz=spec.imgsz[0],
            metrics={},
            provenance={
                "parent": parent.version,
                "parent_sha256": parent.sha256,
                "data_manifest": "version.json data_manifest",
                "retrained": utc_now(),
            },
        )
        syn_dir = synthetic_holdout(
            opts.work, opts.synthetic_holdout, opts.synthetic_size, spec.gsd_m
        )
        district_dir = (opts.work / "holdout" / "district") if holdout_dirs else None
        version, gate = gate_and_register(
            registry,
            parent,
            candidate,
            result.best,
            syn_dir,
            district_dir,
            opts.work / "gate",
            opts.margin,
            opts.min_gain,
            opts.promote,
            data_manifest,
            name,
        )
        manifest = {
            "created": utc_now(),
            "parent": parent.version,
            "parent_sha256": parent.sha256,
            "version": version.version,
            "start_checkpoint": str(start),
            "config": json.loads(cfg.model_dump_json()),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "data": data_manifest,
            "train_seconds": round(result.seconds, 1),
            "train_metrics": result.metrics,
            "gate": gate.to_json(),
        }
        manifest_path = opts.work / "manifest.json"
        from detector.fileio import atomic_write_text

        atomic_write_text(manifest_path, json.dumps(manifest, indent=1, default=str))
        promoted = registry.promoted
        return RetrainResult(
            parent.version,
            version.version,
            promoted.version if promoted else "",
            gate,
            manifest_path,
            time.time() - t0,
        )
    finally:
        stop_logging_to(handler, (__name__,))
