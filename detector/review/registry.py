"""The case registry: one GeoPackage (``cases.gpkg``) of cases that lives across nights.

Every nightly run calls :func:`update_registry` with its candidates. In ONE SQLite
transaction it

* matches each candidate to an existing case in map coordinates (IoU against the case's
  geometry or the geometry the run last detected, ``>= CasesConfig.match_iou``) and
  updates the run-owned fields (last_seen, times_seen, max_confidence, geometry unless an
  operator edited it);
* opens a new case, with a stable ID ``{prefix}{YYYYMMDD}-{seq:04d}``, for every
  candidate that matches nothing;
* never touches the review fields (status, reviewer, reviewed_at, note) and never
  deletes a case. A candidate on a case rejected as ``false_positive`` (or ``permitted``)
  is counted as *suppressed*: it does not reopen the case or open a new one.

The GeoPackage is written with plain :mod:`sqlite3` following GeoPackage 1.2 (application
id ``GPKG``, user_version 10200, ``gpkg_contents``, ``gpkg_geometry_columns``, an R-tree
spatial index with the standard triggers, ``gpkg_extensions``) in WAL journal mode, so a
QGIS reviewer can save edits while a run is writing. The SQL functions the R-tree triggers
need (``ST_IsEmpty``, ``ST_MinX`` ...) are registered on every connection this module opens
(GDAL/QGIS register their own).

After the transaction: evidence chips (:mod:`detector.review.evidence`), the QGIS project
(:mod:`detector.review.qgis`) and the nightly report (:mod:`detector.review.report`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import struct
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from detector.errors import InputError
from detector.review.qgis import LAYER_STYLES_DDL

if TYPE_CHECKING:  # pragma: no cover
    import geopandas

    from detector.config import CasesConfig

log = logging.getLogger(__name__)

CASES_TABLE = "cases"
GEOMETRY_COLUMN = "geom"
SIGHTINGS_TABLE = "case_sightings"
NIGHTS_TABLE = "registry_nights"
STYLES_TABLE = "layer_styles"

REVIEW_STATUSES = ("new", "confirmed_illegal", "permitted", "false_positive", "demolished", "referred")
# statuses on which a new sighting of the same structure is suppressed (never reopened)
SUPPRESSING_STATUSES = ("false_positive", "permitted")
# statuses that still need action: the "open backlog"
OPEN_STATUSES = ("new", "confirmed_illegal", "referred")
REVIEW_FIELDS = ("status", "reviewer", "reviewed_at", "note")

GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
GPKG_USER_VERSION = 10200  # GeoPackage 1.2 (QGIS 3.22 warns about 1.4)

# (name, SQL type) of the attribute columns of the cases layer, in order. Run-owned unless
# listed in REVIEW_FIELDS.
CASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("case_id", "TEXT NOT NULL UNIQUE"),
    ("status", "TEXT NOT NULL DEFAULT 'new'"),
    ("reviewer", "TEXT"),
    ("reviewed_at", "DATETIME"),
    ("note", "TEXT"),
    ("class", "TEXT"),
    ("area_m2", "REAL"),
    ("lon", "REAL"),
    ("lat", "REAL"),
    ("community", "TEXT"),
    ("unit", "TEXT"),
    ("first_seen", "DATE"),
    ("last_seen", "DATE"),
    ("times_seen", "INTEGER NOT NULL DEFAULT 1"),
    ("max_confidence", "REAL"),
    ("last_confidence", "REAL"),
    ("evidence", "TEXT"),
    ("tags", "TEXT"),
    ("candidate_id", "TEXT"),
    ("first_run_id", "TEXT"),
    ("last_run_id", "TEXT"),
    ("model_name", "TEXT"),
    ("geometry_edited", "BOOLEAN NOT NULL DEFAULT 0"),
    ("run_geom_hash", "TEXT"),
    ("detected_wkb", "BLOB"),
)

REQUIRED_CANDIDATE_COLUMNS = ("candidate_id", "class", "confidence", "geometry")

_LOCK_RETRIES = 20
_BUSY_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- results


@dataclass
class RegistryUpdate:
    """What one night did to the registry, and where its products are."""

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
    evidence_paths: list[Path] = field(default_factory=list)
    project_path: Optional[Path] = None
    report_html: Optional[Path] = None
    report_csv: Optional[Path] = None


@dataclass
class CaseRow:
    """One case as stored, read inside the night's transaction."""

    fid: int
    case_id: str
    status: str
    geometry: BaseGeometry
    run_geom_hash: Optional[str]
    detected: Optional[BaseGeometry]
    first_seen: Optional[str]
    last_seen: Optional[str]
    times_seen: int
    max_confidence: Optional[float]
    community: Optional[str]
    evidence: Optional[str]

    @property
    def operator_edited(self) -> bool:
        """True when the stored geometry is not the one the run last wrote."""
        return self.run_geom_hash is not None and geometry_hash(self.geometry) != self.run_geom_hash


