"""The nightly report for the team leader: ``report.html`` (one self-contained file) and ``report.csv``.

Per community ("zero increment" is the headline): cases new tonight, confirmed illegal,
open backlog (status new / confirmed_illegal / referred) and the age in days of the oldest
open case. The HTML adds a summary, a map image of the cases over the current orthomosaic
and before/after thumbnails of tonight's new cases, all inline (base64 JPEG; no external URL).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Optional

import numpy as np

from detector.errors import InputError
from detector.fileio import atomic_write_text
from detector.geo.crs import unit_lengths_m
from detector.geo.grid import map_to_pixel
from detector.review.evidence import draw_outline, read_rgb
from detector.review.qgis import STATUS_STYLE
from detector.review.registry import RegistryUpdate, read_cases_frame
from detector.review.vocab import CONFIRMED_ILLEGAL, OPEN_STATUSES

log = logging.getLogger(__name__)

NO_COMMUNITY = "(outside known communities)"
MAP_MAX_PX = 900
CSV_COLUMNS = ("night", "community", "unit", "new_tonight", "confirmed_illegal", "open_backlog", "oldest_open_days")


@dataclass
class CommunityRow:
    """One line of the per-community table."""

    community: str
    unit: str
    new_tonight: int
    confirmed_illegal: int
    open_backlog: int
    oldest_open_days: Optional[int]


def community_table(cases, night: date) -> list[CommunityRow]:
    """Per-community figures for one night, sorted by community, with a final "all" row.

    Parameters
    ----------
    cases : pandas.DataFrame
        The registry's cases (``status``, ``first_seen``, ``community``, ``unit``).
    night : datetime.date
        The report's night: "new tonight" is ``first_seen == night``; ages are counted to it.

    Returns
    -------
    list[CommunityRow]
    """
    night_iso = night.isoformat()
    groups: dict[str, list] = {}
    for row in cases.itertuples(index=False):
        community = row.community if isinstance(row.community, str) and row.community else NO_COMMUNITY
        groups.setdefault(community, []).append(row)
    table = [_community_row(name, rows, night, night_iso, OPEN_STATUSES) for name, rows in sorted(groups.items())]
    if table:
        table.append(_community_row("all communities", [r for rows in groups.values() for r in rows], night, night_iso, OPEN_STATUSES))
    return table


def _community_row(name, rows, night, night_iso, open_statuses) -> CommunityRow:
    units = sorted({r.unit for r in rows if isinstance(r.unit, str) and r.unit})
    open_ages = [
        (night - date.fromisoformat(r.first_seen)).days
        for r in rows
        if r.status in open_statuses and isinstance(r.first_seen, str) and r.first_seen
    ]
    return CommunityRow(
        community=name,
        unit=", ".join(units),
        new_tonight=sum(1 for r in rows if r.first_seen == night_iso),
        confirmed_illegal=sum(1 for r in rows if r.status == CONFIRMED_ILLEGAL),
        open_backlog=sum(1 for r in rows if r.status in open_statuses),
        oldest_open_days=max(open_ages) if open_ages else None,
    )


# --------------------------------------------------------------------------- map image


def _map_bounds(cases, crs) -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = cases.total_bounds
    metres = min(unit_lengths_m(crs, (minx + maxx) / 2, (miny + maxy) / 2))  # ground metres per CRS unit
    pad = max((maxx - minx) * 0.1, (maxy - miny) * 0.1, 30.0 / metres)
    return minx - pad, miny - pad, maxx + pad, maxy + pad


def render_map(cases, crs, current_path: Optional[Path], night: date) -> np.ndarray:
    """A BGR map image: current orthomosaic (when readable) with every case outlined in its status colour.

    Tonight's new cases get a numbered marker (their order in the thumbnail list).
    """
    import cv2
    from rasterio.transform import from_bounds

    bounds = _map_bounds(cases, crs)
    left, bottom, right, top = bounds
    aspect = (right - left) / max(top - bottom, 1e-12)
    east_m, north_m = unit_lengths_m(crs, (left + right) / 2, (bottom + top) / 2)
    aspect *= east_m / north_m  # on the ground (degrees of longitude are shorter)
    width = MAP_MAX_PX if aspect >= 1 else max(int(MAP_MAX_PX * aspect), 50)
    height = max(int(width / aspect), 50) if aspect >= 1 else MAP_MAX_PX
    background = np.full((height, width, 3), 235, dtype=np.uint8)
    if current_path is not None:
        try:
            background = np.ascontiguousarray(read_rgb(current_path, crs, bounds, width, height)[:, :, ::-1])
            background[background.max(axis=2) == 0] = 235  # outside the mosaic: paper, not black
        except InputError as exc:
            log.warning("report map without imagery: %s", exc)
    night_iso = night.isoformat()
    new_number = 0
    for row in cases.itertuples(index=False):
        rgb = STATUS_STYLE.get(row.status, ("", (255, 255, 0)))[1]
        colour = (rgb[2], rgb[1], rgb[0])
        draw_outline(background, row.geometry, bounds, colour, thickness=2)
        point = row.geometry.representative_point()
        rows, cols = map_to_pixel(from_bounds(*bounds, width, height), [point.x], [point.y])
        col, r = int(cols[0]), int(rows[0])
        cv2.circle(background, (col, r), 4, colour, -1, cv2.LINE_AA)
        if row.first_seen == night_iso:
            new_number += 1
            for thickness, text_colour in ((3, (255, 255, 255)), (1, (0, 0, 0))):
                cv2.putText(background, str(new_number), (col + 6, r - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            text_colour, thickness, cv2.LINE_AA)
    return background


def _jpeg_data_uri(image_bgr: np.ndarray, quality: int = 82) -> str:
    """Imagery inline as JPEG: the report stays small enough to mail every night."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise RuntimeError("could not encode a report image")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _file_data_uri(path: Path) -> Optional[str]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.exists() else None
    return None if image is None else _jpeg_data_uri(image)


