"""Write the night's results: ``candidates.gpkg`` (layers ``candidates``, ``tiles``, table ``runs``).

The GeoPackage is built in a temporary file beside the target and renamed into place, so a
failed or killed run never leaves a half-written file. GeoPackage 1.2 (QGIS 3.22 warns about
1.4), with an R-tree spatial index on each layer.
"""

from __future__ import annotations

import json
from pathlib import Path

from detector.fileio import atomic_path
from detector.styles import (
    CANDIDATE_LABEL,
    CLASS_STYLE,
    TILE_FILL_ALPHA,
    TILE_LABEL,
    TILE_STATUS_STYLE,
    simple_layer_qml,
    write_default_styles,
)
from detector.types import CANDIDATE_COLUMNS, NULLABLE_REAL_COLUMNS, Candidate, Tile, TileResult

#: Columns of the ``candidates`` layer (the one schema: :class:`detector.types.Candidate`).
CANDIDATE_FIELDS = list(CANDIDATE_COLUMNS)


def candidates_frame(candidates: list[Candidate], crs):
    """The ``candidates`` layer as a GeoDataFrame: one row per :class:`Candidate`, columns in schema order.

    Parameters
    ----------
    candidates : list of Candidate
        Finished candidates, geometry in ``crs``.
    crs : str or pyproj.CRS
        The output (baseline) CRS.
    """
    import geopandas as gpd

    frame = gpd.GeoDataFrame(
        [c.row() for c in candidates],
        columns=CANDIDATE_FIELDS,
        geometry=[c.geometry for c in candidates],
        crs=crs,
    )
    for col in NULLABLE_REAL_COLUMNS:  # None -> NaN, written as NULL in a REAL column
        frame[col] = frame[col].astype(float)
    return frame


def tiles_frame(results: list[TileResult], tiles: dict[str, Tile], grid):
    """The ``tiles`` layer as a GeoDataFrame: every processed tile with its status, in the output CRS.

    Parameters
    ----------
    results : list of TileResult
    tiles : dict
        Tile ID -> :class:`Tile` (its bounds in the working CRS).
    grid : detector.night.mosaic.WorkingGrid
    """
    import geopandas as gpd
    from shapely.geometry import box

    from detector.night.georef import to_output

    rows = [
        {
            "tile_id": r.tile_id,
            "status": r.status,
            "valid_fraction": round(r.valid_fraction, 4),
            "shift_m": round(r.shift_m, 3),
            "dx_m": round(r.dx_m, 3),
            "dy_m": round(r.dy_m, 3),
            "quality": round(r.quality, 4),
            "registration": r.registration,
            "residual_m": round(r.residual_m, 3),
            "inliers": r.inliers,
            "move_m": None if r.move_m is None else round(r.move_m, 3),
            "reason": r.reason,
            "candidates": len(r.candidates),
            "seconds": round(r.seconds, 3),
        }
        for r in sorted(results, key=lambda r: r.tile_id)
    ]
    geoms = [box(*tiles[row["tile_id"]].bounds) for row in rows]
    out_geoms = to_output(geoms, grid)[0] if geoms else []
    frame = gpd.GeoDataFrame(rows, geometry=out_geoms, crs=grid.output_crs_wkt)
    if len(frame):
        frame["move_m"] = frame["move_m"].astype(
            float
        )  # None -> NaN, written as NULL in a REAL column
    return frame


def write_geopackage(path: Path, candidates, tiles, run_record: dict) -> Path:
    """Atomically write candidates (GeoDataFrame), tiles (GeoDataFrame) and one ``runs`` row."""
    import pandas as pd
    import pyogrio

    with atomic_path(path) as tmp:
        tmp.unlink()  # the GPKG driver creates the file itself
        pyogrio.write_dataframe(
            candidates,
            tmp,
            layer="candidates",
            driver="GPKG",
            dataset_options={"VERSION": "1.2"},
            layer_options={"SPATIAL_INDEX": "YES"},
            promote_to_multi=False,
            geometry_type="Polygon",
        )
        pyogrio.write_dataframe(
            tiles,
            tmp,
            layer="tiles",
            driver="GPKG",
            layer_options={"SPATIAL_INDEX": "YES"},
            geometry_type="Polygon",
        )
        row = {
            k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
            for k, v in run_record.items()
        }
        pyogrio.write_dataframe(pd.DataFrame([row]), tmp, layer="runs", driver="GPKG")
        write_default_styles(
            tmp,
            {
                "candidates": (
                    "buildwatch candidates",
                    simple_layer_qml("class", CLASS_STYLE, CANDIDATE_LABEL),
                ),
                "tiles": (
                    "buildwatch tiles",
                    simple_layer_qml("status", TILE_STATUS_STYLE, TILE_LABEL, TILE_FILL_ALPHA),
                ),
            },
        )
    return path
