"""Shared click options and callbacks."""

from __future__ import annotations

from pathlib import Path

import click


def existing_file(ctx, param, value):
    """Callback: the path must exist and be a file (clear message naming the option)."""
    if value is None:
        return None
    path = Path(value)
    if not path.exists():
        raise click.BadParameter(f"{path}: file not found", ctx=ctx, param=param)
    if path.is_dir():
        raise click.BadParameter(f"{path}: is a folder, expected a file", ctx=ctx, param=param)
    return path


def existing_raster(ctx, param, value):
    """Callback for a raster input: a local file that exists, or a URL / GDAL ``/vsi...`` location
    (:mod:`detector.geo.location`), which is checked when it is opened."""
    if value is None:
        return None
    from detector.geo.location import as_location, is_remote

    try:
        location = as_location(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return location if is_remote(location) else existing_file(ctx, param, value)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML run configuration (see configs/); flags override it.",
)
