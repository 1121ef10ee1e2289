"""A small GeoPackage 1.2 storage engine on plain :mod:`sqlite3` (no GDAL needed to write).

It knows GeoPackage, not cases: the geometry blob codec, the SQL functions the R-tree triggers
call (``ST_IsEmpty``, ``ST_MinX`` ...; GDAL/QGIS register their own), connections in WAL mode
with a busy timeout and retried write transactions (so a QGIS reviewer can save edits while a
run writes), the core tables (application id ``GPKG``, user_version 10200,
``gpkg_spatial_ref_sys``, ``gpkg_contents``, ``gpkg_geometry_columns``, ``gpkg_extensions``),
feature tables with the R-tree spatial index extension and its six standard triggers, and the
QGIS ``layer_styles`` table (the one DDL and the one INSERT of a default style).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
GPKG_USER_VERSION = 10200  # GeoPackage 1.2 (QGIS 3.22 warns about 1.4)

_BUSY_TIMEOUT_S = 30.0
#: Longest total wait for another program's write lock (:func:`write_transaction`); the run
#: sets it from ``cases.lock_wait_s`` with :func:`lock_wait`.
DEFAULT_LOCK_WAIT_S = 120.0
_lock_wait_s = DEFAULT_LOCK_WAIT_S
POLL_S = 0.1  # one slice of a lock wait: signals (SIGTERM) are acted on between slices


# --------------------------------------------------------------------------- geometry blobs


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
    """Decode a GeoPackage geometry blob (any envelope, either byte order) to shapely.

    Parameters
    ----------
    blob : bytes or None

    Returns
    -------
    shapely geometry or None
    """
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
    """Register the SQL functions the GeoPackage R-tree triggers call (ST_IsEmpty, ST_MinX ...).

    Parameters
    ----------
    conn : sqlite3.Connection
    """
    conn.create_function("ST_IsEmpty", 1, _st_is_empty, deterministic=True)
    for index, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, _st_bound(index), deterministic=True)


# --------------------------------------------------------------------------- connections


def connect(path: Path | str, read_only: bool = False) -> sqlite3.Connection:
    """Open a GeoPackage for reading and writing: WAL journal, busy timeout, GPKG functions.

    Parameters
    ----------
    path : Path
        The GeoPackage.
    read_only : bool
        Open with ``mode=ro`` and leave the journal mode alone: nothing is written (a foreign
        file is not switched to WAL, an empty file not turned into a database); on read-only
        storage where even that fails, ``immutable=1``.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (``isolation_level=None``); use :func:`write_transaction`.
    """
    if read_only:
        from urllib.parse import quote

        uri = f"file:{quote(str(Path(path).resolve()))}"
        # No -wal beside it: no writer is active and everything is in the main file, which is read
        # as immutable (mode=ro would create -wal/-shm for a WAL-mode file and leave them behind).
        # A -wal present: a writer (QGIS, a run) may be active; share its -shm with mode=ro.
        wal = Path(str(path) + "-wal").exists()
        try:
            conn = sqlite3.connect(
                f"{uri}?{'mode=ro' if wal else 'immutable=1'}",
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
            )
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:  # read-only storage where no -shm can be made
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        conn.row_factory = sqlite3.Row
        register_gpkg_functions(conn)
        return conn
    conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    register_gpkg_functions(conn)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if mode.lower() != "wal":
        with contextlib.suppress(
            sqlite3.OperationalError
        ):  # another connection holds it; retry later
            conn.execute("PRAGMA journal_mode = WAL")
    return conn


@contextlib.contextmanager
def lock_wait(seconds: float) -> Iterator[None]:
    """Bound every wait for another program's write lock to ``seconds`` in total, for the block."""
    global _lock_wait_s
    old, _lock_wait_s = _lock_wait_s, float(seconds)
    try:
        yield
    finally:
        _lock_wait_s = old


