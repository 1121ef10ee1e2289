"""The historical backlog: buildings illegal before the zero-increment target, imported as ``legacy`` cases.

``buildwatch cases import LAYER`` (:func:`import_legacy`) reads any OGR layer of outlines (a
GeoPackage, a shapefile, GeoJSON; any CRS, reprojected to the registry's) with optional ID, note
and community fields, checks all of it before anything is written (one line naming the file, the
feature and what to do), and registers every outline in ONE transaction as a case with

* ``origin`` ``legacy`` (:data:`~detector.review.vocab.ORIGIN_LEGACY`; where a case came from is
  its origin, and the lifecycle stays the one lifecycle): ``status`` ``confirmed_illegal``, so it
  walks ``demolition_ordered`` -> ``demolished`` -> ``demolition_verified`` like any case, with
  the same demolition alerts;
* an ID ``{prefix}{YYYYMMDD}-L{nnnn}`` (the registry's latest night, like a drawn case's) and the
  layer's own ID in ``source_id`` (a second import of the same IDs is refused);
* ``first_seen`` that night, ``times_seen`` 0, the outline as the operator's
  (``geometry_edited``: the nightly run keeps it), ``area_m2`` / ``lon`` / ``lat`` from it, the
  note, the community when the layer has one (else the next night's boundaries give it), and an
  evidence path (the next night draws the chip);
* ``edited_by`` the OS user (:func:`detector.review.triggers.os_editor`): the history's
  ``created`` row says who imported it.

A later night matches these cases like any other and never opens them as new; the nightly
report counts them per community as the legacy backlog and the legacy cases cleared
(:mod:`detector.review.report`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import shapely

from detector.clock import utc_now
from detector.errors import InputError
from detector.geo.crs import area_m2, check_crs, lonlat_of
from detector.review import gpkg
from detector.review.registry import (
    _refresh_schema,
    open_registry,
    registry_crs,
    registry_srs_id,
)
from detector.review.triggers import district_prefix_of, os_editor
from detector.review.vocab import (
    CASES_TABLE,
    CONFIRMED_ILLEGAL,
    GEOMETRY_COLUMN,
    LEGACY_ID_MARK,
    NIGHTS_TABLE,
    ORIGIN_LEGACY,
)


@dataclass
class LegacyImport:
    """What an import registered: the new case IDs, in the layer's order, and the night they count from."""

    registry: Path
    night: str
    case_ids: list[str] = field(default_factory=list)


def read_legacy_layer(
    path: Path,
    layer: str | None = None,
    id_field: str | None = None,
    note_field: str | None = None,
    community_field: str | None = None,
):
    """Read and check a layer of legacy outlines; every problem is an :class:`InputError` (one line).

    Parameters
    ----------
    path : Path
        Any OGR vector file.
    layer : str, optional
        The layer's name (required when the file has several).
    id_field, note_field, community_field : str, optional
        Fields holding the outline's own ID, a note, the community name.

    Returns
    -------
    geopandas.GeoDataFrame
        Polygons (a one-part multipolygon as its polygon), with the CRS of the file.
    """
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: file not found; give a vector layer of outlines (GPKG, SHP, GeoJSON)"
        )
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises its own DataSourceError / DataLayerError
        raise InputError(
            f"{path}: not a readable vector layer ({str(exc).splitlines()[0]}); give a GPKG, SHP or GeoJSON of outlines"
        ) from None
    if not layers:
        raise InputError(f"{path}: no vector layer in it; give a GPKG, SHP or GeoJSON of outlines")
    if layer is None and len(layers) > 1:
        raise InputError(f"{path}: has layers {', '.join(layers)}; choose one with --layer")
    if layer is not None and layer not in layers:
        raise InputError(f"{path}: no layer '{layer}' (--layer); it has {', '.join(layers)}")
    try:
        frame = pyogrio.read_dataframe(path, layer=layer)
    except Exception as exc:  # pyogrio's own errors (a broken file, an unsupported geometry)
        raise InputError(
            f"{path}: cannot read its outlines ({str(exc).splitlines()[0]}); export the layer "
            "again (QGIS: Export > Save Features As)"
        ) from None
    named = {
        "--id-field": id_field,
        "--note-field": note_field,
        "--community-field": community_field,
    }
    for option, name in named.items():
        if name is not None and name not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != "geometry") or "none"
            raise InputError(f"{path}: no field '{name}' ({option}); its fields: {fields}")
    if frame.crs is None:
        raise InputError(
            f"{path}: the layer has no CRS; assign one (QGIS: Assign projection) and import again"
        )
    check_crs(frame.crs, f"{path}: legacy layer")  # the one CRS rule: no LOCAL_CS site grid
    if not len(frame):
        raise InputError(f"{path}: the layer has no features; nothing to import")
    problems = []
    geometries = []
    for number, geometry in enumerate(frame.geometry, start=1):
        label = f"feature {number}" + (
            f" (id {frame[id_field].iloc[number - 1]})" if id_field else ""
        )
        if geometry is None or geometry.is_empty:
            problems.append(f"{label} has no geometry")
        elif geometry.geom_type == "MultiPolygon" and len(geometry.geoms) == 1:
            geometry = geometry.geoms[0]
        if geometry is not None and not geometry.is_empty:
            if geometry.geom_type != "Polygon":
                problems.append(f"{label} is a {geometry.geom_type}, not one polygon per building")
            elif not geometry.is_valid:
                problems.append(
                    f"{label} is not a valid polygon ({shapely.is_valid_reason(geometry)})"
                )
        geometries.append(geometry)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(
            f"{path}: {problems[0]}{more}; fix the outlines (QGIS: Fix geometries, Multipart to "
            "singleparts) and import again; nothing was imported"
        )
    if id_field is not None:
        ids = [i for i in (_text(v) for v in frame[id_field]) if i is not None]  # as stored
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise InputError(
                f"{path}: id {repeated[0]} ({id_field}) is on several outlines; give each one its own ID"
            )
    frame = frame.set_geometry(geometries, crs=frame.crs)
    return frame