@dataclass
class Sighting:
    """A candidate of tonight matched to a case (existing or opened tonight)."""

    candidate_index: int
    iou: float


# --------------------------------------------------------------------------- GeoPackage geometry


def geometry_hash(geometry: BaseGeometry) -> str:
    """A short, stable hash of a geometry's 2D little-endian WKB (detects operator edits)."""
    wkb = shapely.to_wkb(geometry, byte_order=1, output_dimension=2)
    return hashlib.sha256(wkb).hexdigest()[:20]


def encode_gpkg_geometry(geometry: BaseGeometry | None, srs_id: int) -> bytes | None:
    """Encode a shapely geometry as a GeoPackage binary blob (little endian, XY envelope).

    Parameters
    ----------
    geometry : shapely geometry or None
    srs_id : int
        The ``gpkg_spatial_ref_sys.srs_id`` of the layer.

    Returns
    -------
    bytes or None
    """
    if geometry is None:
        return None
    wkb = shapely.to_wkb(geometry, byte_order=1, output_dimension=2)
    if geometry.is_empty:
        flags = 0b00010001  # empty, no envelope, little endian
        return b"GP" + bytes([0, flags]) + struct.pack("<i", srs_id) + wkb
    minx, miny, maxx, maxy = geometry.bounds
    flags = 0b00000011  # XY envelope, little endian
    return b"GP" + bytes([0, flags]) + struct.pack("<i4d", srs_id, minx, maxx, miny, maxy) + wkb


def _gpkg_header(blob: bytes) -> tuple[str, int, bool, tuple[float, ...] | None, int]:
    """(endian, envelope code, empty flag, envelope or None, offset of the WKB)."""
    if blob is None or len(blob) < 8 or blob[:2] != b"GP":
        raise ValueError("not a GeoPackage geometry blob")
    flags = blob[3]
    endian = "<" if flags & 1 else ">"
    envelope_code = (flags >> 1) & 0b111
    empty = bool(flags & 0b10000)
    n_doubles = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}.get(envelope_code)
    if n_doubles is None:
        raise ValueError(f"invalid envelope code {envelope_code}")
    envelope = struct.unpack_from(f"{endian}{n_doubles}d", blob, 8) if n_doubles else None
    return endian, envelope_code, empty, envelope, 8 + 8 * n_doubles


def decode_gpkg_geometry(blob: bytes | None) -> BaseGeometry | None:
    """Decode a GeoPackage geometry blob (any envelope, either byte order) to shapely."""
    if blob is None:
        return None
    _, _, _, _, offset = _gpkg_header(blob)
    return shapely.from_wkb(bytes(blob[offset:]))


def _blob_bounds(blob: bytes | None) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a GeoPackage blob, from its envelope when it has one."""
    if blob is None:
        return None
    _, _, empty, envelope, _ = _gpkg_header(blob)
    if empty:
        return None
    if envelope is not None:
        return envelope[0], envelope[1], envelope[2], envelope[3]
    geometry = decode_gpkg_geometry(blob)
    if geometry is None or geometry.is_empty:
        return None
    minx, miny, maxx, maxy = geometry.bounds
    return minx, maxx, miny, maxy


def _st_is_empty(blob):
    if blob is None:
        return None
    return 1 if _blob_bounds(blob) is None else 0


def _st_bound(index: int):
    def bound(blob):
        bounds = _blob_bounds(blob)
        return None if bounds is None else bounds[index]

    return bound


def register_gpkg_functions(conn: sqlite3.Connection) -> None:
    """Register the SQL functions the GeoPackage R-tree triggers call (ST_IsEmpty, ST_MinX ...)."""
    conn.create_function("ST_IsEmpty", 1, _st_is_empty, deterministic=True)
    for index, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, _st_bound(index), deterministic=True)


# --------------------------------------------------------------------------- connections


def connect(path: Path | str) -> sqlite3.Connection:
    """Open a registry for reading and writing: WAL journal, busy timeout, GPKG functions.

    Parameters
    ----------
    path : Path
        The registry GeoPackage.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (``isolation_level=None``); use :func:`write_transaction`.
    """
    conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    register_gpkg_functions(conn)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if mode.lower() != "wal":
        with contextlib.suppress(sqlite3.OperationalError):  # another connection holds it; retry later
            conn.execute("PRAGMA journal_mode = WAL")
    return conn


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error), retrying while another writer holds the lock."""
    for attempt in range(_LOCK_RETRIES):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc) or attempt == _LOCK_RETRIES - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for attempt in range(_LOCK_RETRIES):
        try:
            conn.execute("COMMIT")
            return
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc) or attempt == _LOCK_RETRIES - 1:
                conn.execute("ROLLBACK")
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))


