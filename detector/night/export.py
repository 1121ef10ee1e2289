"""Write the night's results: ``candidates.gpkg`` (layers ``candidates``, ``tiles``, table ``runs``).

The GeoPackage is built in a temporary file beside the target and renamed into place, so a
failed or killed run never leaves a half-written file. GeoPackage 1.2 (QGIS 3.22 warns about
1.4), with an R-tree spatial index on each layer.
"""

from __future__ import annotations

import json
from pathlib import Path

from detector.fileio import atomic_path
from detector.review.qgis import (CANDIDATE_LABEL, CLASS_STYLE, TILE_LABEL, TILE_STATUS_STYLE, simple_layer_qml,
                                   write_default_styles)

CANDIDATE_FIELDS = [
    "candidate_id", "class", "confidence", "area_m2", "lon", "lat", "tile_id", "baseline_date",
    "current_date", "shift_m", "model_name", "model_sha256", "run_id", "status", "tags",
    "pixel_change", "baseline_iou",
]


def write_geopackage(path: Path, candidates, tiles, run_record: dict) -> Path:
    """Atomically write candidates (GeoDataFrame), tiles (GeoDataFrame) and one ``runs`` row."""
    import pandas as pd
    import pyogrio

    with atomic_path(path) as tmp:
        tmp.unlink()  # the GPKG driver creates the file itself
        pyogrio.write_dataframe(candidates, tmp, layer="candidates", driver="GPKG",
                                dataset_options={"VERSION": "1.2"}, layer_options={"SPATIAL_INDEX": "YES"},
                                promote_to_multi=False, geometry_type="Polygon")
        pyogrio.write_dataframe(tiles, tmp, layer="tiles", driver="GPKG", layer_options={"SPATIAL_INDEX": "YES"},
                                geometry_type="Polygon")
        row = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in run_record.items()}
        pyogrio.write_dataframe(pd.DataFrame([row]), tmp, layer="runs", driver="GPKG")
        write_default_styles(tmp, {
            "candidates": ("buildwatch candidates", simple_layer_qml("class", CLASS_STYLE, CANDIDATE_LABEL)),
            "tiles": ("buildwatch tiles", simple_layer_qml("status", TILE_STATUS_STYLE, TILE_LABEL)),
        })
    return path

