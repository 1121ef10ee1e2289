"""``buildwatch ortho`` (raw frames -> orthomosaic) and ``buildwatch ingest`` (external mosaic -> baseline grid)."""

from __future__ import annotations

from pathlib import Path

import click

from detector.cli.options import existing_file, existing_raster


def _summary_line(rep) -> str:
    def num(x: float) -> str:
        return "-" if x != x else f"{x:.2f}"

    detail = f"offset {num(rep.shift_m)} m, residual {num(rep.residual_m)} m, {rep.inliers} inliers"
    shown = detail if rep.status != "skipped" else ""
    reason = "  " + rep.reason if rep.reason else ""
    return f"  {rep.name:<28} {rep.status:<8} {shown}{reason}"


@click.command("ortho")
@click.argument("frames", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--baseline",
    required=True,
    type=click.Path(path_type=Path),
    callback=existing_file,
    help="Reference orthomosaic (GeoTIFF): CRS and pixel grid of the output, target of the refinement.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output COG (current.tif).",
)
@click.option(
    "--dem",
    type=click.Path(path_type=Path),
    callback=existing_file,
    help="DEM/DSM GeoTIFF (any CRS); default: flat ground at the take-off height.",
)
@click.option(
    "--flight-log",
    type=click.Path(path_type=Path),
    callback=existing_file,
    help="CSV flight log (file name, lat, lon, altitude, yaw, pitch, roll); overrides EXIF/XMP.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML with ortho settings (see configs/ortho.example.yaml).",
)
@click.option("--gsd", "gsd_m", type=float, help="Output GSD in metres (default: the baseline's).")
@click.option(
    "--no-refine",
    is_flag=True,
    help="Direct georeferencing only (no matching against the baseline).",
)
def ortho(frames, baseline, out, dem, flight_log, config_path, gsd_m, no_refine):
    """Orthorectify raw drone FRAMES (files or folders) onto the baseline's grid and mosaic them.

    Frames that cannot be used (no GPS, looking at the horizon, corrupt, outside the baseline)
    are skipped with a reason; the mosaic is written from the others.
    """
    import logging

    from detector.errors import ConfigError
    from detector.fileio import same_file
    from detector.flight.ortho import load_ortho_config, orthomosaic

    for what, source in (
        ("--baseline", baseline),
        ("--dem", dem),
        ("--flight-log", flight_log),
        *(("FRAMES", f) for f in frames),
    ):
        if source is not None and same_file(source, out):
            raise ConfigError(
                f"{out}: --out is the input {what} ({source}); ortho would overwrite it: "
                "give another output file"
            )
    overrides = {"gsd_m": gsd_m}
    if no_refine:
        overrides["refine"] = False
    cfg = load_ortho_config(config_path, overrides)
    if (
        not logging.getLogger().handlers
    ):  # called outside the buildwatch group (which sets up the terminal)
        from detector.logs import log_to

        log_to(logging.StreamHandler(), logging.INFO, ("",))
    logging.getLogger("detector.flight").setLevel(logging.INFO)
    result = orthomosaic(
        list(frames), baseline, out, dem=dem, flight_log=flight_log, cfg=cfg, progress=True
    )
    click.echo(
        f"wrote {result.out} ({result.width}x{result.height} px) from {len(result.used)} of "
        f"{len(result.frames)} frames in {result.seconds:.1f} s"
    )
    for rep in result.frames:
        click.echo(_summary_line(rep))
    if result.skipped:
        click.echo(f"{len(result.skipped)} frame(s) skipped; see the reasons above")


@click.command("ingest")
@click.argument("mosaic", type=str, callback=existing_raster)
@click.option(
    "--baseline",
    required=True,
    type=str,
    callback=existing_raster,
    help="Reference orthomosaic whose CRS and pixel grid the output takes (a path or URL, as for run).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output COG (current.tif).",
)
@click.option(
    "--min-coverage",
    type=float,
    default=0.01,
    show_default=True,
    help="Refuse a mosaic covering less than this fraction of the baseline.",
)
@click.option(
    "--dsm",
    is_flag=True,
    help="MOSAIC is that tool's DSM (heights): written as float32 metres, for "
    "run --baseline-dsm / --current-dsm.",
)
@click.option(
    "--units",
    type=click.Choice(["auto", "metre", "foot", "us_survey_foot"]),
    default="auto",
    show_default=True,
    help="With --dsm: the height unit (auto: what the file declares, else metres).",
)
def ingest(mosaic, baseline, out, min_coverage, dsm, units):
    """Reproject an orthomosaic (or, with --dsm, a DSM) from another tool (ODM, DJI Terra, Pix4D)
    into the baseline's grid."""
    from detector.flight.ingest import ingest as run_ingest

    rep = run_ingest(mosaic, baseline, out, min_coverage=min_coverage, dsm=dsm, units=units)
    click.echo(
        f"wrote {rep.out} ({rep.width}x{rep.height} px): source {rep.source_crs} at {rep.source_gsd_m:.3f} m, "
        f"baseline GSD {rep.baseline_gsd_m:.3f} m, covers {rep.coverage:.1%} of the baseline"
    )
    for w in rep.warnings:
        click.echo(f"warning: {w}", err=True)
