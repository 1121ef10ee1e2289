"""Case exports for field teams: GeoJSON, CSV and KML in WGS84, with lon/lat and map links.

:func:`select_cases` filters the registry, :func:`export_frame` makes the export's table and
:func:`write_export` writes it atomically (``buildwatch cases export`` is a thin command over
them). CSV is written with :mod:`csv`, UTF-8 with a byte-order mark (Excel on a Chinese-locale
Windows would otherwise read it as GBK); numbers are written at their own precision (area
0.01 m², coordinates 1e-7°), never padded (:func:`cell_text`). ``evidence`` is the chip's path
relative to the export file. KML is written here (not by OGR): one style per review status
(and one for demolition alerts), and each placemark's balloon shows the case's fields and its
before/after evidence chip embedded as a JPEG data URI, so the single file works offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from pathlib import Path

from detector.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from detector.review.qgis import ALERT_STYLE, STATUS_STYLE
from detector.review.registry import read_cases_frame
from detector.review.vocab import NEW

EXPORT_COLUMNS = (
    "case_id",
    "status",
    "alert",
    "class",
    "area_m2",
    "community",
    "unit",
    "first_seen",
    "last_seen",
    "times_seen",
    "max_confidence",
    "reviewer",
    "reviewed_at",
    "demolition_due",
    "note",
    "evidence",
    "lon",
    "lat",
    "geo_uri",
    "osm_url",
    "height_change",
    "height_gain_m",
    "baseline_height_m",
    "current_height_m",
    "origin",  # detector / operator / legacy (the historical backlog)
    "source_id",  # a legacy case's ID in the layer it was imported from
)
DECIMALS = {
    "area_m2": 2,
    "lon": 7,
    "lat": 7,
    "max_confidence": 3,
    "last_confidence": 3,
    "height_gain_m": 2,
    "baseline_height_m": 2,
    "current_height_m": 2,
}
CSV_ENCODING = (
    "utf-8-sig"  # with a BOM: Excel on a Chinese-locale Windows would read plain UTF-8 as GBK
)
KML_CHIP_WIDTH = 400
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


def select_cases(
    registry: Path,
    status: tuple[str, ...] = (),
    community: str | None = None,
    since: str | None = None,
):
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


def cell_text(value, name: str = "") -> str:
    """A value as text: empty for NULL, numbers at their column's precision without padding."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        text = f"{value:.{DECIMALS.get(name, 6)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def export_frame(frame, registry: Path, out: Path | None = None):
    """Cases in WGS84 with lon/lat and map links, for field teams.

    ``evidence`` becomes the chip's path relative to the folder of ``out`` (the export file), empty
    while the chip does not exist (a case drawn today gets its chip the next night), and
    ``evidence_file`` (absolute, not exported) is kept for the KML writer to embed the chip.
    """
    out_frame = frame.to_crs("EPSG:4326").copy()
    links = [
        map_links(float(lat), float(lon)) for lat, lon in zip(out_frame["lat"], out_frame["lon"])
    ]
    out_frame["geo_uri"] = [link[0] for link in links]
    out_frame["osm_url"] = [link[1] for link in links]
    base = Path(out).resolve().parent if out is not None else Path.cwd()
    files = [
        (Path(registry).parent / e).resolve() if isinstance(e, str) and e else None
        for e in out_frame["evidence"]
    ]
    files = [f if f is not None and f.is_file() else None for f in files]  # not drawn yet: none
    out_frame["evidence"] = [
        os.path.relpath(f, base).replace(os.sep, "/") if f is not None else "" for f in files
    ]
    out_frame["evidence_file"] = [str(f) if f is not None else "" for f in files]
    return out_frame[[*EXPORT_COLUMNS, "evidence_file", "geometry"]]


def _kml_colour(rgb: tuple[int, int, int], alpha: int) -> str:
    r, g, b = rgb
    return f"{alpha:02x}{b:02x}{g:02x}{r:02x}"  # KML is aabbggrr


def _chip_data_uri(path: str) -> str | None:
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR) if path and Path(path).exists() else None
    if image is None:
        return None
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return (
        "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
        if ok
        else None
    )