# --------------------------------------------------------------------------- creating a registry


def _srs_row(crs) -> tuple[int, str, str, int, str]:
    """(srs_id, srs_name, organization, org_coordsys_id, definition) for a pyproj CRS."""
    epsg = crs.to_epsg()
    definition = crs.to_wkt("WKT1_GDAL")
    if epsg is not None:
        return epsg, crs.name, "EPSG", epsg, definition
    return 100000, crs.name or "custom", "NONE", 100000, definition


def _create_schema(conn: sqlite3.Connection, crs) -> None:
    srs_id, srs_name, organization, org_id, definition = _srs_row(crs)
    conn.execute(f"PRAGMA application_id = {GPKG_APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {GPKG_USER_VERSION}")
    conn.executescript(
        """
        CREATE TABLE gpkg_spatial_ref_sys (
            srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, organization TEXT NOT NULL,
            organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
        CREATE TABLE gpkg_contents (
            table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
            description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
            CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
        CREATE TABLE gpkg_geometry_columns (
            table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
            srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
            CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
            CONSTRAINT uk_gc_table_name UNIQUE (table_name),
            CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
            CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
        CREATE TABLE gpkg_extensions (
            table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition TEXT NOT NULL,
            scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
        """
    )
    srs_rows = [
        ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
        ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
        ("WGS 84 geodetic", 4326, "EPSG", 4326,
         'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
         'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
         'AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]',
         "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid"),
    ]
    if srs_id not in (-1, 0, 4326):
        srs_rows.append((srs_name, srs_id, organization, org_id, definition, ""))
    conn.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", srs_rows)

    columns = ",\n".join(f'"{name}" {sql_type}' for name, sql_type in CASE_COLUMNS)
    conn.execute(
        f'CREATE TABLE "{CASES_TABLE}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
        f'"{GEOMETRY_COLUMN}" POLYGON, {columns})'
    )
    conn.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) VALUES (?, 'features', ?, ?, ?)",
        (CASES_TABLE, CASES_TABLE, "buildwatch enforcement cases (review in QGIS)", srs_id),
    )
    conn.execute(
        "INSERT INTO gpkg_geometry_columns VALUES (?, ?, 'POLYGON', ?, 0, 0)", (CASES_TABLE, GEOMETRY_COLUMN, srs_id)
    )
    _create_rtree(conn, CASES_TABLE, GEOMETRY_COLUMN, "fid")

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
        + LAYER_STYLES_DDL
    )
    for table, description in (
        (SIGHTINGS_TABLE, "every night a case was seen"),
        (NIGHTS_TABLE, "one row per nightly registry update"),
        (STYLES_TABLE, "QGIS layer styles"),
    ):
        conn.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description) VALUES (?, 'attributes', ?, ?)",
            (table, table, description),
        )


