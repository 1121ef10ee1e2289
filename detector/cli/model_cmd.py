"""``buildwatch model-info``: show a model's contract (metadata) without running it."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="model-info")
@click.argument("model", required=False, type=click.Path(path_type=Path))
def model_info(model):
    """Print the contract of MODEL (default: the shipped model)."""
    from detector.night.model import load_model_spec

    spec = load_model_spec(model)
    click.echo(
        json.dumps(
            {
                "path": str(spec.path),
                "sha256": spec.sha256,
                "name": spec.model_name,
                "task": spec.task,
                "channels": spec.channels,
                "mode": "pair (6-channel)" if spec.is_pair else "single epoch (3-channel)",
                "imgsz": list(spec.imgsz),
                "names": spec.names,
                "gsd_m": spec.gsd_m,
                "end2end": spec.end2end,
                "conf": spec.conf,
                "iou": spec.iou,
                "tile_overlap_px": spec.overlap_px,
                "provenance": _json_or_text(spec.metadata.get("buildwatch_provenance")),
                "metrics": _json_or_text(spec.metadata.get("buildwatch_metrics")),
            },
            indent=2,
        )
    )


def _json_or_text(value: str | None):
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


@click.group(name="models")
def models():
    """The model registry: list versions, promote one, roll back (see 'buildwatch retrain')."""


def _registry(path):
    from detector.night.model_registry import ModelRegistry

    if not Path(path).is_dir():
        from detector.errors import InputError

        raise InputError(
            f"{path}: model registry folder not found (create one with 'buildwatch retrain --models {path}')"
        )
    return ModelRegistry(path)


_models_option = click.option(
    "--models",
    "models_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Model registry folder.",
)


@models.command(name="list")
@_models_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_versions(models_dir, as_json):
    """Every version: promoted mark, date, parent, sha256, gate verdict and district F1."""
    reg = _registry(models_dir)
    promoted = reg.promoted
    rows = []
    for v in reg.versions():
        new = (v.metrics or {}).get("new", {}) if isinstance(v.metrics, dict) else {}
        rows.append(
            {
                "version": v.version,
                "promoted": promoted is not None and v.version == promoted.version,
                "created": v.created,
                "parent": v.parent,
                "sha256": v.sha256,
                "model_name": v.model_name,
                "checkpoint": v.checkpoint is not None,
                "district_f1": new.get("district_f1"),
                "gate": (v.gate or {}).get("reason", ""),
                "note": v.note,
            }
        )
    if as_json:
        click.echo(
            json.dumps(
                {"promoted": promoted.version if promoted else None, "versions": rows}, indent=1
            )
        )
        return
    if not rows:
        click.echo(f"{models_dir}: no versions yet")
        return
    for r in rows:
        f1 = f"district F1 {r['district_f1']:.3f}" if r["district_f1"] is not None else ""
        click.echo(
            f"{'*' if r['promoted'] else ' '} {r['version']}  {r['created'][:19]}  parent {r['parent'] or '-':6}  "
            f"sha256 {r['sha256'][:12]}  {r['model_name']}  {f1}  {r['note']}".rstrip()
        )


@models.command(name="promote")
@_models_option
@click.argument("version")
@click.option(
    "--reason",
    default="promoted by hand",
    show_default=True,
    help="Recorded in the registry history.",
)
def promote(models_dir, version, reason):
    """Make VERSION the model 'buildwatch run --models' uses."""
    chosen = _registry(models_dir).promote(version, reason)
    click.echo(f"promoted {chosen.version} ({chosen.model_name}, sha256 {chosen.sha256[:12]})")


@models.command(name="rollback")
@_models_option
@click.option(
    "--reason",
    default="rolled back by hand",
    show_default=True,
    help="Recorded in the registry history.",
)
def rollback(models_dir, reason):
    """Promote again the version that was promoted before the current one."""
    reg = _registry(models_dir)
    before = reg.promoted
    chosen = reg.rollback(reason)
    click.echo(
        f"rolled back {before.version} -> {chosen.version} ({chosen.model_name}, sha256 {chosen.sha256[:12]})"
    )
