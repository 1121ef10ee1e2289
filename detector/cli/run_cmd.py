"""``buildwatch run``: the nightly job."""

from __future__ import annotations

from pathlib import Path

import click

from detector.cli.options import config_option


@click.command(name="run")
@click.option("--baseline", type=click.Path(path_type=Path), help="Baseline orthomosaic (GeoTIFF/COG).")
@click.option("--current", type=click.Path(path_type=Path), help="Tonight's orthomosaic (GeoTIFF/COG).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (candidates.gpkg, log, work/).")
@click.option("--model", type=click.Path(path_type=Path),
              help="ONNX model; default: the promoted version of --models, else the shipped model.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path),
              help="Model registry folder (buildwatch retrain / models): run its promoted version.")
@click.option("--model-version", help="With --models: run this version (e.g. v0002) instead of the promoted one.")
@click.option("--baseline-dsm", type=click.Path(path_type=Path),
              help="DSM of the baseline survey (GeoTIFF); with --current-dsm adds height change.")
@click.option("--current-dsm", type=click.Path(path_type=Path), help="DSM of tonight's survey (GeoTIFF).")
@config_option
@click.option("--workers", type=int, help="Worker processes (default 2).")
@click.option("--conf", type=float, help="Confidence threshold (default: the model's).")
@click.option("--cases", "cases_registry", type=click.Path(path_type=Path),
              help="Case registry cases.gpkg to update (overrides cases.registry).")
@click.option("--no-resume", is_flag=True, help="Recompute every tile even if a previous run finished it.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for cron logs).")
def run(baseline, current, out, model, models_dir, model_version, baseline_dsm, current_dsm, config_path, workers, conf,
        cases_registry, no_resume, no_progress):
    """Find newly built structures between BASELINE and CURRENT; write OUT/candidates.gpkg."""
    from detector.config import load_config
    from detector.night.pipeline import run_pipeline

    overrides = {"baseline": baseline, "current": current, "out": out, "model": model, "models": models_dir,
                 "model_version": model_version, "workers": workers,
                 "detect.conf": conf, "cases.registry": cases_registry, "baseline_dsm": baseline_dsm,
                 "current_dsm": current_dsm}
    if no_resume:
        overrides["resume"] = False
    if no_progress:
        overrides["progress"] = False
    cfg = load_config(config_path, overrides)
    summary = run_pipeline(cfg)
    click.echo(summary.text())
    c = summary.cases
    if c is not None:
        click.echo(f"cases: {c.opened} opened, {c.updated} updated, {c.suppressed} suppressed (rejected before); "
                   f"{c.total} in {c.registry}")
        if c.report_html:
            click.echo(f"report: {c.report_html}")