def _create_rtree(conn: sqlite3.Connection, table: str, column: str, pk: str) -> None:
    """The GeoPackage 1.2 R-tree spatial index extension with its six standard triggers."""
    rtree = f"rtree_{table}_{column}"
    conn.execute(f'CREATE VIRTUAL TABLE "{rtree}" USING rtree(id, minx, maxx, miny, maxy)')
    values = f"NEW.{pk}, ST_MinX(NEW.{column}), ST_MaxX(NEW.{column}), ST_MinY(NEW.{column}), ST_MaxY(NEW.{column})"
    has_geom = f"(NEW.{column} NOTNULL AND NOT ST_IsEmpty(NEW.{column}))"
    no_geom = f"(NEW.{column} ISNULL OR ST_IsEmpty(NEW.{column}))"
    conn.executescript(
        f"""
        CREATE TRIGGER "{rtree}_insert" AFTER INSERT ON "{table}" WHEN {has_geom}
        BEGIN INSERT OR REPLACE INTO "{rtree}" VALUES ({values}); END;
        CREATE TRIGGER "{rtree}_update1" AFTER UPDATE OF "{column}" ON "{table}"
        WHEN OLD.{pk} = NEW.{pk} AND {has_geom}
        BEGIN INSERT OR REPLACE INTO "{rtree}" VALUES ({values}); END;
        CREATE TRIGGER "{rtree}_update2" AFTER UPDATE OF "{column}" ON "{table}"
        WHEN OLD.{pk} = NEW.{pk} AND {no_geom}
        BEGIN DELETE FROM "{rtree}" WHERE id = OLD.{pk}; END;
        CREATE TRIGGER "{rtree}_update3" AFTER UPDATE ON "{table}"
        WHEN OLD.{pk} != NEW.{pk} AND {has_geom}
        BEGIN DELETE FROM "{rtree}" WHERE id = OLD.{pk}; INSERT OR REPLACE INTO "{rtree}" VALUES ({values}); END;
        CREATE TRIGGER "{rtree}_update4" AFTER UPDATE ON "{table}"
        WHEN OLD.{pk} != NEW.{pk} AND {no_geom}
        BEGIN DELETE FROM "{rtree}" WHERE id IN (OLD.{pk}, NEW.{pk}); END;
        CREATE TRIGGER "{rtree}_delete" AFTER DELETE ON "{table}" WHEN OLD.{column} NOTNULL
        BEGIN DELETE FROM "{rtree}" WHERE id = OLD.{pk}; END;
        """
    )
    conn.execute(
        "INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', 'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
        (table, column),
    )


def create_registry(path: Path, crs) -> None:
    """Create an empty registry GeoPackage atomically (temp file in the same folder + rename).

    Parameters
    ----------
    path : Path
        Where ``cases.gpkg`` goes; its folder is created.
    crs : pyproj.CRS
        The registry's CRS (the baseline CRS of the first night); later nights are reprojected.
    """
    from detector.review.qgis import cases_layer_qml

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        conn = sqlite3.connect(tmp_name, isolation_level=None)
        register_gpkg_functions(conn)
        try:
            _create_schema(conn, crs)  # a private temp file: no transaction needed (executescript commits)
            conn.execute(
                f'INSERT INTO "{STYLES_TABLE}" (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, '
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
                "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, 'buildwatch', '')",
                (CASES_TABLE, GEOMETRY_COLUMN, "buildwatch review", cases_layer_qml(),
                 "categorised by review status; labels: case id and area; review form"),
            )
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        os.replace(tmp_name, path)
    except BaseException:
        for leftover in (tmp_name, tmp_name + "-wal", tmp_name + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise


def registry_crs(conn: sqlite3.Connection):
    """The pyproj CRS of the cases layer."""
    from pyproj import CRS

    row = conn.execute(
        "SELECT s.organization, s.organization_coordsys_id, s.definition FROM gpkg_geometry_columns g "
        "JOIN gpkg_spatial_ref_sys s ON s.srs_id = g.srs_id WHERE g.table_name = ?",
        (CASES_TABLE,),
    ).fetchone()
    if row is None:
        raise InputError(f"the registry has no '{CASES_TABLE}' layer; point cases.registry at a buildwatch cases.gpkg")
    if row["organization"].upper() == "EPSG":
        return CRS.from_epsg(row["organization_coordsys_id"])
    return CRS.from_wkt(row["definition"])


def registry_srs_id(conn: sqlite3.Connection) -> int:
    """The ``srs_id`` of the cases layer's geometry column."""
    return conn.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (CASES_TABLE,)).fetchone()[0]