def write_lock_holder(path: Path | str) -> int | None:
    """PID of another process holding SQLite's write lock on the database ``path``, or None.

    Asks the kernel (``F_GETLK``) about the byte SQLite locks for a writer: the WAL write lock
    (byte 120 of ``-shm``) in WAL mode, the RESERVED byte of the database file otherwise. Nothing
    is locked or written. The calling process's own locks are not reported (POSIX locks).
    """
    import fcntl
    import sys

    if sys.platform != "linux":  # struct flock's layout below is Linux's
        return None
    path = Path(path)
    probes = [(Path(str(path) + "-shm"), 120), (path, 0x40000001)]  # WAL write / RESERVED byte
    for file, offset in probes:
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue
        try:
            query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
            l_type, _, _, _, pid = struct.unpack("hhqqi4x", answer)
        except OSError:
            continue
        finally:
            os.close(fd)
        if l_type != fcntl.F_UNLCK and pid > 0:
            return pid
    return None


def describe_holder(pid: int | None) -> str:
    """``"pid 123 (qgis)"`` for a lock holder, ``"another program"`` when unknown."""
    if pid is None:
        return "another program"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = ""
    return f"pid {pid}" + (f" ({name})" if name else "")


def locked_error(path: Path | str, waited_s: float):
    """The one line for a registry another program keeps locked past the limit."""
    from detector.errors import OutputError

    holder = describe_holder(write_lock_holder(path))
    return OutputError(
        f"{path}: {holder} holds a write lock on it and did not release it within "
        f"{waited_s:g} s (cases.lock_wait_s); end that program's edit session (QGIS: save or "
        "stop editing) and rerun"
    )


def _db_path(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row is not None else "?"


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error), retrying while another writer holds the lock.

    Parameters
    ----------
    conn : sqlite3.Connection
        A connection from :func:`connect` (autocommit mode).

    Yields
    ------
    sqlite3.Connection
        The same connection, inside the transaction.
    """
    _locked_retry(conn, "BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    # COMMIT waits for readers to leave (a registry in rollback-journal mode, QGIS reading)
    try:
        _locked_retry(conn, "COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _locked_retry(conn: sqlite3.Connection, sql: str) -> None:
    """Run ``sql`` until another program's lock lets it, at most ``_lock_wait_s`` in all, then
    one line naming the holder (:func:`locked_error`). The busy timeout is cut into short slices
    meanwhile: SQLite waits inside C, where no Python signal handler (SIGTERM) runs."""
    deadline = time.monotonic() + _lock_wait_s
    busy_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {int(POLL_S * 1000)}")
    try:
        while True:
            try:
                conn.execute(sql)
                return
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise locked_error(_db_path(conn), _lock_wait_s) from None
                time.sleep(POLL_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")


def create_geopackage(path: Path, build: Callable[[sqlite3.Connection], None]) -> None:
    """Create a GeoPackage atomically: ``build`` fills a private temp file, which then replaces ``path``.

    Parameters
    ----------
    path : Path
        The target; its folder is created.
    build : callable
        Called with an autocommit connection (GPKG SQL functions registered) to the empty
        temp file; it creates every table. No transaction is needed: nobody else sees the file.
        The file is switched to WAL journal mode afterwards.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        conn = sqlite3.connect(tmp_name, isolation_level=None)
        register_gpkg_functions(conn)
        try:
            build(conn)
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        os.replace(tmp_name, path)
    except BaseException:
        for leftover in (tmp_name, tmp_name + "-wal", tmp_name + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise


# --------------------------------------------------------------------------- schema


def _srs_row(crs) -> tuple[int, str, str, int, str]:
    """(srs_id, srs_name, organization, org_coordsys_id, definition) for a pyproj CRS."""
    epsg = crs.to_epsg()
    definition = crs.to_wkt("WKT1_GDAL")
    if epsg is not None:
        return epsg, crs.name, "EPSG", epsg, definition
    return 100000, crs.name or "custom", "NONE", 100000, definition


def create_core_tables(conn: sqlite3.Connection, crs) -> int:
    """Mark the file as a GeoPackage 1.2 and create its core tables with the SRS rows for ``crs``.

    Parameters
    ----------
    conn : sqlite3.Connection
        A connection to an empty SQLite file.
    crs : pyproj.CRS
        The CRS the layers will use (EPSG code when it has one, else a custom ``srs_id`` 100000).

    Returns
    -------
    int
        The ``srs_id`` to give :func:`create_feature_table` and :func:`encode_gpkg_geometry`.
    """
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
        (
            "Undefined cartesian SRS",
            -1,
            "NONE",
            -1,
            "undefined",
            "undefined cartesian coordinate reference system",
        ),
        (
            "Undefined geographic SRS",
            0,
            "NONE",
            0,
            "undefined",
            "undefined geographic coordinate reference system",
        ),
        (
            "WGS 84 geodetic",
            4326,
            "EPSG",
            4326,
            'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
            'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
            'AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]',
            "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid",
        ),
    ]
    if srs_id not in (-1, 0, 4326):
        srs_rows.append((srs_name, srs_id, organization, org_id, definition, ""))
    conn.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", srs_rows)
    return srs_id