def _night_of(conn) -> str:
    """The registry's latest night (ISO date), else today UTC."""
    row = conn.execute(f'SELECT max(night) FROM "{NIGHTS_TABLE}"').fetchone()
    return row[0] or datetime.now(timezone.utc).date().isoformat()


def _next_legacy_number(conn, id_base: str) -> int:
    pattern = re.compile(re.escape(id_base) + r"(\d+)$")
    numbers = [
        int(m.group(1))
        for (case_id,) in conn.execute(
            f'SELECT case_id FROM "{CASES_TABLE}" WHERE substr(case_id, 1, ?) = ?',
            (len(id_base), id_base),
        )
        if (m := pattern.match(case_id))
    ]
    return max(numbers, default=0) + 1


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def import_legacy(
    registry: Path,
    frame,
    *,
    id_field: str | None = None,
    note_field: str | None = None,
    community_field: str | None = None,
    editor: str | None = None,
    source: Path | None = None,
) -> LegacyImport:
    """Register checked outlines (:func:`read_legacy_layer`) as ``legacy`` cases, in one transaction.

    Parameters
    ----------
    registry : Path
        An existing case registry (a nightly run creates it).
    frame : geopandas.GeoDataFrame
        From :func:`read_legacy_layer`; reprojected to the registry's CRS.
    id_field, note_field, community_field : str, optional
        As given to :func:`read_legacy_layer`.
    editor : str, optional
        Who imports (the history's ``changed_by``); the OS user by default.
    source : Path, optional
        The layer's file, named in a refusal.

    Returns
    -------
    LegacyImport

    Raises
    ------
    InputError
        No registry, or an ID already imported (nothing is written).
    """
    registry = Path(registry)
    conn = open_registry(registry)
    try:
        crs = registry_crs(conn)
        srs_id = registry_srs_id(conn)
        frame = frame if frame.crs == crs else frame.to_crs(crs)
        invalid = [i + 1 for i, g in enumerate(frame.geometry) if not g.is_valid or g.is_empty]
        if invalid:  # reprojection can break a polygon that was valid in its own CRS
            raise InputError(
                f"{source or 'legacy layer'}: feature {invalid[0]} is not a valid polygon in the "
                "registry's CRS; fix it and import again"
            )
        source_ids = [_text(v) for v in frame[id_field]] if id_field else [None] * len(frame)
        lonlats = lonlat_of(list(frame.geometry), crs)
        areas = area_m2(list(frame.geometry), crs)
        night = _night_of(conn)
        result = LegacyImport(registry=registry, night=night)
        who = editor or os_editor()
        with gpkg.write_transaction(conn):
            # inside the write lock: two imports of one layer at once cannot both pass (a refusal
            # here rolls back, nothing is written)
            known = {
                row[0]: row[1]
                for row in conn.execute(
                    f'SELECT source_id, case_id FROM "{CASES_TABLE}" WHERE source_id IS NOT NULL'
                )
            }
            again = [s for s in source_ids if s is not None and s in known]
            if again:
                raise InputError(
                    f"{registry}: id {again[0]} ({id_field}) is already case {known[again[0]]}; "
                    "it was imported before (nothing was imported)"
                )
            prefix = district_prefix_of(conn)
            _refresh_schema(conn, crs, prefix)
            id_base = f"{prefix}{date.fromisoformat(night):%Y%m%d}-{LEGACY_ID_MARK}"
            number = _next_legacy_number(conn, id_base)
            for index, geometry in enumerate(frame.geometry):
                case_id = f"{id_base}{number:04d}"
                number += 1
                lon, lat = lonlats[index]
                fields = {
                    GEOMETRY_COLUMN: gpkg.encode_gpkg_geometry(geometry, srs_id),
                    "case_id": case_id,
                    "status": CONFIRMED_ILLEGAL,
                    "origin": ORIGIN_LEGACY,
                    "source_id": source_ids[index],
                    "note": _text(frame[note_field].iloc[index]) if note_field else None,
                    "community": _text(frame[community_field].iloc[index])
                    if community_field
                    else None,
                    "area_m2": round(float(areas[index]), 2),
                    "lon": round(float(lon), 8),
                    "lat": round(float(lat), 8),
                    "first_seen": night,
                    "times_seen": 0,
                    "geometry_edited": 1,
                    "evidence": f"evidence/{case_id}.png",
                    "edited_by": who,
                }
                names = ", ".join(f'"{name}"' for name in fields)
                marks = ", ".join("?" for _ in fields)
                conn.execute(
                    f'INSERT INTO "{CASES_TABLE}" ({names}) VALUES ({marks})',
                    tuple(fields.values()),
                )
                result.case_ids.append(case_id)
            gpkg.update_extent(conn, CASES_TABLE, GEOMETRY_COLUMN, utc_now("milliseconds"))
    finally:
        conn.close()
    return result
