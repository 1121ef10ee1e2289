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
    click.echo(json.dumps({
        "path": str(spec.path), "sha256": spec.sha256, "name": spec.model_name, "task": spec.task,
        "channels": spec.channels, "mode": "pair (6-channel)" if spec.is_pair else "single epoch (3-channel)",
        "imgsz": list(spec.imgsz), "names": spec.names, "gsd_m": spec.gsd_m, "end2end": spec.end2end,
        "conf": spec.conf, "iou": spec.iou, "tile_overlap_px": spec.overlap_px,
        "provenance": _json_or_text(spec.metadata.get("buildwatch_provenance")),
        "metrics": _json_or_text(spec.metadata.get("buildwatch_metrics")),
    }, indent=2))


def _json_or_text(value: str | None):
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value
