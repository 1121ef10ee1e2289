"""``buildwatch synth``: write synthetic bi-temporal scenes with exact change truth."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("synth")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed; same seed => same bytes."
)
@click.option(
    "--scenes", type=int, default=1, show_default=True, help="Number of scenes (scene_000, ...)."
)
@click.option("--size", type=int, default=1024, show_default=True, help="Image side in pixels.")
@click.option(
    "--gsd",
    type=float,
    default=0.1,
    show_default=True,
    help="Ground sample distance, metres/pixel.",
)
@click.option(
    "--crs",
    default="EPSG:4547",
    show_default=True,
    help="Raster CRS: a metric projected CRS (EPSG:4547, EPSG:32650) or EPSG:4326.",
)
@click.option(
    "--nights",
    type=int,
    default=1,
    show_default=True,
    help="Number of nights T: writes T+1 epochs (epoch_00.tif ... when T >= 2).",
)
@click.option(
    "--dsm", is_flag=True, help="Also write a DSM per epoch (dsm_baseline.tif, dsm_current.tif)."
)
def synth(
    outdir: Path, seed: int, scenes: int, size: int, gsd: float, crs: str, nights: int, dsm: bool
) -> None:
    """Write synthetic urban-village scenes into OUTDIR/scene_000, scene_001, ...

    Each scene has baseline.tif and current.tif (3-band JPEG GeoTIFF dated 2026-05-01 and
    +1 day per epoch), truth.geojson (change polygons: class, structure_id, area_m2) and the
    structure footprints of each epoch. All polygons are in the baseline's georeference;
    later epochs are deliberately misregistered by up to 3 pixels (see scene.json).
    """
    from detector.errors import ConfigError
    from detector.synth.scene import generate

    if scenes < 1:
        raise ConfigError(f"--scenes {scenes}: must be at least 1")
    if not 64 <= size <= 16384:
        raise ConfigError(f"--size {size}: must be between 64 and 16384 pixels")
    if not 0.005 <= gsd <= 2.0:
        raise ConfigError(f"--gsd {gsd}: must be between 0.005 and 2.0 metres per pixel")
    if not 1 <= nights <= 30:
        raise ConfigError(f"--nights {nights}: must be between 1 and 30")
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"{outdir}: exists and is not a folder; choose another OUTDIR")
    folders = generate(
        outdir, seed=seed, scenes=scenes, size=size, gsd=gsd, crs=crs, nights=nights, dsm=dsm
    )
    for folder in folders:
        click.echo(str(folder))
