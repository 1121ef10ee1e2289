"""The case registry: one GeoPackage (``cases.gpkg``) of cases that lives across nights.

Every nightly run calls :func:`update_registry` with its candidates. In ONE SQLite
transaction it

* matches each candidate to an existing case in map coordinates (IoU against the case's
  geometry or the geometry the run last detected, ``>= CasesConfig.match_iou``) and
  updates the run-owned fields (last_seen, times_seen, max_confidence, geometry unless an
  operator edited it, class unless an operator corrected it: ``class_edited``). A case drawn by
  an operator or imported as ``legacy`` is matched like any other and never counted as opened;
* opens a new case, with a stable ID ``{prefix}{YYYYMMDD}-{seq:04d}``, for every
  candidate that matches nothing;
* never touches the review fields (status, demolition_due, reviewer, reviewed_at, note) and
  never deletes a case (the registry refuses deletes: :mod:`detector.review.triggers`). A
  candidate on a case rejected as ``false_positive`` (or ``permitted``) is counted as
  *suppressed*: it does not reopen the case or open a new one;
* verifies demolitions: a case ``demolished`` / ``demolition_verified``, or
  ``demolition_ordered`` past its ``demolition_due`` date, that is seen again gets an
  ``alert`` (kept until a night whose mosaic covers it does not see it, or its status changes);
* recomputes ``area_m2``, ``lon``, ``lat`` of every case from its stored geometry (an operator's
  corrected outline included);
* carries the height change of a run with a DSM pair: ``height_gain_m``, ``baseline_height_m``,
  ``current_height_m`` of the case's strongest candidate that has them, and ``height_change``
  (the gain in words, :func:`detector.review.vocab.height_phrase`). A night without DSMs keeps the
  last measured values.

It returns what changed (:class:`RegistryUpdate`) and writes nothing else: the evidence
chips, the QGIS project and the nightly report are written by the caller
(:func:`detector.review.nightly.update_cases`). Storage (GeoPackage 1.2 on plain
:mod:`sqlite3`, WAL mode so a QGIS reviewer can save edits while a run is writing) is
:mod:`detector.review.gpkg`; the column and status vocabulary is :mod:`detector.review.vocab`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from detector.clock import utc_now
from detector.errors import InputError
from detector.geo.crs import area_m2, lonlat_of
from detector.review import gpkg
from detector.review.boundaries import load_boundaries
from detector.review.matching import Sighting, match_candidates, reading_order
from detector.review.qgis import cases_layer_qml
from detector.review.triggers import ensure_schema
from detector.review.vocab import (
    CASE_COLUMNS,
    CASES_STYLE_DESCRIPTION,
    CASES_STYLE_NAME,
    CASES_TABLE,
    DEMOLITION_ORDERED,
    GEOMETRY_COLUMN,
    HEIGHT_COLUMNS,
    HISTORY_TABLE,
    INTERNAL_COLUMNS,
    MUST_BE_GONE_STATUSES,
    NEW,
    NIGHTS_TABLE,
    ORIGIN_DETECTOR,
    PERMITTED,
    REQUIRED_CANDIDATE_COLUMNS,
    RUN_EDITOR_PREFIX,
    SIGHTINGS_TABLE,
    SUPPRESSING_STATUSES,
    height_phrase,
)
from detector.styles import create_layer_styles_table, insert_default_style

if TYPE_CHECKING:  # pragma: no cover
    import geopandas

    from detector.config import CasesConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- results


@dataclass
class RegistryUpdate:
    """What one night did to the registry: counts and the case IDs opened, updated, suppressed, alerted.

    ``suppressed_ids`` are cases rejected as false positives or permitted that were seen again
    (``permitted_ids`` is the permitted part of them); ``alert_ids`` every case with a
    demolition alert after tonight; ``class_changes`` (case ID, old class, new class) for cases
    whose detected class changed tonight (e.g. a construction site that became a building).
    """

    registry: Path
    night: date
    run_id: str
    opened: int = 0
    updated: int = 0
    suppressed: int = 0
    total: int = 0
    opened_ids: list[str] = field(default_factory=list)
    updated_ids: list[str] = field(default_factory=list)
    suppressed_ids: list[str] = field(default_factory=list)
    permitted_ids: list[str] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)
    class_changes: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class CaseRow:
    """One case as stored, read inside the night's transaction."""

    fid: int
    case_id: str
    status: str
    geometry: BaseGeometry
    run_geom_hash: str | None
    detected: BaseGeometry | None
    first_seen: str | None
    last_seen: str | None
    times_seen: int
    max_confidence: float | None
    community: str | None
    evidence: str | None
    alert: str | None = None
    demolition_due: str | None = None
    area_m2: float | None = None
    lon: float | None = None
    lat: float | None = None
    case_class: str | None = None
    origin: str | None = None
    evidence_hash: str | None = None
    height_gain_m: float | None = None
    baseline_height_m: float | None = None
    current_height_m: float | None = None
    height_change: str | None = None
    class_edited: bool = False

    @property
    def operator_edited(self) -> bool:
        """True when the stored geometry is not the one the run last wrote (or an operator drew the case)."""
        return self.run_geom_hash is None or geometry_hash(self.geometry) != self.run_geom_hash

    def must_be_gone(self, night_iso: str) -> bool:
        """True when the structure should no longer stand on ``night_iso`` (demolition verification)."""
        if self.status in MUST_BE_GONE_STATUSES:
            return True
        return (
            self.status == DEMOLITION_ORDERED
            and bool(self.demolition_due)
            and str(self.demolition_due)[:10] < night_iso
        )

    @property
    def evidence_key(self) -> str:
        """What the evidence chip shows: geometry and class (a chip is redrawn when they change)."""
        return geometry_hash(self.geometry)[:12] + ":" + str(self.case_class or "")


