"""The case registry checked for content before a night's tiles run, read-only.

:func:`check_registry` is what the run's preparation (:mod:`detector.run.prepare`) calls on an
existing ``cases.registry``. On top of :func:`~detector.review.registry.open_registry`'s shape
checks (SQLite, a buildwatch ``cases`` layer) it reads every case and refuses, with one line
naming the file, the case and what to do:

* a layer CRS that is missing, unreadable or not on the Earth (:func:`detector.geo.crs.check_crs`,
  the one CRS rule: a LOCAL_CS site grid is refused);
* a geometry stored in another SRS than the layer's ``gpkg_geometry_columns.srs_id`` says (the
  blob's own ``srs_id``), or coordinates that lie outside the area of the layer's CRS (the
  ``srs_id`` was edited without reprojecting);
* a geometry that is missing, empty, undecodable or holds non-finite coordinates.

So a registry problem is found before a tile runs and is never half-applied. Then it waits,
bounded by ``cases.lock_wait_s``, while another program (QGIS saving edits, a second run)
holds the registry's write lock; a lock kept past the limit is exit 2 naming the holder. The
wait polls, so SIGTERM is acted on within a tenth of a second. Nothing is written: the
connection is read-only and the lock is only asked about (:func:`gpkg.write_lock_holder`).
"""

from __future__ import annotations

import math
import struct
import time
from pathlib import Path

import numpy as np
import shapely

from detector.errors import InputError
from detector.geo.crs import check_crs
from detector.review import gpkg
from detector.review.vocab import CASES_TABLE

__all__ = ["check_registry", "check_registry_content", "wait_for_registry_lock"]

#: How far (degrees) a case may lie outside its CRS's published area of use.
AREA_OF_USE_MARGIN_DEG = 2.0


def check_registry(path: Path | str, lock_wait_s: float = gpkg.DEFAULT_LOCK_WAIT_S) -> None:
    """The registry at ``path`` is a buildwatch registry whose content a night can use, and no
    other program keeps it locked for longer than ``lock_wait_s`` seconds.

    Raises
    ------
    InputError
        The file, the case (``case_id``/fid) and what to do.
    OutputError
        The write lock is held past ``lock_wait_s`` (the message names the holder).
    """
    check_registry_content(path)
    wait_for_registry_lock(path, lock_wait_s)


def check_registry_content(path: Path | str) -> None:
    """Content checks of an existing registry (see the module docstring), read-only."""
    from detector.review.registry import open_registry

    path = Path(path)
    conn = open_registry(path, read_only=True)
    try:
        layer_srs_id, crs = _layer_crs(conn, path)
        rows = conn.execute(
            f'SELECT fid, case_id, geom FROM "{CASES_TABLE}" ORDER BY fid'
        ).fetchall()
    finally:
        conn.close()
    centres = []
    for fid, case_id, blob in rows:
        name = f"case {case_id or '(no id)'} (fid {fid})"
        fix = "draw its outline in QGIS or delete the case, then rerun"
        if blob is None:
            raise InputError(f"{path}: {name} has no geometry; {fix}")
        try:
            _, _, empty, _, _ = gpkg._gpkg_header(bytes(blob))
            blob_srs_id = struct.unpack_from("<i" if blob[3] & 1 else ">i", bytes(blob), 4)[0]
            geometry = gpkg.decode_gpkg_geometry(bytes(blob))
        except (ValueError, struct.error, shapely.errors.ShapelyError) as exc:
            raise InputError(
                f"{path}: {name} has a geometry that cannot be decoded ({str(exc)[:80]}); {fix}"
            ) from None
        if blob_srs_id not in (layer_srs_id, 0, -1):
            raise InputError(
                f"{path}: {name} is stored in SRS {blob_srs_id} but gpkg_geometry_columns.srs_id "
                f"of the '{CASES_TABLE}' layer says {layer_srs_id} ({crs.name}); the layer's CRS was "
                f"changed without reprojecting its cases: set srs_id back to {blob_srs_id} (or "
                "reproject the layer in QGIS) and rerun"
            )
        if empty or geometry is None or geometry.is_empty:
            raise InputError(f"{path}: {name} has an empty geometry; {fix}")
        coords = shapely.get_coordinates(geometry)
        if not np.isfinite(coords).all():
            raise InputError(f"{path}: {name} has non-finite (NaN/inf) coordinates; {fix}")
        centre = shapely.centroid(geometry)
        centres.append((name, centre.x, centre.y))
    _check_in_area_of_use(path, crs, layer_srs_id, centres)


def wait_for_registry_lock(path: Path | str, lock_wait_s: float) -> None:
    """Return once no other process holds the registry's write lock; after ``lock_wait_s``
    seconds, raise :class:`~detector.errors.OutputError` naming the holder."""
    deadline = time.monotonic() + lock_wait_s
    while gpkg.write_lock_holder(path) is not None:
        if time.monotonic() >= deadline:
            raise gpkg.locked_error(path, lock_wait_s)
        time.sleep(gpkg.POLL_S)


def _layer_crs(conn, path: Path):
    row = conn.execute(
        "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (CASES_TABLE,)
    ).fetchone()
    if row is None:
        raise InputError(
            f"{path}: the '{CASES_TABLE}' layer is not registered in gpkg_geometry_columns; "
            "point cases.registry at a buildwatch cases.gpkg"
        )
    srs_id = int(row[0])
    try:
        crs = gpkg.layer_srs(conn, CASES_TABLE)
    except Exception as exc:  # noqa: BLE001 - pyproj's CRS errors come as several types
        raise InputError(
            f"{path}: the '{CASES_TABLE}' layer's SRS {srs_id} cannot be read ({str(exc)[:80]}); "
            "fix gpkg_spatial_ref_sys or restore the registry from a backup"
        ) from None
    if crs is None:
        raise InputError(
            f"{path}: the '{CASES_TABLE}' layer's srs_id {srs_id} is not in gpkg_spatial_ref_sys; "
            "set it to the SRS its cases are stored in"
        )
    return srs_id, check_crs(crs, f"{path}: case registry")


def _check_in_area_of_use(path: Path, crs, srs_id: int, centres: list) -> None:
    """Every case centre lies (within a margin) in the area where ``crs`` is defined."""
    from pyproj import Transformer

    area = crs.area_of_use
    if area is None or not centres:
        return
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    m = AREA_OF_USE_MARGIN_DEG
    for name, x, y in centres:
        lon, lat = to_ll.transform(x, y)
        if crs.is_geographic:  # axis order as stored: x = lon
            lon, lat = x, y
        inside = (
            math.isfinite(lon)
            and math.isfinite(lat)
            and area.west - m <= lon <= area.east + m
            and area.south - m <= lat <= area.north + m
        )
        if area.west > area.east:  # an area crossing the antimeridian
            inside = (
                math.isfinite(lon)
                and math.isfinite(lat)
                and area.south - m <= lat <= area.north + m
            )
        if not inside:
            raise InputError(
                f"{path}: {name} lies at ({x:.6g}, {y:.6g}), outside the area of the layer's CRS "
                f"{crs.name} (srs_id {srs_id} in gpkg_geometry_columns); srs_id disagrees with the "
                "geometries: set it to the SRS they were drawn in and rerun"
            )
