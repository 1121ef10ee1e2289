"""``buildwatch run``: the nightly job."""

from __future__ import annotations

import click

from detector.cli.options import config_option


@click.command(name="run")
# Paths stay strings here: the config refuses an empty one ('--out ""' must not mean the working folder).
@click.option("--baseline", type=str, help="Baseline orthomosaic (GeoTIFF/COG).")
@click.option("--current", type=str, help="Tonight's orthomosaic (GeoTIFF/COG).")
@click.option("--out", type=str, help="Output folder (candidates.gpkg, log, work/).")
@click.option("--model", type=str, help="ONNX model; default: the shipped model.")
@click.option("--baseline-dsm", type=str,
              help="DSM of the baseline survey (GeoTIFF); with --current-dsm adds height change.")
@click.option("--current-dsm", type=str, help="DSM of tonight's survey (GeoTIFF).")
@config_option
@click.option("--workers", type=int, help="Worker processes (default 2).")
@click.option("--scheduler", type=str, help="Dask scheduler address (tcp://HOST:8786): run the tiles on that "
              "cluster (needs the [dask] extra); default: local worker processes.")
@click.option("--conf", type=float, help="Confidence threshold (default: the model's).")
@click.option("--cases", "cases_registry", type=str,
              help="Case registry cases.gpkg to update (overrides cases.registry).")
@click.option("--no-resume", is_flag=True, help="Recompute every tile even if a previous run finished it.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for cron logs).")
def run(baseline, current, out, model, baseline_dsm, current_dsm, config_path, workers, scheduler, conf,
        cases_registry, no_resume, no_progress):
    """Find newly built structures between BASELINE and CURRENT; write OUT/candidates.gpkg."""
    from detector.config import load_config
    from detector.night.pipeline import run_pipeline

    overrides = {"baseline": baseline, "current": current, "out": out, "model": model, "workers": workers,
                 "scheduler": scheduler, "detect.conf": conf, "cases.registry": cases_registry,
                 "baseline_dsm": baseline_dsm, "current_dsm": current_dsm}
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