def geometry_hash(geometry: BaseGeometry) -> str:
    """A short, stable hash of a geometry's 2D little-endian WKB (detects operator edits).

    Parameters
    ----------
    geometry : shapely geometry

    Returns
    -------
    str
        20 hex digits.
    """
    wkb = shapely.to_wkb(geometry, byte_order=1, output_dimension=2)
    return hashlib.sha256(wkb).hexdigest()[:20]


# --------------------------------------------------------------------------- creating and opening a registry


def create_registry(path: Path, crs, district_prefix: str = "") -> None:
    """Create an empty registry GeoPackage atomically (temp file in the same folder + rename).

    Parameters
    ----------
    path : Path
        Where ``cases.gpkg`` goes; its folder is created.
    crs : pyproj.CRS
        The registry's CRS (the baseline CRS of the first night); later nights are reprojected.
    district_prefix : str
        Case ID prefix (for cases an operator draws in QGIS).
    """
    gpkg.create_geopackage(Path(path), lambda conn: _create_schema(conn, crs, district_prefix))


def _create_schema(conn: sqlite3.Connection, crs, district_prefix: str = "") -> None:
    """The cases layer, its bookkeeping tables and its default QGIS style (in a private temp file)."""
    srs_id = gpkg.create_core_tables(conn, crs)
    gpkg.create_feature_table(
        conn,
        CASES_TABLE,
        GEOMETRY_COLUMN,
        "POLYGON",
        CASE_COLUMNS,
        srs_id,
        "buildwatch enforcement cases (review in QGIS)",
    )
    conn.executescript(
        f"""
        CREATE TABLE "{SIGHTINGS_TABLE}" (
            fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, case_id TEXT NOT NULL, night DATE NOT NULL,
            run_id TEXT, candidate_id TEXT, confidence REAL, iou REAL, outcome TEXT,
            UNIQUE (case_id, night, candidate_id));
        CREATE TABLE "{NIGHTS_TABLE}" (
            fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, night DATE NOT NULL, run_id TEXT NOT NULL,
            candidates INTEGER, opened INTEGER, updated INTEGER, suppressed INTEGER, total INTEGER,
            baseline TEXT, current TEXT, finished_at DATETIME);
        """
    )
    gpkg.register_attributes_table(conn, SIGHTINGS_TABLE, "every night a case was seen")
    gpkg.register_attributes_table(conn, NIGHTS_TABLE, "one row per nightly registry update")
    create_layer_styles_table(conn)
    _refresh_schema(conn, crs, district_prefix)