def open_registry(path: Path | str) -> sqlite3.Connection:
    """Connect to an existing registry, refusing anything that is not one with a clear message."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: case registry not found; a nightly run with cases.registry set creates it")
    try:
        conn = connect(path)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        raise InputError(f"{path}: not a GeoPackage/SQLite file; point --registry at a buildwatch cases.gpkg") from None
    if CASES_TABLE not in tables or "gpkg_contents" not in tables:
        conn.close()
        raise InputError(f"{path}: GeoPackage has no '{CASES_TABLE}' layer; point --registry at a buildwatch cases.gpkg")
    return conn


# --------------------------------------------------------------------------- reading cases


def read_cases(conn: sqlite3.Connection) -> list[CaseRow]:
    """All cases, ordered by fid."""
    rows = conn.execute(
        f'SELECT fid, case_id, status, "{GEOMETRY_COLUMN}" AS geom, run_geom_hash, detected_wkb, first_seen, '
        f'last_seen, times_seen, max_confidence, community, evidence FROM "{CASES_TABLE}" ORDER BY fid'
    ).fetchall()
    cases = []
    for row in rows:
        geometry = decode_gpkg_geometry(row["geom"])
        detected = shapely.from_wkb(bytes(row["detected_wkb"])) if row["detected_wkb"] is not None else None
        cases.append(
            CaseRow(
                fid=row["fid"], case_id=row["case_id"], status=row["status"] or "new",
                geometry=geometry if geometry is not None else shapely.Polygon(), run_geom_hash=row["run_geom_hash"],
                detected=detected, first_seen=row["first_seen"], last_seen=row["last_seen"],
                times_seen=row["times_seen"] or 0, max_confidence=row["max_confidence"],
                community=row["community"], evidence=row["evidence"],
            )
        )
    return cases


def read_cases_frame(path: Path | str, *, keep_internal: bool = False) -> "geopandas.GeoDataFrame":
    """The cases layer as a GeoDataFrame in the registry CRS (for the report and the CLI).

    Parameters
    ----------
    path : Path
        The registry.
    keep_internal : bool
        Keep ``run_geom_hash`` and ``detected_wkb`` (bookkeeping columns).
    """
    import geopandas as gpd
    import pandas as pd

    conn = open_registry(path)
    try:
        crs = registry_crs(conn)
        frame = pd.read_sql_query(f'SELECT * FROM "{CASES_TABLE}" ORDER BY fid', conn)
    finally:
        conn.close()
    geometries = [decode_gpkg_geometry(blob) for blob in frame.pop(GEOMETRY_COLUMN)]
    if not keep_internal:
        frame = frame.drop(columns=["run_geom_hash", "detected_wkb"])
    return gpd.GeoDataFrame(frame, geometry=geometries, crs=crs)


# --------------------------------------------------------------------------- geometry helpers


def area_m2(geometry: BaseGeometry, crs) -> float:
    """Area in square metres in any CRS (geodesic on the WGS84 ellipsoid for geographic CRSs)."""
    if geometry is None or geometry.is_empty:
        return 0.0
    if crs.is_geographic:
        from pyproj import Geod

        return abs(Geod(ellps="WGS84").geometry_area_perimeter(geometry)[0])
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(geometry.area * factor * factor)


def lonlat_of(geometries: list[BaseGeometry], crs) -> np.ndarray:
    """(N, 2) WGS84 lon/lat of each geometry's representative point (inside the polygon)."""
    from pyproj import Transformer

    if not geometries:
        return np.zeros((0, 2))
    points = np.array([[p.x, p.y] for p in (g.representative_point() for g in geometries)])
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = transformer.transform(points[:, 0], points[:, 1])
    return np.column_stack([lon, lat])


def iou(a: BaseGeometry, b: BaseGeometry) -> float:
    """Intersection over union of two polygons (0 when either is empty or invalid)."""
    if a is None or b is None or a.is_empty or b.is_empty:
        return 0.0
    a = a if a.is_valid else shapely.make_valid(a)
    b = b if b.is_valid else shapely.make_valid(b)
    inter = a.intersection(b).area
    if inter <= 0:
        return 0.0
    return float(inter / a.union(b).area)


# --------------------------------------------------------------------------- boundaries


@dataclass
class Boundaries:
    """Community polygons in the registry CRS with their name and responsible unit."""

    geometries: list[BaseGeometry]
    names: list[str]
    units: list[Optional[str]]

    def locate(self, geometry: BaseGeometry) -> tuple[Optional[str], Optional[str]]:
        """(community, unit) containing the geometry's representative point, or the most overlapped one."""
        point = geometry.representative_point()
        for geom, name, unit in zip(self.geometries, self.names, self.units):
            if geom.contains(point):
                return name, unit
        best, best_area = None, 0.0
        for index, geom in enumerate(self.geometries):
            overlap = geom.intersection(geometry).area
            if overlap > best_area:
                best, best_area = index, overlap
        if best is None:
            return None, None
        return self.names[best], self.units[best]


