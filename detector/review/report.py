"""The nightly report for the team leader: ``report.html`` (one self-contained file) and ``report.csv``.

Per community ("zero increment" is the headline): cases new tonight (opened by the detector),
confirmed illegal, open backlog (:data:`~detector.review.vocab.OPEN_STATUSES`, plus any case with
a demolition alert), the age in days of the oldest open case, the demolition alerts, and the
historical backlog apart: ``legacy`` cases (``buildwatch cases import``) not cleared yet and
cleared (:data:`~detector.review.vocab.CLEARED_STATUSES`). The HTML adds a
summary whose counts add up (new tonight + earlier cases seen tonight + earlier cases not seen
tonight = cases in the registry, on a rerun too), what needs attention (one row per case:
demolition alerts, open cases not seen tonight, cases whose detected class changed tonight), the
demolitions ready to verify (covered tonight, not seen), a map of the cases over the
current orthomosaic with its legend, the open backlog as a list (oldest first) and before/after
thumbnails of tonight's new cases, all inline (base64 JPEG; no external URL). Where the cases
carry a height change (runs with a DSM pair), the backlog and the captions say it in words
("new storey, +3.1 m"). ``report.csv`` is
UTF-8 with a byte-order mark, so Excel in any locale reads community names correctly.
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

import numpy as np

from detector.errors import InputError
from detector.fileio import atomic_write_bytes, atomic_write_text
from detector.geo.crs import unit_lengths_m
from detector.geo.grid import map_to_pixel
from detector.review.evidence import draw_outline, read_rgb
from detector.review.exports import CSV_ENCODING
from detector.review.qgis import ALERT_STYLE, STATUS_STYLE
from detector.review.registry import RegistryUpdate, mosaic_footprint, read_cases_frame
from detector.review.vocab import (
    CLEARED_STATUSES,
    CONFIRMED_ILLEGAL,
    DEMOLISHED,
    DEMOLITION_ORDERED,
    OPEN_STATUSES,
    ORIGIN_DETECTOR,
    ORIGIN_LEGACY,
)

log = logging.getLogger(__name__)

NO_COMMUNITY = "(outside known communities)"
MAP_MAX_PX = 900
CSV_COLUMNS = (
    "night",
    "community",
    "unit",
    "new_tonight",
    "confirmed_illegal",
    "open_backlog",
    "oldest_open_days",
    "alerts",
    "legacy_backlog",
    "legacy_cleared",
)
ATTENTION_ROWS = 50


@dataclass
class CommunityRow:
    """One line of the per-community table."""

    community: str
    unit: str
    new_tonight: int
    confirmed_illegal: int
    open_backlog: int
    oldest_open_days: int | None
    alerts: int = 0
    legacy_backlog: int = 0  # imported legacy cases not cleared yet (CLEARED_STATUSES)
    legacy_cleared: int = 0


def _has_alert(row) -> bool:
    value = getattr(row, "alert", None)
    return isinstance(value, str) and value != ""


def is_legacy(row) -> bool:
    """Imported by ``buildwatch cases import``: the historical backlog, counted apart."""
    return getattr(row, "origin", None) == ORIGIN_LEGACY


def is_new_tonight(row, night_iso: str) -> bool:
    """Opened by the detector this night (a drawn or imported case never is)."""
    origin = getattr(row, "origin", None)
    detector = not isinstance(origin, str) or origin in ("", ORIGIN_DETECTOR)
    return row.first_seen == night_iso and detector


def is_open(row) -> bool:
    """Needs action: an open status, or a demolition alert (the structure is still standing).

    A legacy case is counted in the legacy backlog instead, unless it has an alert.
    """
    if _has_alert(row):
        return True
    return row.status in OPEN_STATUSES and not is_legacy(row)


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
        community = (
            row.community if isinstance(row.community, str) and row.community else NO_COMMUNITY
        )
        groups.setdefault(community, []).append(row)
    table = [_community_row(name, rows, night, night_iso) for name, rows in sorted(groups.items())]
    if table:
        table.append(
            _community_row(
                "all communities", [r for rows in groups.values() for r in rows], night, night_iso
            )
        )
    return table


def _age_days(row, night: date) -> int | None:
    if not isinstance(row.first_seen, str) or not row.first_seen:
        return None
    return (night - date.fromisoformat(row.first_seen[:10])).days


def _community_row(name, rows, night, night_iso) -> CommunityRow:
    units = sorted({r.unit for r in rows if isinstance(r.unit, str) and r.unit})
    open_ages = [
        age for age in (_age_days(r, night) for r in rows if is_open(r)) if age is not None
    ]
    return CommunityRow(
        community=name,
        unit=", ".join(units),
        new_tonight=sum(1 for r in rows if is_new_tonight(r, night_iso)),
        confirmed_illegal=sum(
            1 for r in rows if r.status == CONFIRMED_ILLEGAL and not is_legacy(r)
        ),
        open_backlog=sum(1 for r in rows if is_open(r)),
        oldest_open_days=max(open_ages) if open_ages else None,
        alerts=sum(1 for r in rows if _has_alert(r)),
        legacy_backlog=sum(1 for r in rows if is_legacy(r) and r.status not in CLEARED_STATUSES),
        legacy_cleared=sum(1 for r in rows if is_legacy(r) and r.status in CLEARED_STATUSES),
    )


def night_counts(cases, night: date) -> dict[str, int]:
    """Tonight's partition of the registry: the three parts add up to the number of cases.

    ``new_tonight`` (opened by the detector this night), ``seen_again`` (first seen earlier, seen this
    night), ``not_seen`` (first seen earlier, not seen this night); computed from the registry,
    so a rerun of the same night gives the same figures.

    Parameters
    ----------
    cases : pandas.DataFrame
    night : datetime.date

    Returns
    -------
    dict
    """
    night_iso = night.isoformat()
    counts = {"new_tonight": 0, "seen_again": 0, "not_seen": 0}
    for row in cases.itertuples(index=False):
        if is_new_tonight(row, night_iso):
            counts["new_tonight"] += 1
        elif row.last_seen == night_iso:
            counts["seen_again"] += 1
        else:
            counts["not_seen"] += 1
    counts["total"] = len(cases)
    return counts


# --------------------------------------------------------------------------- map image


def map_bounds(cases, crs, mosaic=None) -> tuple[float, float, float, float]:
    """The map's extent: the cases with a margin (10 %, at least 30 m), cut to the mosaic's extent
    (``mosaic``, a polygon in ``crs``) so no paper margin shows where there is no imagery; cases
    outside the mosaic stay in the map.
    """
    minx, miny, maxx, maxy = cases.total_bounds
    metres = min(
        unit_lengths_m(crs, (minx + maxx) / 2, (miny + maxy) / 2)
    )  # ground metres per CRS unit
    pad = max((maxx - minx) * 0.1, (maxy - miny) * 0.1, 30.0 / metres)
    left, bottom, right, top = minx - pad, miny - pad, maxx + pad, maxy + pad
    if mosaic is not None and not mosaic.is_empty:
        m_left, m_bottom, m_right, m_top = mosaic.bounds
        left, bottom = min(max(left, m_left), minx), min(max(bottom, m_bottom), miny)
        right, top = max(min(right, m_right), maxx), max(min(top, m_top), maxy)
    return left, bottom, right, top


def render_map(cases, crs, current_path: Path | None, night: date) -> np.ndarray:
    """A BGR map image: current orthomosaic (when readable) with every case outlined in its status colour.

    Tonight's new cases get a numbered marker (their order in the thumbnail list).
    """
    import cv2
    from rasterio.transform import from_bounds

    mosaic = mosaic_footprint(current_path, crs) if current_path is not None else None
    bounds = map_bounds(cases, crs, mosaic)
    left, bottom, right, top = bounds
    aspect = (right - left) / max(top - bottom, 1e-12)
    east_m, north_m = unit_lengths_m(crs, (left + right) / 2, (bottom + top) / 2)
    aspect *= east_m / north_m  # on the ground (degrees of longitude are shorter)
    width = MAP_MAX_PX if aspect >= 1 else max(int(MAP_MAX_PX * aspect), 50)
    height = max(int(width / aspect), 50) if aspect >= 1 else MAP_MAX_PX
    background = np.full((height, width, 3), 235, dtype=np.uint8)
    if current_path is not None:
        try:
            background = np.ascontiguousarray(
                read_rgb(current_path, crs, bounds, width, height)[:, :, ::-1]
            )
            background[background.max(axis=2) == 0] = 235  # outside the mosaic: paper, not black
        except InputError as exc:
            log.warning("report map without imagery: %s", exc)
    night_iso = night.isoformat()
    new_number = 0
    for row in cases.itertuples(index=False):
        rgb = (
            ALERT_STYLE[1]
            if _has_alert(row)
            else STATUS_STYLE.get(row.status, ("", (255, 255, 0)))[1]
        )
        colour = (rgb[2], rgb[1], rgb[0])
        draw_outline(background, row.geometry, bounds, colour, thickness=2)
        point = row.geometry.representative_point()
        rows, cols = map_to_pixel(from_bounds(*bounds, width, height), [point.x], [point.y])
        col, r = int(cols[0]), int(rows[0])
        cv2.circle(background, (col, r), 4, colour, -1, cv2.LINE_AA)
        if is_new_tonight(row, night_iso):
            new_number += 1
            for thickness, text_colour in ((3, (255, 255, 255)), (1, (0, 0, 0))):
                cv2.putText(
                    background,
                    str(new_number),
                    (col + 6, r - 6),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.5,
                    text_colour,
                    thickness,
                    cv2.LINE_AA,
                )
    return background


def _jpeg_data_uri(image_bgr: np.ndarray, quality: int = 82) -> str:
    """Imagery inline as JPEG: the report stays small enough to mail every night."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise RuntimeError("could not encode a report image")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