def _refresh_schema(conn: sqlite3.Connection, crs, district_prefix: str) -> None:
    """Columns, history table and triggers of this version; the cases layer's default style."""
    ensure_schema(conn, district_prefix)
    insert_default_style(
        conn,
        CASES_TABLE,
        GEOMETRY_COLUMN,
        CASES_STYLE_NAME,
        cases_layer_qml(crs),
        CASES_STYLE_DESCRIPTION,
    )


def registry_crs(conn: sqlite3.Connection):
    """The pyproj CRS of the cases layer.

    Parameters
    ----------
    conn : sqlite3.Connection
        From :func:`open_registry`.

    Returns
    -------
    pyproj.CRS
    """
    crs = gpkg.layer_srs(conn, CASES_TABLE)
    if crs is None:
        raise InputError(
            f"the registry has no '{CASES_TABLE}' layer; point cases.registry at a buildwatch cases.gpkg"
        )
    return crs


def registry_srs_id(conn: sqlite3.Connection) -> int:
    """The ``srs_id`` of the cases layer's geometry column.

    Parameters
    ----------
    conn : sqlite3.Connection

    Returns
    -------
    int
    """
    return gpkg.layer_srs_id(conn, CASES_TABLE)


def open_registry(path: Path | str, read_only: bool = False) -> sqlite3.Connection:
    """Connect to an existing registry, refusing anything that is not one with a clear message.

    Parameters
    ----------
    path : Path
        The registry GeoPackage.
    read_only : bool
        For commands that only read (``cases list/show/export``): nothing is written.

    Returns
    -------
    sqlite3.Connection
        From :func:`detector.review.gpkg.connect` (autocommit, WAL, GPKG SQL functions).

    Raises
    ------
    InputError
        Missing file, not SQLite, or no ``cases`` layer.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: case registry not found; a nightly run with cases.registry set creates it"
        )
    try:
        conn = gpkg.connect(path, read_only=read_only)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        raise InputError(
            f"{path}: not a GeoPackage/SQLite file; point --registry at a buildwatch cases.gpkg"
        ) from None
    if CASES_TABLE not in tables or "gpkg_contents" not in tables:
        conn.close()
        raise InputError(
            f"{path}: GeoPackage has no '{CASES_TABLE}' layer; point --registry at a buildwatch cases.gpkg"
        )
    columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{CASES_TABLE}")')}
    missing = [
        name for name in ("case_id", "status") if name not in columns
    ]  # newer columns: ensure_schema
    if (
        missing or not {SIGHTINGS_TABLE, NIGHTS_TABLE} <= tables
    ):  # a foreign GeoPackage with a 'cases' layer
        conn.close()
        raise InputError(
            f"{path}: its '{CASES_TABLE}' layer is not a buildwatch case registry (no "
            f"{', '.join(missing[:3]) or SIGHTINGS_TABLE}); point --registry at a buildwatch cases.gpkg"
        )
    return conn


# --------------------------------------------------------------------------- reading cases


def read_cases(conn: sqlite3.Connection) -> list[CaseRow]:
    """All cases, ordered by fid.

    Parameters
    ----------
    conn : sqlite3.Connection
        From :func:`open_registry`.

    Returns
    -------
    list[CaseRow]
    """
    rows = conn.execute(f'SELECT * FROM "{CASES_TABLE}" ORDER BY fid').fetchall()
    cases = []
    for row in rows:
        row = {key: row[key] for key in row.keys()}
        row.setdefault("geom", row.get(GEOMETRY_COLUMN))
        geometry = gpkg.decode_gpkg_geometry(row["geom"])
        detected = (
            shapely.from_wkb(bytes(row["detected_wkb"]))
            if row["detected_wkb"] is not None
            else None
        )
        cases.append(
            CaseRow(
                fid=row["fid"],
                case_id=row["case_id"],
                status=row["status"] or NEW,
                geometry=geometry if geometry is not None else shapely.Polygon(),
                run_geom_hash=row["run_geom_hash"],
                detected=detected,
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                times_seen=row["times_seen"] or 0,
                max_confidence=row["max_confidence"],
                community=row["community"],
                evidence=row["evidence"],
                alert=row.get("alert"),
                demolition_due=row.get("demolition_due"),
                area_m2=row.get("area_m2"),
                lon=row.get("lon"),
                lat=row.get("lat"),
                case_class=row.get("class"),
                origin=row.get("origin"),
                evidence_hash=row.get("evidence_hash"),
                height_gain_m=row.get("height_gain_m"),
                baseline_height_m=row.get("baseline_height_m"),
                current_height_m=row.get("current_height_m"),
                height_change=row.get("height_change"),
                class_edited=bool(row.get("class_edited")),
            )
        )
    return cases


def read_cases_frame(path: Path | str, *, keep_internal: bool = False) -> geopandas.GeoDataFrame:
    """The cases layer as a GeoDataFrame in the registry CRS (for the report and the CLI).

    Parameters
    ----------
    path : Path
        The registry.
    keep_internal : bool
        Keep ``run_geom_hash`` and ``detected_wkb`` (bookkeeping columns).

    Returns
    -------
    geopandas.GeoDataFrame
    """
    import geopandas as gpd
    import pandas as pd

    conn = open_registry(path, read_only=True)
    try:
        crs = registry_crs(conn)
        frame = pd.read_sql_query(f'SELECT * FROM "{CASES_TABLE}" ORDER BY fid', conn)
    finally:
        conn.close()
    geometries = [gpkg.decode_gpkg_geometry(blob) for blob in frame.pop(GEOMETRY_COLUMN)]
    if not keep_internal:
        frame = frame.drop(columns=list(INTERNAL_COLUMNS))
    return gpd.GeoDataFrame(frame, geometry=geometries, crs=crs)


def read_history(path: Path | str, case_id: str | None = None) -> list[dict]:
    """The append-only history (oldest first), of one case or of all; empty for an older registry.

    Parameters
    ----------
    path : Path
        The registry.
    case_id : str, optional

    Returns
    -------
    list[dict]
        ``case_id, changed_at, changed_by, change, old_status, new_status, old_alert, new_alert``
        (geometries left out).
    """
    conn = open_registry(path)
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = ?", (HISTORY_TABLE,)
        ).fetchone():
            return []
        query = (
            f"SELECT case_id, changed_at, changed_by, change, old_status, new_status, old_alert, new_alert "
            f'FROM "{HISTORY_TABLE}"' + (" WHERE case_id = ?" if case_id else "") + " ORDER BY fid"
        )
        return [dict(row) for row in conn.execute(query, (case_id,) if case_id else ())]
    finally:
        conn.close()


# --------------------------------------------------------------------------- the night's update


def _validate_candidates(candidates) -> None:
    missing = [c for c in REQUIRED_CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise InputError(
            f"candidates: missing column(s) {', '.join(missing)}; pass the 'candidates' layer of a run"
        )
    if candidates.crs is None:
        raise InputError("candidates: no CRS; the candidates layer must carry the baseline CRS")


def _next_sequence(conn: sqlite3.Connection, id_prefix: str) -> int:
    """1 + the highest sequence number among case IDs starting with ``id_prefix`` (e.g. 'LG20240501-')."""
    pattern = re.compile(re.escape(id_prefix) + r"(\d+)$")
    highest = 0
    for (case_id,) in conn.execute(
        f'SELECT case_id FROM "{CASES_TABLE}" WHERE case_id LIKE ?', (id_prefix + "%",)
    ):
        match = pattern.match(case_id)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def format_case_id(prefix: str, night: date, sequence: int) -> str:
    """``{prefix}{YYYYMMDD}-{seq:04d}``, e.g. ``LG20240501-0003``."""
    return f"{prefix}{night:%Y%m%d}-{sequence:04d}"


def update_registry(
    candidates: geopandas.GeoDataFrame,
    config: CasesConfig,
    *,
    run_id: str,
    night: date,
    baseline_path: Path,
    current_path: Path,
) -> RegistryUpdate:
    """Fold one night's candidates into the case registry (one transaction) and say what changed.

    Writes only the registry (creating it on the first night). Evidence chips, the QGIS project
    and the report are the caller's: :func:`detector.review.nightly.update_cases`.

    Parameters
    ----------
    candidates : geopandas.GeoDataFrame
        The run's ``candidates`` layer (any CRS; reprojected to the registry CRS).
    config : CasesConfig
        ``config.registry`` must be set; ``match_iou``, ``district_prefix`` and the boundary
        settings are used.
    run_id : str
        The run's ID (stored on every case it touches).
    night : datetime.date
        The night of the survey (the current mosaic's date); gives new case IDs their date.
    baseline_path, current_path : Path
        The orthomosaics, recorded in the ``registry_nights`` table.

    Returns
    -------
    RegistryUpdate
    """
    if config.registry is None:
        raise InputError("cases.registry is not set; give the path of cases.gpkg in the config")
    _validate_candidates(candidates)
    registry = Path(config.registry)
    if not registry.exists():
        create_registry(registry, candidates.crs, config.district_prefix)
    conn = open_registry(registry)
    try:
        crs = registry_crs(conn)
        srs_id = registry_srs_id(conn)
        frame = candidates if candidates.crs == crs else candidates.to_crs(crs)
        frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty].reset_index(drop=True)
        boundaries = (
            load_boundaries(
                config.boundaries, config.boundary_name_field, config.boundary_unit_field, crs
            )
            if config.boundaries is not None
            else None
        )
        result = RegistryUpdate(registry=registry, night=night, run_id=run_id)
        coverage = mosaic_footprint(current_path, crs)
        with gpkg.write_transaction(conn):
            _refresh_schema(conn, crs, config.district_prefix)
            _apply_night(
                conn, frame, crs, srs_id, config, boundaries, run_id, night, result, coverage
            )
            # one row per night and mosaic: a rerun of the night replaces its earlier attempt's row
            conn.execute(
                f'DELETE FROM "{NIGHTS_TABLE}" WHERE night = ? AND current = ?',
                (night.isoformat(), str(current_path)),
            )
            conn.execute(
                f'INSERT INTO "{NIGHTS_TABLE}" (night, run_id, candidates, opened, updated, suppressed, total, '
                "baseline, current, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    night.isoformat(),
                    run_id,
                    len(frame),
                    result.opened,
                    result.updated,
                    result.suppressed,
                    result.total,
                    str(baseline_path),
                    str(current_path),
                    utc_now("milliseconds"),
                ),
            )
            gpkg.update_extent(conn, CASES_TABLE, GEOMETRY_COLUMN, utc_now("milliseconds"))
    finally:
        conn.close()
    log.info(
        "cases: %d opened, %d updated, %d suppressed, %d alerts, %d in registry",
        result.opened,
        result.updated,
        result.suppressed,
        len(result.alert_ids),
        result.total,
    )
    return result


def mosaic_footprint(path: Path, crs) -> BaseGeometry | None:
    """The bounds of a mosaic as a polygon in ``crs``; None when it cannot be read (coverage unknown).

    Parameters
    ----------
    path : Path
        An orthomosaic.
    crs : pyproj.CRS
        The registry CRS.

    Returns
    -------
    shapely Polygon or None
    """
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                return None
            return shapely.box(*transform_bounds(src.crs, crs.to_wkt(), *src.bounds))
    except (rasterio.errors.RasterioError, OSError):
        return None


def _model_of(frame, index: int):
    """The case's ``model_name``: the candidate's model name, with its registry version when it has one
    (``buildwatch-pair-v2@v0002``), so a case says which model version found it."""
    name, version = (
        _candidate_value(frame, "model_name", index),
        _candidate_value(frame, "model_version", index, ""),
    )
    return f"{name}@{version}" if name and version else name


def _candidate_value(frame, column: str, index: int, default=None):
    if column not in frame.columns:
        return default
    value = frame[column].iloc[index]
    if value is None or (isinstance(value, float) and value != value):
        return default
    return value.item() if hasattr(value, "item") else value


def _apply_night(
    conn, frame, crs, srs_id, config, boundaries, run_id, night, result, coverage=None
) -> None:
    """Match, update and insert inside the open transaction; fills ``result``."""
    cases = read_cases(conn)
    geometries = [g if g.is_valid else shapely.make_valid(g) for g in frame.geometry]
    confidences = frame["confidence"].to_numpy(dtype=float) if len(frame) else np.zeros(0)
    matches, groups = match_candidates(
        geometries, confidences, [(c.geometry, c.detected) for c in cases], config.match_iou
    )
    lonlats = lonlat_of(geometries, crs)
    night_iso = night.isoformat()

    for case_index, sightings in sorted(matches.items()):
        case = cases[case_index]
        suppressed = case.status in SUPPRESSING_STATUSES
        new_class = _update_case(
            conn,
            case,
            frame,
            geometries,
            lonlats,
            sightings,
            crs,
            srs_id,
            boundaries,
            run_id,
            night_iso,
        )
        if new_class and case.case_class and new_class != case.case_class:
            result.class_changes.append((case.case_id, case.case_class, new_class))
        # a rerun of a night finds the cases its first attempt opened: they are still tonight's new cases
        opened_tonight = (
            case.first_seen == night_iso
            and (case.origin or ORIGIN_DETECTOR) == ORIGIN_DETECTOR
            and not suppressed
        )
        outcome = (
            "suppressed"
            if suppressed
            else (
                "alert"
                if case.must_be_gone(night_iso)
                else "opened"
                if opened_tonight
                else "updated"
            )
        )
        _record_sightings(conn, case.case_id, frame, sightings, run_id, night_iso, outcome)
        (
            result.suppressed_ids
            if suppressed
            else result.opened_ids
            if opened_tonight
            else result.updated_ids
        ).append(case.case_id)
        if case.status == PERMITTED:
            result.permitted_ids.append(case.case_id)

    _verify_demolitions(
        conn,
        read_cases(conn),
        set(cases[i].case_id for i in matches),
        coverage,
        night_iso,
        result,
        run_id,
    )
    _refresh_measures(conn, read_cases(conn), crs, boundaries)

    id_prefix = format_case_id(config.district_prefix, night, 0)[:-4]
    sequence = _next_sequence(conn, id_prefix)
    for group in sorted(groups, key=lambda g: reading_order(geometries[g[0].candidate_index])):
        case_id = format_case_id(config.district_prefix, night, sequence)
        sequence += 1
        _insert_case(
            conn,
            case_id,
            frame,
            geometries,
            lonlats,
            group,
            crs,
            srs_id,
            boundaries,
            run_id,
            night_iso,
        )
        _record_sightings(conn, case_id, frame, group, run_id, night_iso, "opened")
        result.opened_ids.append(case_id)

    result.opened = len(result.opened_ids)
    result.updated = len(result.updated_ids)
    result.suppressed = len(result.suppressed_ids)
    result.total = conn.execute(f'SELECT COUNT(*) FROM "{CASES_TABLE}"').fetchone()[0]


def demolition_alert(
    case: CaseRow, seen_tonight: bool, covered: bool, night_iso: str
) -> str | None:
    """The alert a case carries after tonight (demolition verification); ``case.alert`` when unknown.

    Parameters
    ----------
    case : CaseRow
        As stored after tonight's sightings (status and due date are the operators').
    seen_tonight : bool
        A candidate of tonight matched it.
    covered : bool
        Tonight's mosaic covers it (a case outside it keeps its alert: nothing was checked).
    night_iso : str

    Returns
    -------
    str or None
    """
    if not case.must_be_gone(night_iso):
        return None
    if seen_tonight:
        if case.status == DEMOLITION_ORDERED:
            return f"still standing after the demolition due date {str(case.demolition_due)[:10]} (seen {night_iso})"
        return f"still standing although {case.status.replace('_', ' ')} (seen {night_iso})"
    return None if covered else case.alert


def run_editor(run_id: str) -> str:
    """How a nightly run signs its writes (``edited_by``; the history's ``changed_by``)."""
    return f"{RUN_EDITOR_PREFIX}{run_id}"


def _verify_demolitions(
    conn, cases: list[CaseRow], seen: set[str], coverage, night_iso: str, result, run_id: str
) -> None:
    for case in cases:
        covered = coverage is None or coverage.intersects(case.geometry)
        alert = demolition_alert(case, case.case_id in seen, covered, night_iso)
        if alert != case.alert:
            conn.execute(
                f'UPDATE "{CASES_TABLE}" SET alert = ?, edited_by = ? WHERE fid = ?',
                (alert, run_editor(run_id), case.fid),
            )
        if alert:
            result.alert_ids.append(case.case_id)


def _refresh_measures(conn, cases: list[CaseRow], crs, boundaries) -> None:
    """area_m2, lon, lat of every case from its stored geometry (the operator's outline when edited)."""
    if not cases:
        return
    lonlats = lonlat_of([case.geometry for case in cases], crs)
    areas = area_m2([case.geometry for case in cases], crs)
    for case, (lon, lat), area in zip(cases, lonlats, areas):
        if case.geometry.is_empty:
            continue
        fields = {
            "area_m2": round(float(area), 2),
            "lon": round(float(lon), 8),
            "lat": round(float(lat), 8),
        }
        stale = {
            k: v
            for k, v in fields.items()
            if getattr(case, k) is None or abs(getattr(case, k) - v) > 1e-7
        }
        if boundaries is not None and not case.community:
            stale["community"], stale["unit"] = boundaries.locate(case.geometry)
        if stale:
            assignments = ", ".join(f'"{name}" = ?' for name in stale)
            conn.execute(
                f'UPDATE "{CASES_TABLE}" SET {assignments} WHERE fid = ?',
                (*stale.values(), case.fid),
            )


def _strongest(frame, sightings: list[Sighting]) -> Sighting:
    return max(sightings, key=lambda s: (float(frame["confidence"].iloc[s.candidate_index]), s.iou))


def _height_fields(frame, sightings: list[Sighting], case_class) -> dict:
    """Height columns from the strongest of ``sightings`` whose candidate has a height gain ({} when none has)."""
    measured = [
        s
        for s in sightings
        if _candidate_value(frame, "height_gain_m", s.candidate_index) is not None
    ]
    if not measured:
        return {}
    index = _strongest(frame, measured).candidate_index
    fields = {
        name: float(_candidate_value(frame, name, index))
        if _candidate_value(frame, name, index) is not None
        else None
        for name in HEIGHT_COLUMNS
    }
    fields["height_change"] = height_phrase(
        fields["height_gain_m"], fields["baseline_height_m"], fields["current_height_m"], case_class
    )
    return fields


def _run_fields(geometry, lonlat, crs, boundaries, frame, index, srs_id) -> dict:
    """Run-owned fields derived from one candidate's geometry (``lonlat``: its WGS84 point)."""
    lon, lat = lonlat
    fields = {
        GEOMETRY_COLUMN: gpkg.encode_gpkg_geometry(geometry, srs_id),
        "run_geom_hash": geometry_hash(geometry),
        "area_m2": round(area_m2(geometry, crs), 2),
        "lon": round(float(lon), 8),
        "lat": round(float(lat), 8),
    }
    if boundaries is not None:
        fields["community"], fields["unit"] = boundaries.locate(geometry)
    return fields


def _update_case(
    conn,
    case: CaseRow,
    frame,
    geometries,
    lonlats,
    sightings,
    crs,
    srs_id,
    boundaries,
    run_id,
    night_iso,
) -> str | None:
    """Update the run-owned fields of a case seen tonight; returns the class written (None when kept)."""
    strongest = _strongest(frame, sightings)
    index = strongest.candidate_index
    confidence = float(frame["confidence"].iloc[index])
    seen_before_tonight = case.last_seen is not None and case.last_seen >= night_iso
    fields: dict = {
        "last_seen": max(case.last_seen or night_iso, night_iso),
        "first_seen": min(case.first_seen or night_iso, night_iso),
        "times_seen": case.times_seen if seen_before_tonight else case.times_seen + 1,
        "max_confidence": max(case.max_confidence or 0.0, confidence),
        "last_confidence": confidence,
        "candidate_id": _candidate_value(frame, "candidate_id", index),
        "last_run_id": run_id,
        "model_name": _model_of(frame, index),
        "tags": _candidate_value(frame, "tags", index, ""),
        "detected_wkb": shapely.to_wkb(geometries[index], byte_order=1, output_dimension=2),
        "edited_by": run_editor(run_id),
    }
    if not case.class_edited:  # the detector's class until an operator corrects it
        fields["class"] = _candidate_value(frame, "class", index)
    if case.operator_edited:
        fields["geometry_edited"] = 1
        if boundaries is not None and not case.community:
            fields["community"], fields["unit"] = boundaries.locate(case.geometry)
    else:
        fields.update(
            _run_fields(geometries[index], lonlats[index], crs, boundaries, frame, index, srs_id)
        )
        fields["geometry_edited"] = 0
    fields.update(_height_fields(frame, sightings, fields.get("class") or case.case_class))
    assignments = ", ".join(f'"{name}" = ?' for name in fields)
    conn.execute(
        f'UPDATE "{CASES_TABLE}" SET {assignments} WHERE fid = ?', (*fields.values(), case.fid)
    )
    return fields.get("class")


def _insert_case(
    conn, case_id, frame, geometries, lonlats, group, crs, srs_id, boundaries, run_id, night_iso
) -> None:
    strongest = _strongest(frame, group)
    index = strongest.candidate_index
    confidence = float(frame["confidence"].iloc[index])
    fields = _run_fields(geometries[index], lonlats[index], crs, boundaries, frame, index, srs_id)
    fields.update(
        {
            "class": _candidate_value(frame, "class", index),
            "case_id": case_id,
            "status": NEW,
            "first_seen": night_iso,
            "last_seen": night_iso,
            "times_seen": 1,
            "max_confidence": confidence,
            "last_confidence": confidence,
            "evidence": f"evidence/{case_id}.png",
            "tags": _candidate_value(frame, "tags", index, ""),
            "candidate_id": _candidate_value(frame, "candidate_id", index),
            "first_run_id": run_id,
            "last_run_id": run_id,
            "model_name": _model_of(frame, index),
            "geometry_edited": 0,
            "origin": ORIGIN_DETECTOR,
            "edited_by": run_editor(run_id),
            "detected_wkb": shapely.to_wkb(geometries[index], byte_order=1, output_dimension=2),
        }
    )
    fields.update(_height_fields(frame, group, fields["class"]))
    names = ", ".join(f'"{name}"' for name in fields)
    marks = ", ".join("?" for _ in fields)
    conn.execute(f'INSERT INTO "{CASES_TABLE}" ({names}) VALUES ({marks})', tuple(fields.values()))


def _record_sightings(conn, case_id, frame, sightings, run_id, night_iso, outcome) -> None:
    conn.executemany(
        f'INSERT OR REPLACE INTO "{SIGHTINGS_TABLE}" (case_id, night, run_id, candidate_id, confidence, iou, outcome) '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                case_id,
                night_iso,
                run_id,
                str(_candidate_value(frame, "candidate_id", s.candidate_index, "")),
                float(frame["confidence"].iloc[s.candidate_index]),
                round(s.iou, 4),
                outcome,
            )
            for s in sightings
        ],
    )
