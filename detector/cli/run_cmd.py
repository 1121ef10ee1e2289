"""``buildwatch run``: the nightly job."""

from __future__ import annotations

import click

from detector.cli.options import config_option


@click.command(name="run")
# Paths stay strings here: the config refuses an empty one ('--out ""' must not mean the working folder).
@click.option("--baseline", type=str, help="Baseline orthomosaic (GeoTIFF/COG).")
@click.option("--current", type=str, help="Tonight's orthomosaic (GeoTIFF/COG).")
@click.option("--out", type=str, help="Output folder (candidates.gpkg, log, work/).")
@click.option(
    "--model",
    type=str,
    help="ONNX model; default: the promoted version of --models, else the shipped model.",
)
@click.option(
    "--models",
    "models_dir",
    type=str,
    help="Model registry folder (buildwatch retrain / models): run its promoted version.",
)
@click.option(
    "--model-version",
    type=str,
    help="With --models: run this version (e.g. v0002) instead of the promoted one.",
)
@click.option(
    "--baseline-dsm",
    type=str,
    help="DSM of the baseline survey (GeoTIFF); with --current-dsm adds height change.",
)
@click.option("--current-dsm", type=str, help="DSM of tonight's survey (GeoTIFF).")
@click.option(
    "--baseline-cache",
    type=str,
    help="Folder keeping the building model's view of the baseline between "
    "nights (overrides detect.second_view.baseline_cache): later nights skip that inference.",
)
@config_option
@click.option("--workers", type=int, help="Worker processes (default 2).")
@click.option(
    "--scheduler",
    type=str,
    help="Dask scheduler address (tcp://HOST:8786): run the tiles on that "
    "cluster (needs the [dask] extra); default: local worker processes.",
)
@click.option("--conf", type=float, help="Confidence threshold (default: the model's).")
@click.option(
    "--cases",
    "cases_registry",
    type=str,
    help="Case registry cases.gpkg to update (overrides cases.registry).",
)
@click.option(
    "--boundaries",
    type=str,
    help="Community/grid boundary layer (any OGR file) for the cases' community "
    "and unit columns and the report's per-community table (overrides cases.boundaries; needs --cases).",
)
@click.option(
    "--no-resume", is_flag=True, help="Recompute every tile even if a previous run finished it."
)
@click.option("--no-progress", is_flag=True, help="No progress bar (for cron logs).")
def run(
    baseline,
    current,
    out,
    model,
    models_dir,
    model_version,
    baseline_dsm,
    current_dsm,
    baseline_cache,
    config_path,
    workers,
    scheduler,
    conf,
    cases_registry,
    boundaries,
    no_resume,
    no_progress,
):
    """Find newly built structures between BASELINE and CURRENT; write OUT/candidates.gpkg."""
    from detector.config import load_config
    from detector.run import run_pipeline

    overrides = {
        "baseline": baseline,
        "current": current,
        "out": out,
        "model": model,
        "models": models_dir,
        "model_version": model_version,
        "workers": workers,
        "scheduler": scheduler,
        "detect.conf": conf,
        "cases.registry": cases_registry,
        "cases.boundaries": boundaries,
        "baseline_dsm": baseline_dsm,
        "current_dsm": current_dsm,
        "detect.second_view.baseline_cache": baseline_cache,
    }
    if no_resume:
        overrides["resume"] = False
    if no_progress:
        overrides["progress"] = False
    cfg = load_config(config_path, overrides)
    summary = run_pipeline(cfg)
    click.echo(summary.text())
    c = summary.cases
    if c is not None:
        alerts = f", {len(c.alert_ids)} demolition alerts" if c.alert_ids else ""
        click.echo(
            f"cases: {c.opened} opened, {c.updated} updated, {c.suppressed} suppressed (rejected before){alerts}; "
            f"{c.total} in {c.registry}"
        )
        if c.report_html:
            click.echo(f"report: {c.report_html}")