def load_boundaries(path: Path, name_field: str, unit_field: Optional[str], crs) -> Boundaries:
    """Read a boundary layer (any OGR format and CRS) and reproject it to ``crs``.

    Raises
    ------
    InputError
        Missing/unreadable file, no CRS, or a missing name/unit field.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: boundary layer not found; fix cases.boundaries or remove it")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any OGR failure is a user-fixable input problem
        raise InputError(f"{path}: cannot read the boundary layer ({str(exc).splitlines()[0]}); give an OGR vector file") from None
    if frame.crs is None:
        raise InputError(f"{path}: boundary layer has no CRS; save it with a CRS (e.g. EPSG:4547)")
    for wanted, setting in ((name_field, "boundary_name_field"), (unit_field, "boundary_unit_field")):
        if wanted is not None and wanted not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != "geometry")
            raise InputError(f"{path}: no field '{wanted}' (fields: {fields}); set cases.{setting}")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty].to_crs(crs)
    geometries = [g if g.is_valid else shapely.make_valid(g) for g in frame.geometry]
    names = [str(v) for v in frame[name_field]]
    units = [None if v is None or v != v else str(v) for v in frame[unit_field]] if unit_field else [None] * len(frame)
    return Boundaries(geometries, names, units)


# --------------------------------------------------------------------------- the night's update


def _validate_candidates(candidates) -> None:
    missing = [c for c in REQUIRED_CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise InputError(f"candidates: missing column(s) {', '.join(missing)}; pass the 'candidates' layer of a run")
    if candidates.crs is None:
        raise InputError("candidates: no CRS; the candidates layer must carry the baseline CRS")


def _next_sequence(conn: sqlite3.Connection, id_prefix: str) -> int:
    """1 + the highest sequence number among case IDs starting with ``id_prefix`` (e.g. 'LG20240501-')."""
    pattern = re.compile(re.escape(id_prefix) + r"(\d+)$")
    highest = 0
    for (case_id,) in conn.execute(f'SELECT case_id FROM "{CASES_TABLE}" WHERE case_id LIKE ?', (id_prefix + "%",)):
        match = pattern.match(case_id)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def format_case_id(prefix: str, night: date, sequence: int) -> str:
    """``{prefix}{YYYYMMDD}-{seq:04d}``, e.g. ``LG20240501-0003``."""
    return f"{prefix}{night:%Y%m%d}-{sequence:04d}"


def _match_candidates(geometries: list[BaseGeometry], confidences: np.ndarray, cases: list[CaseRow], match_iou: float):
    """Assign every candidate to an existing case, or group it into a new case.

    Candidates are visited by decreasing confidence; a candidate joins the existing case (or
    the new group opened earlier tonight) with the highest IoU >= ``match_iou``, compared to
    both the case's current geometry and the geometry the run last detected for it.

    Returns
    -------
    matches : dict[int, list[Sighting]]
        index into ``cases`` -> sightings.
    groups : list[list[Sighting]]
        one list per new case; the first sighting is its strongest candidate.
    """
    from shapely.strtree import STRtree

    reference_geoms: list[BaseGeometry] = []
    reference_case: list[int] = []
    for index, case in enumerate(cases):
        for geom in (case.geometry, case.detected):
            if geom is not None and not geom.is_empty:
                reference_geoms.append(geom)
                reference_case.append(index)
    tree = STRtree(reference_geoms) if reference_geoms else None

    matches: dict[int, list[Sighting]] = {}
    groups: list[list[Sighting]] = []
    group_geoms: list[BaseGeometry] = []
    for cand in sorted(range(len(geometries)), key=lambda i: -float(confidences[i])):
        geom = geometries[cand]
        best_case, best_iou = None, 0.0
        if tree is not None:
            for ref in tree.query(geom):
                score = iou(geom, reference_geoms[ref])
                if score >= match_iou and score > best_iou:
                    best_case, best_iou = reference_case[ref], score
        best_group, best_group_iou = None, 0.0
        for g_index, g_geom in enumerate(group_geoms):
            score = iou(geom, g_geom)
            if score >= match_iou and score > best_group_iou:
                best_group, best_group_iou = g_index, score
        if best_case is not None and best_iou >= best_group_iou:
            matches.setdefault(best_case, []).append(Sighting(cand, best_iou))
        elif best_group is not None:
            groups[best_group].append(Sighting(cand, best_group_iou))
        else:
            groups.append([Sighting(cand, 1.0)])
            group_geoms.append(geom)
    return matches, groups


def _reading_order(geometry: BaseGeometry) -> tuple[float, float]:
    """Sort key for numbering new cases: north to south, then west to east (by centroid)."""
    point = geometry.centroid
    return (-round(point.y, 6), round(point.x, 6))


def update_registry(
    candidates: "geopandas.GeoDataFrame",
    config: "CasesConfig",
    *,
    run_id: str,
    night: date,
    baseline_path: Path,
    current_path: Path,
    out_dir: Path,
) -> RegistryUpdate:
    """Fold one night's candidates into the case registry, then write evidence, project and report.

    Parameters
    ----------
    candidates : geopandas.GeoDataFrame
        The run's ``candidates`` layer (any CRS; reprojected to the registry CRS).
    config : CasesConfig
        ``config.registry`` must be set.
    run_id : str
        The run's ID (stored on every case it touches).
    night : datetime.date
        The night of the survey (the current mosaic's date); gives new case IDs their date.
    baseline_path, current_path : Path
        The orthomosaics, for evidence chips and the QGIS project.
    out_dir : Path
        The run's output folder: ``report.html`` and ``report.csv`` go there.

    Returns
    -------
    RegistryUpdate
    """
    if config.registry is None:
        raise InputError("cases.registry is not set; give the path of cases.gpkg in the config")
    _validate_candidates(candidates)
    registry = Path(config.registry)
    if not registry.exists():
        create_registry(registry, candidates.crs)
    conn = open_registry(registry)
    try:
        crs = registry_crs(conn)
        srs_id = registry_srs_id(conn)
        frame = candidates if candidates.crs == crs else candidates.to_crs(crs)
        frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty].reset_index(drop=True)
        boundaries = (
            load_boundaries(config.boundaries, config.boundary_name_field, config.boundary_unit_field, crs)
            if config.boundaries is not None
            else None
        )
        result = RegistryUpdate(registry=registry, night=night, run_id=run_id)
        with write_transaction(conn):
            _apply_night(conn, frame, crs, srs_id, config, boundaries, run_id, night, result)
            conn.execute(
                f'INSERT INTO "{NIGHTS_TABLE}" (night, run_id, candidates, opened, updated, suppressed, total, '
                "baseline, current, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (night.isoformat(), run_id, len(frame), result.opened, result.updated, result.suppressed,
                 result.total, str(baseline_path), str(current_path), _now()),
            )
            conn.execute(
                f"UPDATE gpkg_contents SET last_change = ?, min_x = (SELECT MIN(minx) FROM rtree_{CASES_TABLE}_{GEOMETRY_COLUMN}), "
                f"min_y = (SELECT MIN(miny) FROM rtree_{CASES_TABLE}_{GEOMETRY_COLUMN}), "
                f"max_x = (SELECT MAX(maxx) FROM rtree_{CASES_TABLE}_{GEOMETRY_COLUMN}), "
                f"max_y = (SELECT MAX(maxy) FROM rtree_{CASES_TABLE}_{GEOMETRY_COLUMN}) WHERE table_name = ?",
                (_now(), CASES_TABLE),
            )
        if config.evidence:
            result.evidence_paths = _write_evidence(conn, registry, crs, result, baseline_path, current_path)
    finally:
        conn.close()

    from detector.review.qgis import write_qgis_project

    result.project_path = write_qgis_project(
        registry.with_suffix(".qgs"), registry=registry, crs=crs, baseline_path=Path(baseline_path),
        current_path=Path(current_path),
    )
    if config.report:
        from detector.review.report import write_report

        result.report_html, result.report_csv = write_report(
            registry, Path(out_dir), night=night, run_id=run_id, current_path=Path(current_path), update=result
        )
    log.info("cases: %d opened, %d updated, %d suppressed, %d in registry", result.opened, result.updated,
             result.suppressed, result.total)
    return result


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _candidate_value(frame, column: str, index: int, default=None):
    if column not in frame.columns:
        return default
    value = frame[column].iloc[index]
    if value is None or (isinstance(value, float) and value != value):
        return default
    return value.item() if hasattr(value, "item") else value


def _apply_night(conn, frame, crs, srs_id, config, boundaries, run_id, night, result) -> None:
    """Match, update and insert inside the open transaction; fills ``result``."""
    cases = read_cases(conn)
    geometries = [g if g.is_valid else shapely.make_valid(g) for g in frame.geometry]
    confidences = frame["confidence"].to_numpy(dtype=float) if len(frame) else np.zeros(0)
    matches, groups = _match_candidates(geometries, confidences, cases, config.match_iou)
    lonlats = lonlat_of(geometries, crs)
    night_iso = night.isoformat()

    for case_index, sightings in sorted(matches.items()):
        case = cases[case_index]
        suppressed = case.status in SUPPRESSING_STATUSES
        _update_case(conn, case, frame, geometries, lonlats, sightings, crs, srs_id, boundaries, run_id, night_iso)
        _record_sightings(conn, case.case_id, frame, sightings, run_id, night_iso, "suppressed" if suppressed else "updated")
        (result.suppressed_ids if suppressed else result.updated_ids).append(case.case_id)

    id_prefix = format_case_id(config.district_prefix, night, 0)[:-4]
    sequence = _next_sequence(conn, id_prefix)
    for group in sorted(groups, key=lambda g: _reading_order(geometries[g[0].candidate_index])):
        case_id = format_case_id(config.district_prefix, night, sequence)
        sequence += 1
        _insert_case(conn, case_id, frame, geometries, lonlats, group, crs, srs_id, boundaries, run_id, night_iso)
        _record_sightings(conn, case_id, frame, group, run_id, night_iso, "opened")
        result.opened_ids.append(case_id)

    result.opened = len(result.opened_ids)
    result.updated = len(result.updated_ids)
    result.suppressed = len(result.suppressed_ids)
    result.total = conn.execute(f'SELECT COUNT(*) FROM "{CASES_TABLE}"').fetchone()[0]


def _strongest(frame, sightings: list[Sighting]) -> Sighting:
    return max(sightings, key=lambda s: (float(frame["confidence"].iloc[s.candidate_index]), s.iou))


def _run_fields(geometry, lonlat, crs, boundaries, frame, index, srs_id) -> dict:
    """Run-owned fields derived from one candidate's geometry (``lonlat``: its WGS84 point)."""
    lon, lat = lonlat
    fields = {
        GEOMETRY_COLUMN: encode_gpkg_geometry(geometry, srs_id),
        "run_geom_hash": geometry_hash(geometry),
        "area_m2": round(area_m2(geometry, crs), 2),
        "lon": round(float(lon), 8),
        "lat": round(float(lat), 8),
        "class": _candidate_value(frame, "class", index),
    }
    if boundaries is not None:
        fields["community"], fields["unit"] = boundaries.locate(geometry)
    return fields


def _update_case(conn, case: CaseRow, frame, geometries, lonlats, sightings, crs, srs_id, boundaries, run_id,
                 night_iso) -> None:
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
        "model_name": _candidate_value(frame, "model_name", index),
        "tags": _candidate_value(frame, "tags", index, ""),
        "detected_wkb": shapely.to_wkb(geometries[index], byte_order=1, output_dimension=2),
    }
    if case.operator_edited:
        fields["geometry_edited"] = 1
        if boundaries is not None and not case.community:
            fields["community"], fields["unit"] = boundaries.locate(case.geometry)
    else:
        fields.update(_run_fields(geometries[index], lonlats[index], crs, boundaries, frame, index, srs_id))
        fields["geometry_edited"] = 0
    assignments = ", ".join(f'"{name}" = ?' for name in fields)
    conn.execute(f'UPDATE "{CASES_TABLE}" SET {assignments} WHERE fid = ?', (*fields.values(), case.fid))