def _kml_rings(geometry) -> str:
    polygons = getattr(geometry, "geoms", [geometry])
    parts = []
    for polygon in polygons:
        rings = [polygon.exterior, *polygon.interiors]
        coords = [" ".join(f"{x:.8f},{y:.8f},0" for x, y, *_ in ring.coords) for ring in rings]
        inner = "".join(
            f"<innerBoundaryIs><LinearRing><coordinates>{c}</coordinates></LinearRing></innerBoundaryIs>"
            for c in coords[1:]
        )
        parts.append(
            f"<Polygon><outerBoundaryIs><LinearRing><coordinates>{coords[0]}</coordinates></LinearRing>"
            f"</outerBoundaryIs>{inner}</Polygon>"
        )
    return parts[0] if len(parts) == 1 else "<MultiGeometry>" + "".join(parts) + "</MultiGeometry>"


def kml_document(frame) -> str:
    """The export as one KML document: a style per status and for alerts, chips embedded in the balloons."""
    esc = html.escape
    styles = {**{status: style for status, style in STATUS_STYLE.items()}, "alert": ALERT_STYLE}
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<kml xmlns="http://www.opengis.net/kml/2.2"><Document>',
        "<name>buildwatch cases</name>",
    ]
    for key, (_label, rgb) in styles.items():
        width = 4 if key == "alert" else 2
        parts.append(
            f'<Style id="status_{key}"><LineStyle><color>{_kml_colour(rgb, 255)}</color><width>{width}</width>'
            f"</LineStyle><PolyStyle><color>{_kml_colour(rgb, 80)}</color></PolyStyle></Style>"
        )
    for record, geometry in zip(frame.drop(columns="geometry").to_dict("records"), frame.geometry):
        alert = cell_text(record.get("alert"))
        style = (
            "alert" if alert else (record["status"] if record["status"] in STATUS_STYLE else NEW)
        )
        rows = "".join(
            f"<tr><td>{esc(name)}</td><td>{esc(cell_text(record[name], name))}</td></tr>"
            for name in EXPORT_COLUMNS
            if name not in ("geo_uri", "osm_url", "evidence") and cell_text(record[name])
        )
        uri = _chip_data_uri(record["evidence_file"])
        image = f'<img src="{uri}" width="{KML_CHIP_WIDTH}"/><br/>' if uri else ""
        link = f'<a href="{esc(record["osm_url"])}">map</a> · <a href="{esc(record["geo_uri"])}">navigate</a>'
        label = STATUS_STYLE.get(record["status"], (record["status"],))[0]
        heading = f"<b>{esc(record['case_id'])}</b> · {esc(label)}"
        alert_line = f'<br/><b style="color:#c000c0">{esc(alert)}</b>' if alert else ""
        description = f"{heading}{alert_line}<br/>{image}<table>{rows}</table>{link}"
        data = "".join(
            f'<Data name="{name}"><value>{esc(cell_text(record[name], name))}</value></Data>'
            for name in EXPORT_COLUMNS
        )
        parts.append(
            f"<Placemark><name>{esc(record['case_id'])}</name>"
            f"<description><![CDATA[{description}]]></description><styleUrl>#status_{style}</styleUrl>"
            f"<ExtendedData>{data}</ExtendedData>{_kml_rings(geometry)}</Placemark>"
        )
    parts.append("</Document></kml>")
    return "\n".join(parts)


def write_export(frame, out: Path, fmt: str) -> Path:
    """Write the export atomically (temp file in the same folder + rename)."""
    out = Path(out)
    if fmt == "kml":
        return atomic_write_text(out, kml_document(frame))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow([*EXPORT_COLUMNS, "wkt"])
        for record, geometry in zip(
            frame.drop(columns="geometry").to_dict("records"), frame.geometry
        ):
            writer.writerow([cell_text(record[c], c) for c in EXPORT_COLUMNS] + [geometry.wkt])
        return atomic_write_bytes(out, buffer.getvalue().encode(CSV_ENCODING))
    with atomic_path(out, suffix=out.suffix or f".{fmt}") as tmp_name:
        tmp_name.unlink()
        frame.drop(columns="evidence_file").to_file(tmp_name, driver=FORMATS[fmt], layer="cases")
    return out
