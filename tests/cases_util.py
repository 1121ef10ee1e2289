"""The case registry's test scene: six structures planted in map coordinates, the candidates the
nightly run would write for them, a night on the registry, and edits made the way QGIS makes them.

Used by the review tests (tests/review/; the ``scene`` fixture is in tests/review/conftest.py)
and by the run's registry tests. Also: whether the system QGIS is there to test against.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

from detector.review import gpkg, nightly
from detector.review import registry as reg
from detector.review.geometry import iou

ORIGIN_X, ORIGIN_Y, GSD = 500_000.0, 2_500_200.0, 0.25  # EPSG:4547, 200 m x 200 m scene
SIZE_PX = 800
GROUND, ROOF = 90, 220

# structures planted in map coordinates (left, bottom, right, top); names are the test's own
STRUCTURES = {
    "A": (500_020, 2_500_150, 500_030, 2_500_160),
    "B": (500_060, 2_500_151, 500_068, 2_500_159),
    "C": (500_100, 2_500_150, 500_106, 2_500_160),
    "D": (500_020, 2_500_080, 500_032, 2_500_090),
    "E": (500_080, 2_500_080, 500_090, 2_500_090),
    "F": (500_140, 2_500_040, 500_150, 2_500_050),
}


def write_scene(path: Path, names: list[str]) -> Path:
    """A uint8 RGB GeoTIFF: flat ground with a bright roof on each named structure."""
    pixels = np.full((3, SIZE_PX, SIZE_PX), GROUND, dtype=np.uint8)
    for name in names:
        left, bottom, right, top = STRUCTURES[name]
        r0, r1 = int((ORIGIN_Y - top) / GSD), int((ORIGIN_Y - bottom) / GSD)
        c0, c1 = int((left - ORIGIN_X) / GSD), int((right - ORIGIN_X) / GSD)
        pixels[:, r0:r1, c0:c1] = ROOF
    profile = dict(
        driver="GTiff",
        width=SIZE_PX,
        height=SIZE_PX,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=from_origin(ORIGIN_X, ORIGIN_Y, GSD, GSD),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def candidates(
    names: list[str], *, jitter_m: float = 0.0, crs: str = "EPSG:4547", confidence: float = 0.8
):
    """A candidates layer as the nightly run writes it, one polygon per named structure."""
    geoms = [
        shapely.affinity.translate(shapely.box(*STRUCTURES[n]), jitter_m, -jitter_m) for n in names
    ]
    frame = gpd.GeoDataFrame(
        {
            "candidate_id": [f"cand-{n}" for n in names],
            "class": ["new_building"] * len(names),
            "confidence": [confidence + 0.01 * i for i in range(len(names))],
            "area_m2": [g.area for g in geoms],
            "tile_id": ["r0_c0"] * len(names),
            "model_name": ["test-model"] * len(names),
            "run_id": ["x"] * len(names),
            "status": ["new"] * len(names),
            "tags": [""] * len(names),
        },
        geometry=geoms,
        crs="EPSG:4547",
    )
    return frame.to_crs(crs)


def run_night(scene_, names, night: date, **kwargs):
    baseline, current, config, root = scene_
    return nightly.update_cases(
        candidates(names, **kwargs),
        config,
        run_id=f"run-{night}",
        night=night,
        baseline_path=baseline,
        current_path=current,
        out_dir=root / f"out-{night}",
    )


def cases_by_id(path: Path) -> dict:
    frame = reg.read_cases_frame(path, keep_internal=True)
    return {row["case_id"]: row for _, row in frame.iterrows()}


def case_id_of(path: Path, name: str) -> str:
    """The case whose geometry overlaps the planted structure ``name`` (by its detected geometry)."""
    target = shapely.box(*STRUCTURES[name])
    for case_id, row in cases_by_id(path).items():
        detected = shapely.from_wkb(bytes(row["detected_wkb"]))
        if iou(detected, target) > 0.5:
            return case_id
    raise AssertionError(f"no case for {name}")


def qgis_like_edit(path: Path, case_id: str, **fields) -> None:
    """Edit a case the way QGIS/GDAL does: its own connection, GPKG SQL functions, one transaction."""
    conn = sqlite3.connect(str(path), timeout=30)
    gpkg.register_gpkg_functions(conn)
    with conn:
        for name, value in fields.items():
            conn.execute(f'UPDATE cases SET "{name}" = ? WHERE case_id = ?', (value, case_id))
    conn.close()


# --------------------------------------------------------------------------- the system QGIS

SYSTEM_PYTHON = Path("/usr/bin/python3")


def system_qgis_available() -> bool:
    """Whether ``/usr/bin/python3`` imports ``qgis.core`` (python3-qgis)."""
    if not SYSTEM_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import qgis.core"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    return probe.returncode == 0
