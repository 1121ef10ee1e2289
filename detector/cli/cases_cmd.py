"""``buildwatch cases list|show|export|import``: the case registry for people and field teams.

The exports (GeoJSON / CSV / KML for field teams) are :mod:`detector.review.exports`, the
historical backlog's import :mod:`detector.review.legacy`; these commands parse options and print.
"""

from __future__ import annotations

from pathlib import Path

import click

from detector.errors import InputError
from detector.review.exports import (
    FORMATS,
    cell_text,
    export_frame,
    map_links,
    select_cases,
    write_export,
)
from detector.review.legacy import import_legacy, read_legacy_layer
from detector.review.registry import read_history
from detector.review.vocab import REVIEW_STATUSES

REGISTRY_OPTION = click.option(
    "--registry",
    "registry",
    required=True,
    type=click.Path(path_type=Path),
    help="The case registry GeoPackage (cases.gpkg).",
)
LIST_COLUMNS = (
    "case_id",
    "status",
    "class",
    "area_m2",
    "community",
    "first_seen",
    "last_seen",
    "times_seen",
    "lat",
    "lon",
    "height",
)  # height: the DSM height gain ("+3.1 m"), blank where none was measured


def _filters(func):
    func = click.option(
        "--status",
        multiple=True,
        type=click.Choice(REVIEW_STATUSES),
        help="Only cases with this review status (repeatable).",
    )(func)
    func = click.option("--community", help="Only cases in this community.")(func)
    func = click.option(
        "--since", help="Only cases first seen on or after this date (YYYY-MM-DD)."
    )(func)
    return func


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
        gain = cell_text(record.get("height_gain_m"))
        cells = {
            **record,
            "area_m2": f"{float(record['area_m2'] or 0):.1f}",
            "lat": f"{record['lat']:.6f}",
            "lon": f"{record['lon']:.6f}",
            "height": f"{float(record['height_gain_m']):+.1f} m" if gain else "",
        }
        rows.append([cell_text(cells[c], c) for c in LIST_COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    click.echo(f"{len(frame)} case(s)")


@cases.command("show")
@REGISTRY_OPTION
@click.argument("case_id")
@click.option(
    "--all-history",
    is_flag=True,
    help="Also list the detector's own updates (detector_geometry/class/alert), one per night.",
)
def show_case(registry: Path, case_id: str, all_history: bool) -> None:
    """All fields of one case, with map links and its history (people's changes; the detector's counted)."""
    frame = select_cases(registry)
    match = frame[frame["case_id"] == case_id]
    if match.empty:
        raise InputError(
            f"{registry}: no case '{case_id}'; 'buildwatch cases list --registry {registry}' lists them"
        )
    record = match.iloc[0]
    for name in frame.columns:
        if name == "geometry":
            continue
        value = f"{record[name]:.7f}" if name in ("lon", "lat") else cell_text(record[name])
        click.echo(f"{name:18s} {value}")
    geo_uri, osm_url = map_links(float(record["lat"]), float(record["lon"]))
    click.echo(f"{'geometry':18s} {record.geometry.wkt}")
    click.echo(f"{'evidence_file':18s} {Path(registry).parent / str(record['evidence'])}")
    click.echo(f"{'geo_uri':18s} {geo_uri}")
    click.echo(f"{'osm_url':18s} {osm_url}")
    entries = read_history(registry, case_id)
    detector = [e for e in entries if e["change"].startswith("detector_")]
    for entry in entries:
        change = entry["change"]
        if entry in detector and not all_history:
            continue
        detail = (
            f"{entry['old_status'] or ''} -> {entry['new_status']}" if "status" in change else ""
        )
        if change == "created":
            detail = entry["new_status"] or ""
        if "alert" in change:
            detail = (detail + " " if detail else "") + f"alert: {entry['new_alert'] or 'cleared'}"
        click.echo(
            f"{'history':18s} {entry['changed_at']}  {entry['changed_by']}  {change}  {detail}".rstrip()
        )
    if detector and not all_history:
        click.echo(f"{'history':18s} {len(detector)} detector update(s) not listed (--all-history)")


@cases.command("export")
@REGISTRY_OPTION
@_filters
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(FORMATS)),
    default=None,
    help="Output format (default: from the --out extension).",
)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output file.")
def export_cases(registry: Path, status, community, since, fmt, out: Path) -> None:
    """Export cases for field teams (GeoJSON / CSV / KML, WGS84, with lon/lat and map links)."""
    if fmt is None:
        fmt = {".geojson": "geojson", ".json": "geojson", ".csv": "csv", ".kml": "kml"}.get(
            out.suffix.lower()
        )
        if fmt is None:
            raise InputError(
                f"{out}: cannot tell the format from the extension; use .geojson/.csv/.kml or --format"
            )
    frame = select_cases(registry, status, community, since)
    write_export(export_frame(frame, registry, out), out, fmt)
    click.echo(f"{len(frame)} case(s) -> {out}")


@cases.command("import")
@REGISTRY_OPTION
@click.argument("layer_path", metavar="LAYER", type=click.Path(path_type=Path))
@click.option("--layer", "layer_name", help="The layer's name, when the file has several.")
@click.option("--id-field", help="Field with each outline's own ID (kept as source_id).")
@click.option("--note-field", help="Field with a note for each case.")
@click.option(
    "--community-field", help="Field with the community (else the next night's boundaries)."
)
def import_cases(
    registry: Path, layer_path: Path, layer_name, id_field, note_field, community_field
) -> None:
    """Register the historical backlog: outlines of buildings illegal before the zero-increment target.

    Every outline becomes a legacy case (confirmed illegal; same lifecycle and demolition
    checks as any case; never "new tonight"), counted per community in the report's legacy
    backlog. Everything is checked before anything is written.
    """
    frame = read_legacy_layer(layer_path, layer_name, id_field, note_field, community_field)
    result = import_legacy(
        registry,
        frame,
        id_field=id_field,
        note_field=note_field,
        community_field=community_field,
        source=layer_path,
    )
    first, last = result.case_ids[0], result.case_ids[-1]
    click.echo(
        f"{len(result.case_ids)} legacy case(s) {first} .. {last} (first seen {result.night}) -> {registry}"
    )