THUMB_SCALE = (
    0.75  # evidence chips at 3/4 size: two panels 387 px wide, three (with a height panel) 582 px
)


def _file_data_uri(path: Path) -> tuple[str | None, int]:
    """An image file as a JPEG data URI and the width to show it at (None, 0 when unreadable)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.exists() else None
    return (
        (None, 0) if image is None else (_jpeg_data_uri(image), round(image.shape[1] * THUMB_SCALE))
    )


# --------------------------------------------------------------------------- writing


def write_report(
    registry: Path,
    out_dir: Path,
    *,
    night: date,
    run_id: str = "",
    current_path: Path | None = None,
    update: RegistryUpdate | None = None,
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
    cases = read_cases_frame(registry).rename(
        columns={"class": "case_class"}
    )  # 'class' is no tuple field name
    table = community_table(cases, night)

    csv_path = out_dir / "report.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in table:
        writer.writerow(
            [
                night.isoformat(),
                row.community,
                row.unit,
                row.new_tonight,
                row.confirmed_illegal,
                row.open_backlog,
                "" if row.oldest_open_days is None else row.oldest_open_days,
                row.alerts,
                row.legacy_backlog,
                row.legacy_cleared,
            ]
        )
    atomic_write_bytes(csv_path, buffer.getvalue().encode(CSV_ENCODING))

    html_path = out_dir / "report.html"
    atomic_write_text(
        html_path, _render_html(cases, table, registry, night, run_id, current_path, update)
    )
    return html_path, csv_path


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text(value, default: str = "–") -> str:
    return value if isinstance(value, str) and value else default


def legend_entries(cases) -> list[tuple[str, str, int]]:
    """(label, colour hex, count) of the map's legend: the alert colour, then every status in lifecycle order.

    A case is counted once, under the colour it is drawn in (an alert's magenta over its status):
    the counts add up to the number of cases.
    """
    flagged = [_has_alert(row) for row in cases.itertuples(index=False)] if len(cases) else []
    alerts = sum(flagged)
    counts = (
        cases["status"][[not flag for flag in flagged]].value_counts().to_dict()
        if len(cases)
        else {}
    )
    entries = [(ALERT_STYLE[0], _hex(ALERT_STYLE[1]), alerts)]
    entries += [
        (label, _hex(rgb), int(counts.get(status, 0)))
        for status, (label, rgb) in STATUS_STYLE.items()
    ]
    return entries


CASE_TABLE_COLUMNS = ("case", "status", "class", "community", "area", "first", "last", "age")


def _height_text(row) -> str:
    return _text(getattr(row, "height_change", None), "")


def _case_table(esc, rows, night, columns=CASE_TABLE_COLUMNS):
    heads = {
        "case": "Case",
        "status": "Status",
        "class": "Class",
        "community": "Community",
        "area": "Area (m²)",
        "first": "First seen",
        "last": "Last seen",
        "age": "Open (days)",
        "why": "Why",
        "height": "Height change",
    }
    parts = ["<table><tr>" + "".join(f"<th>{heads[c]}</th>" for c in columns) + "</tr>"]
    for row, why in rows:
        cells = {
            "case": f"<b>{esc(row.case_id)}</b>",
            "status": esc(STATUS_STYLE.get(row.status, (row.status,))[0]),
            "class": esc(_text(getattr(row, "case_class", None))),
            "community": esc(_text(row.community)),
            "area": f"{float(row.area_m2 or 0):.0f}",
            "first": esc(_text(row.first_seen)),
            "last": esc(_text(row.last_seen)),
            "age": "–" if _age_days(row, night) is None else str(_age_days(row, night)),
            "why": esc(why),
            "height": esc(_height_text(row) or "–"),
        }
        parts.append("<tr>" + "".join(f"<td>{cells[c]}</td>" for c in columns) + "</tr>")
    parts.append("</table>")
    return parts


def ready_to_verify(cases, night: date, mosaic) -> list:
    """Cases ``demolished`` or ``demolition_ordered`` that tonight's mosaic covers and does not see.

    The imagery shows the ground clear: an inspector can verify the demolition (set
    ``demolition_verified``). Oldest first. Empty without a mosaic footprint (nothing was looked at).

    Parameters
    ----------
    cases : geopandas.GeoDataFrame
    night : datetime.date
    mosaic : shapely geometry or None
        Tonight's mosaic extent in the cases' CRS (:func:`detector.review.registry.mosaic_footprint`).

    Returns
    -------
    list
        Case rows.
    """
    if mosaic is None or not len(cases):
        return []
    night_iso = night.isoformat()
    rows = [
        row
        for row in cases.itertuples(index=False)
        if row.status in (DEMOLISHED, DEMOLITION_ORDERED)
        and not _has_alert(row)
        and row.last_seen != night_iso
        and mosaic.covers(row.geometry)
    ]
    return sorted(rows, key=lambda r: (-(_age_days(r, night) or 0), r.case_id))


def attention_rows(
    cases, night: date, update: RegistryUpdate | None = None, ready=()
) -> list[tuple[object, str]]:
    """What needs attention tonight: (case row, why), one row per case, demolition alerts first.

    Demolition alerts; cases whose detected class changed tonight (e.g. a construction site that
    became a building; from ``update``); open cases not seen tonight (the structure may have been
    removed, or the survey missed it), except those listed as ready to verify (``ready``). A case
    with several reasons is listed once with its reasons joined by "; ".
    """
    night_iso = night.isoformat()
    by_id = {row.case_id: row for row in cases.itertuples(index=False)}
    ready_ids = {row.case_id for row in ready}
    reasons: dict[str, list[str]] = {}
    for row in by_id.values():
        if _has_alert(row):
            reasons.setdefault(row.case_id, []).append(row.alert)
    for case_id, old, new in update.class_changes if update is not None else []:
        if case_id in by_id:
            reasons.setdefault(case_id, []).append(
                f"detected class changed tonight: {old} -> {new}"
            )
    for row in by_id.values():
        if (
            is_open(row)
            and not _has_alert(row)
            and row.case_id not in ready_ids
            and row.last_seen != night_iso
            and not is_new_tonight(row, night_iso)
        ):
            reasons.setdefault(row.case_id, []).append(
                f"open, not seen tonight (last seen {_text(row.last_seen)})"
            )
    return [(by_id[case_id], "; ".join(why)) for case_id, why in reasons.items()]


def _render_html(cases, table, registry, night, run_id, current_path, update) -> str:
    esc = html.escape
    night_iso = night.isoformat()
    new_tonight = (
        cases[[is_new_tonight(row, night_iso) for row in cases.itertuples(index=False)]]
        if len(cases)
        else cases
    )
    counts = night_counts(cases, night)
    mosaic = None
    if current_path is not None and len(cases):
        import pyproj

        mosaic = mosaic_footprint(current_path, pyproj.CRS.from_user_input(cases.crs))
    ready = ready_to_verify(cases, night, mosaic)
    summary = [
        ("Night", night_iso),
        ("Run", run_id or "–"),
        ("New cases tonight (first seen this night)", str(counts["new_tonight"])),
        ("Earlier cases seen again tonight", str(counts["seen_again"])),
        ("Earlier cases not seen tonight", str(counts["not_seen"])),
        ("Cases in registry (= the three above)", str(counts["total"])),
        (
            "Demolition alerts (structure still standing)",
            str(
                sum(1 for row in cases.itertuples(index=False) if _has_alert(row))
                if len(cases)
                else 0
            ),
        ),
    ]
    if table and (table[-1].legacy_backlog or table[-1].legacy_cleared):
        summary.append(
            (
                "Legacy backlog: not cleared / cleared (imported, before the target)",
                f"{table[-1].legacy_backlog} / {table[-1].legacy_cleared}",
            )
        )
    if update is not None:
        permitted = len(update.permitted_ids)
        summary += [
            (
                "Sightings of false positives (suppressed)",
                str(len(update.suppressed_ids) - permitted),
            ),
            ("Sightings of permitted structures", str(permitted)),
        ]

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>buildwatch report {esc(night_iso)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tr.total{font-weight:bold;background:#f0f0f0}.zero{color:#2a7d2a}.nonzero{color:#b00020;font-weight:bold}"
        ".thumbs{display:flex;flex-wrap:wrap;gap:12px}.thumbs figure{margin:0}figcaption{font-size:.85em}"
        ".legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}"
        ".legend span{display:inline-block;width:14px;height:14px;border:2px solid;vertical-align:middle;"
        "margin-right:4px}</style>",
        "</head><body>",
        f"<h1>Illegal construction watch — night of {esc(night_iso)}</h1>",
        "<h2>Summary</h2><table>",
        *[f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary],
        "</table>",
        "<h2>Per community (zero increment)</h2>",
        "<table><tr><th>Community</th><th>Responsible unit</th><th>New tonight</th><th>Confirmed illegal</th>"
        "<th>Open backlog</th><th>Oldest open case (days)</th><th>Demolition alerts</th>"
        "<th>Legacy backlog</th><th>Legacy cleared</th></tr>",
    ]
    for row in table:
        css = " class='total'" if row.community == "all communities" else ""
        flag = "nonzero" if row.new_tonight else "zero"
        alert_flag = " class='nonzero'" if row.alerts else ""
        age = "–" if row.oldest_open_days is None else str(row.oldest_open_days)
        parts.append(
            f"<tr{css}><td>{esc(row.community)}</td><td>{esc(row.unit)}</td><td class='{flag}'>{row.new_tonight}</td>"
            f"<td>{row.confirmed_illegal}</td><td>{row.open_backlog}</td><td>{age}</td>"
            f"<td{alert_flag}>{row.alerts}</td><td>{row.legacy_backlog}</td><td>{row.legacy_cleared}</td></tr>"
        )
    parts.append("</table>")
    if not table:
        parts.append("<p>No cases in the registry.</p>")

    attention = attention_rows(cases, night, update, ready) if len(cases) else []
    parts.append(f"<h2>Needs attention ({len(attention)})</h2>")
    if attention:
        parts += _case_table(
            esc, attention[:ATTENTION_ROWS], night, ("case", "status", "community", "last", "why")
        )
        if len(attention) > ATTENTION_ROWS:
            parts.append(
                f"<p>… and {len(attention) - ATTENTION_ROWS} more (buildwatch cases list).</p>"
            )
    else:
        parts.append(
            "<p class='zero'>Nothing: no demolition alert, every open case seen tonight.</p>"
        )

    parts.append(f"<h2>Ready to verify ({len(ready)})</h2>")
    if ready:
        parts.append(
            "<p>Demolished or ordered for demolition, covered by tonight's mosaic and not seen: "
            "the ground looks clear. Check the imagery and set <i>demolition_verified</i>.</p>"
        )
        parts += _case_table(
            esc,
            [(row, "") for row in ready],
            night,
            ("case", "status", "community", "last", "age"),
        )
    else:
        parts.append("<p>No demolished case shows clear ground tonight.</p>")

    if len(cases):
        import pyproj

        crs = pyproj.CRS.from_user_input(cases.crs)
        map_uri = _jpeg_data_uri(render_map(cases, crs, current_path, night))
        parts.append(
            "<h2>Map</h2><p>Outline colour = review status (magenta = demolition alert); "
            "numbers = tonight's new cases.</p>"
        )
        parts.append(
            "<ul class='legend'>"
            + "".join(
                f"<li><span style='border-color:{colour};background:{colour}40'></span>{esc(label)} ({count})</li>"
                for label, colour, count in legend_entries(cases)
            )
            + "</ul>"
        )
        parts.append(f"<img alt='map of cases' src='{map_uri}' style='max-width:100%'>")

    backlog = (
        sorted(
            (row for row in cases.itertuples(index=False) if is_open(row)),
            key=lambda r: (-(_age_days(r, night) or 0), r.case_id),
        )
        if len(cases)
        else []
    )
    parts.append(f"<h2>Open backlog ({len(backlog)}, oldest first)</h2>")
    if backlog:
        with_height = any(_height_text(row) for row in backlog)
        columns = (
            (*CASE_TABLE_COLUMNS[:5], "height", *CASE_TABLE_COLUMNS[5:])
            if with_height
            else CASE_TABLE_COLUMNS
        )
        parts += _case_table(esc, [(row, "") for row in backlog], night, columns)
    parts.append(f"<h2>New tonight ({len(new_tonight)})</h2>")
    if len(new_tonight):
        parts.append("<div class='thumbs'>")
        for number, row in enumerate(new_tonight.itertuples(index=False), start=1):
            uri, width = (
                _file_data_uri(registry.parent / row.evidence)
                if isinstance(row.evidence, str)
                else (None, 0)
            )
            image = (
                f"<img alt='evidence {esc(row.case_id)}' src='{uri}' width='{width}'>"
                if uri
                else "<p>(no evidence chip)</p>"
            )
            caption = (
                f"{number}. <b>{esc(row.case_id)}</b> · {esc(_text(row.case_class))} · {esc(_text(row.community))} · "
                f"{float(row.area_m2 or 0):.0f} m² · "
                + (f"<b>{esc(_height_text(row))}</b> · " if _height_text(row) else "")
                + f"conf {float(row.max_confidence or 0):.2f} · {float(row.lat):.6f}, {float(row.lon):.6f}"
            )
            parts.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append("<p class='zero'>Zero increment: no new case tonight.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
