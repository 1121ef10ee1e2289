"""``buildwatch cases list|show|export``: read the case registry for people and field teams."""

from __future__ import annotations

from pathlib import Path

import click

from detector.errors import InputError
from detector.fileio import atomic_path
from detector.review.registry import read_cases_frame
from detector.review.vocab import REVIEW_STATUSES

REGISTRY_OPTION = click.option(
    "--registry", "registry", required=True, type=click.Path(path_type=Path),
    help="The case registry GeoPackage (cases.gpkg).",
)
LIST_COLUMNS = ("case_id", "status", "class", "area_m2", "community", "first_seen", "last_seen", "times_seen", "lat", "lon")
EXPORT_COLUMNS = (
    "case_id", "status", "class", "area_m2", "community", "unit", "first_seen", "last_seen", "times_seen",
    "max_confidence", "reviewer", "reviewed_at", "note", "evidence", "lon", "lat", "geo_uri", "osm_url",
)
FORMATS = {"geojson": "GeoJSON", "csv": "CSV", "kml": "KML"}


def map_links(lat: float, lon: float) -> tuple[str, str]:
    """A ``geo:`` URI (opens the phone's map app) and an OpenStreetMap URL for a point.

    Parameters
    ----------
    lat, lon : float
        WGS84 degrees.

    Returns
    -------
    (str, str)
    """
    return (
        f"geo:{lat:.7f},{lon:.7f}",
        f"https://www.openstreetmap.org/?mlat={lat:.7f}&mlon={lon:.7f}#map=19/{lat:.7f}/{lon:.7f}",
    )


def select_cases(registry: Path, status: tuple[str, ...] = (), community: str | None = None, since: str | None = None):
    """The registry's cases filtered by status (any of), community and first_seen >= since.

    Parameters
    ----------
    registry : Path
        The case registry.
    status : tuple of str
        Keep cases with any of these review statuses (all when empty).
    community : str, optional
        Keep cases in this community.
    since : str, optional
        Keep cases first seen on or after this ISO date.

    Returns
    -------
    geopandas.GeoDataFrame
    """
    frame = read_cases_frame(registry)
    if status:
        frame = frame[frame["status"].isin(status)]
    if community:
        frame = frame[frame["community"] == community]
    if since:
        frame = frame[frame["first_seen"] >= since]
    return frame


def _filters(func):
    func = click.option("--status", multiple=True, type=click.Choice(REVIEW_STATUSES),
                        help="Only cases with this review status (repeatable).")(func)
    func = click.option("--community", help="Only cases in this community.")(func)
    func = click.option("--since", help="Only cases first seen on or after this date (YYYY-MM-DD).")(func)
    return func


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 1000 and value != int(value) else f"{value:.1f}"
    return str(value)


@click.group("cases")
def cases() -> None:
    """Enforcement cases across nights (the registry that QGIS reviewers edit)."""


@cases.command("list")
@REGISTRY_OPTION
@_filters
def list_cases(registry: Path, status, community, since) -> None:
    """One line per case."""
    frame = select_cases(registry, status, community, since)
    rows = [list(LIST_COLUMNS)]
    for record in frame.drop(columns="geometry").to_dict("records"):
        row = [_cell(record[c]) for c in LIST_COLUMNS]
        row[3] = f"{float(record['area_m2'] or 0):.1f}"
        row[8], row[9] = f"{record['lat']:.6f}", f"{record['lon']:.6f}"
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    click.echo(f"{len(frame)} case(s)")


@cases.command("show")
@REGISTRY_OPTION
@click.argument("case_id")
def show_case(registry: Path, case_id: str) -> None:
    """All fields of one case, with map links."""
    frame = select_cases(registry)
    match = frame[frame["case_id"] == case_id]
    if match.empty:
        raise InputError(f"{registry}: no case '{case_id}'; 'buildwatch cases list --registry {registry}' lists them")
    record = match.iloc[0]
    for name in frame.columns:
        if name == "geometry":
            continue
        value = f"{record[name]:.7f}" if name in ("lon", "lat") else _cell(record[name])
        click.echo(f"{name:16s} {value}")
    geo_uri, osm_url = map_links(float(record["lat"]), float(record["lon"]))
    click.echo(f"{'geometry':16s} {record.geometry.wkt}")
    click.echo(f"{'evidence_file':16s} {Path(registry).parent / str(record['evidence'])}")
    click.echo(f"{'geo_uri':16s} {geo_uri}")
    click.echo(f"{'osm_url':16s} {osm_url}")


def export_frame(frame, registry: Path):
    """Cases in WGS84 with lon/lat, map links and an absolute evidence path, for field teams."""
    out = frame.to_crs("EPSG:4326").copy()
    links = [map_links(float(lat), float(lon)) for lat, lon in zip(out["lat"], out["lon"])]
    out["geo_uri"] = [link[0] for link in links]
    out["osm_url"] = [link[1] for link in links]
    out["evidence"] = [str((Path(registry).parent / e).resolve()) if isinstance(e, str) else "" for e in out["evidence"]]
    return out[[*EXPORT_COLUMNS, "geometry"]]


def write_export(frame, out: Path, fmt: str) -> Path:
    """Write the export atomically (temp file in the same folder + rename)."""
    import csv

    out = Path(out)
    with atomic_path(out, suffix=out.suffix or f".{fmt}") as tmp_name:
        if fmt == "csv":
            with open(tmp_name, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow([*EXPORT_COLUMNS, "wkt"])
                for record, geometry in zip(frame.drop(columns="geometry").to_dict("records"), frame.geometry):
                    writer.writerow([_cell(record[c]) if c not in ("lon", "lat") else f"{record[c]:.7f}"
                                     for c in EXPORT_COLUMNS] + [geometry.wkt])
        else:
            tmp_name.unlink()
            options = {"dataset_options": {"NameField": "case_id", "DescriptionField": "osm_url"}} if fmt == "kml" else {}
            frame.to_file(tmp_name, driver=FORMATS[fmt], layer="cases", **options)
    return out


@cases.command("export")
@REGISTRY_OPTION
@_filters
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default=None,
              help="Output format (default: from the --out extension).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output file.")
def export_cases(registry: Path, status, community, since, fmt, out: Path) -> None:
    """Export cases for field teams (GeoJSON / CSV / KML, WGS84, with lon/lat and map links)."""
    if fmt is None:
        fmt = {".geojson": "geojson", ".json": "geojson", ".csv": "csv", ".kml": "kml"}.get(out.suffix.lower())
        if fmt is None:
            raise InputError(f"{out}: cannot tell the format from the extension; use .geojson/.csv/.kml or --format")
    frame = select_cases(registry, status, community, since)
    write_export(export_frame(frame, registry), out, fmt)
    click.echo(f"{len(frame)} case(s) -> {out}")