def _insert_case(conn, case_id, frame, geometries, lonlats, group, crs, srs_id, boundaries, run_id, night_iso) -> None:
    strongest = _strongest(frame, group)
    index = strongest.candidate_index
    confidence = float(frame["confidence"].iloc[index])
    fields = _run_fields(geometries[index], lonlats[index], crs, boundaries, frame, index, srs_id)
    fields.update(
        {
            "case_id": case_id,
            "status": "new",
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
            "model_name": _candidate_value(frame, "model_name", index),
            "geometry_edited": 0,
            "detected_wkb": shapely.to_wkb(geometries[index], byte_order=1, output_dimension=2),
        }
    )
    names = ", ".join(f'"{name}"' for name in fields)
    marks = ", ".join("?" for _ in fields)
    conn.execute(f'INSERT INTO "{CASES_TABLE}" ({names}) VALUES ({marks})', tuple(fields.values()))


def _record_sightings(conn, case_id, frame, sightings, run_id, night_iso, outcome) -> None:
    conn.executemany(
        f'INSERT OR REPLACE INTO "{SIGHTINGS_TABLE}" (case_id, night, run_id, candidate_id, confidence, iou, outcome) '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (case_id, night_iso, run_id, str(_candidate_value(frame, "candidate_id", s.candidate_index, "")),
             float(frame["confidence"].iloc[s.candidate_index]), round(s.iou, 4), outcome)
            for s in sightings
        ],
    )


def _write_evidence(conn, registry: Path, crs, result: RegistryUpdate, baseline_path, current_path) -> list[Path]:
    """Before/after chips for the cases opened tonight and any case whose chip is missing."""
    from detector.review.evidence import write_evidence_chip

    written = []
    night_label = result.night.isoformat()
    for case in read_cases(conn):
        if not case.evidence:
            continue
        target = registry.parent / case.evidence
        if case.case_id not in result.opened_ids and target.exists():
            continue
        try:
            write_evidence_chip(
                target, case.geometry, crs, Path(baseline_path), Path(current_path),
                title=f"{case.case_id}  first seen {case.first_seen or night_label}",
            )
            written.append(target)
        except InputError as exc:
            log.warning("evidence for %s not written: %s", case.case_id, exc)
    return written