def create_feature_table(
    conn: sqlite3.Connection,
    table: str,
    geometry_column: str,
    geometry_type: str,
    columns: tuple[tuple[str, str], ...],
    srs_id: int,
    description: str,
) -> None:
    """A feature table (``fid`` primary key, one geometry column) registered in the core tables, with an R-tree.

    Parameters
    ----------
    conn : sqlite3.Connection
    table, geometry_column : str
    geometry_type : str
        GeoPackage geometry type name, e.g. ``POLYGON``.
    columns : tuple of (name, SQL type)
        The attribute columns, in order.
    srs_id : int
        From :func:`create_core_tables`.
    description : str
        For ``gpkg_contents``.
    """
    column_sql = ",\n".join(f'"{name}" {sql_type}' for name, sql_type in columns)
    conn.execute(
        f'CREATE TABLE "{table}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
        f'"{geometry_column}" {geometry_type}, {column_sql})'
    )
    conn.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
        "VALUES (?, 'features', ?, ?, ?)",
        (table, table, description, srs_id),
    )
    conn.execute(
        f"INSERT INTO gpkg_geometry_columns VALUES (?, ?, '{geometry_type}', ?, 0, 0)",
        (table, geometry_column, srs_id),
    )
    _create_rtree(conn, table, geometry_column, "fid")


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
        "INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', "
        "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
        (table, column),
    )


def register_attributes_table(conn: sqlite3.Connection, table: str, description: str) -> None:
    """List an existing non-spatial table in ``gpkg_contents`` (``data_type`` 'attributes').

    Parameters
    ----------
    conn : sqlite3.Connection
    table, description : str
    """
    conn.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description) VALUES (?, 'attributes', ?, ?)",
        (table, table, description),
    )


def layer_srs(conn: sqlite3.Connection, table: str):
    """The pyproj CRS of a feature table, or None when the table is not a feature table.

    Parameters
    ----------
    conn : sqlite3.Connection
        With ``row_factory = sqlite3.Row`` (as :func:`connect` sets).
    table : str

    Returns
    -------
    pyproj.CRS or None
    """
    from pyproj import CRS

    row = conn.execute(
        "SELECT s.organization, s.organization_coordsys_id, s.definition FROM gpkg_geometry_columns g "
        "JOIN gpkg_spatial_ref_sys s ON s.srs_id = g.srs_id WHERE g.table_name = ?",
        (table,),
    ).fetchone()
    if row is None:
        return None
    if row["organization"].upper() == "EPSG":
        return CRS.from_epsg(row["organization_coordsys_id"])
    return CRS.from_wkt(row["definition"])


def layer_srs_id(conn: sqlite3.Connection, table: str) -> int:
    """The ``srs_id`` of a feature table's geometry column.

    Parameters
    ----------
    conn : sqlite3.Connection
    table : str

    Returns
    -------
    int
    """
    return conn.execute(
        "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (table,)
    ).fetchone()[0]


def update_extent(
    conn: sqlite3.Connection, table: str, geometry_column: str, last_change: str
) -> None:
    """Set a feature table's ``gpkg_contents`` extent from its R-tree and its ``last_change``.

    Parameters
    ----------
    conn : sqlite3.Connection
    table, geometry_column : str
    last_change : str
        ISO timestamp (``%Y-%m-%dT%H:%M:%S.%fZ`` style).
    """
    rtree = f"rtree_{table}_{geometry_column}"
    conn.execute(
        f"UPDATE gpkg_contents SET last_change = ?, min_x = (SELECT MIN(minx) FROM {rtree}), "
        f"min_y = (SELECT MIN(miny) FROM {rtree}), "
        f"max_x = (SELECT MAX(maxx) FROM {rtree}), "
        f"max_y = (SELECT MAX(maxy) FROM {rtree}) WHERE table_name = ?",
        (last_change, table),
    )