# --------------------------------------------------------------------------- writing


def write_report(
    registry: Path,
    out_dir: Path,
    *,
    night: date,
    run_id: str = "",
    current_path: Optional[Path] = None,
    update: Optional[RegistryUpdate] = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.csv`` for one night from the registry.

    Parameters
    ----------
    registry : Path
        The case registry (``cases.gpkg``); evidence paths are relative to its folder.
    out_dir : Path
        Where the two files go (created if needed).
    night : datetime.date
        The night reported on.
    run_id : str
        The run's ID, shown in the summary.
    current_path : Path, optional
        The current orthomosaic, used as the map background.
    update : detector.review.registry.RegistryUpdate, optional
        Tonight's counts (opened / updated / suppressed) for the summary.

    Returns
    -------
    (Path, Path)
        The HTML and CSV paths.
    """
    registry = Path(registry)
    out_dir = Path(out_dir)
    cases = read_cases_frame(registry)
    table = community_table(cases, night)

    csv_path = out_dir / "report.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in table:
        writer.writerow([night.isoformat(), row.community, row.unit, row.new_tonight, row.confirmed_illegal,
                         row.open_backlog, "" if row.oldest_open_days is None else row.oldest_open_days])
    atomic_write_text(csv_path, buffer.getvalue())

    html_path = out_dir / "report.html"
    atomic_write_text(html_path, _render_html(cases, table, registry, night, run_id, current_path, update))
    return html_path, csv_path


def _render_html(cases, table, registry, night, run_id, current_path, update) -> str:
    esc = html.escape
    night_iso = night.isoformat()
    new_tonight = cases[cases["first_seen"] == night_iso] if len(cases) else cases
    status_counts = cases["status"].value_counts().to_dict() if len(cases) else {}
    summary = [
        ("Night", night_iso),
        ("Run", run_id or "–"),
        ("New cases tonight", str(len(new_tonight))),
    ]
    if update is not None:
        summary += [("Existing cases seen again", str(update.updated)),
                    ("Sightings of rejected cases (suppressed)", str(update.suppressed))]
    summary += [("Cases in registry", str(len(cases)))]
    summary += [(f"status: {status}", str(count)) for status, count in sorted(status_counts.items())]

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>buildwatch report {esc(night_iso)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tr.total{font-weight:bold;background:#f0f0f0}.zero{color:#2a7d2a}.nonzero{color:#b00020;font-weight:bold}"
        ".thumbs{display:flex;flex-wrap:wrap;gap:12px}.thumbs figure{margin:0}figcaption{font-size:.85em}</style>",
        "</head><body>",
        f"<h1>Illegal construction watch — night of {esc(night_iso)}</h1>",
        "<h2>Summary</h2><table>",
        *[f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary],
        "</table>",
        "<h2>Per community (zero increment)</h2>",
        "<table><tr><th>Community</th><th>Responsible unit</th><th>New tonight</th><th>Confirmed illegal</th>"
        "<th>Open backlog</th><th>Oldest open case (days)</th></tr>",
    ]
    for row in table:
        css = " class='total'" if row.community == "all communities" else ""
        flag = "nonzero" if row.new_tonight else "zero"
        age = "–" if row.oldest_open_days is None else str(row.oldest_open_days)
        parts.append(
            f"<tr{css}><td>{esc(row.community)}</td><td>{esc(row.unit)}</td><td class='{flag}'>{row.new_tonight}</td>"
            f"<td>{row.confirmed_illegal}</td><td>{row.open_backlog}</td><td>{age}</td></tr>"
        )
    parts.append("</table>")
    if not table:
        parts.append("<p>No cases in the registry.</p>")
    if len(cases):
        import pyproj

        crs = pyproj.CRS.from_user_input(cases.crs)
        map_uri = _jpeg_data_uri(render_map(cases, crs, current_path, night))
        parts.append("<h2>Map</h2><p>Outline colour = review status; numbers = tonight's new cases.</p>")
        parts.append(f"<img alt='map of cases' src='{map_uri}' style='max-width:100%'>")
    parts.append(f"<h2>New tonight ({len(new_tonight)})</h2>")
    if len(new_tonight):
        parts.append("<div class='thumbs'>")
        for number, row in enumerate(new_tonight.itertuples(index=False), start=1):
            uri = _file_data_uri(registry.parent / row.evidence) if isinstance(row.evidence, str) else None
            image = f"<img alt='evidence {esc(row.case_id)}' src='{uri}' width='388'>" if uri else "<p>(no evidence chip)</p>"
            caption = (f"{number}. <b>{esc(row.case_id)}</b> · {esc(row.community if isinstance(row.community, str) else '–')} · "
                       f"{float(row.area_m2 or 0):.0f} m² · conf {float(row.max_confidence or 0):.2f} · "
                       f"{float(row.lat):.6f}, {float(row.lon):.6f}")
            parts.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append("<p class='zero'>Zero increment: no new case tonight.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
