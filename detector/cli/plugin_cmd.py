"""``buildwatch qgis-plugin``: write the QGIS triage plugin as a zip for QGIS's "Install from ZIP"."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("qgis-plugin")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("buildwatch_triage.zip"),
    show_default=True,
    help="The zip to write (in QGIS: Plugins > Manage and Install Plugins > Install from ZIP).",
)
def qgis_plugin(out: Path) -> None:
    """Write the QGIS triage plugin (the morning review dock) as a zip."""
    from detector.review.triage_plugin import write_plugin_zip

    click.echo(f"wrote {write_plugin_zip(out)}")
