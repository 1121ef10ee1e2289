"""The README's run on sample_tiles/ with the shipped model meets the issue's targets:
recall >= 0.9 of the planted changes at IoU 0.3, <= 1 false candidate per 0.1 km²."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_tiles"


def test_readme_run_command_on_sample_tiles(tmp_path):
    out = tmp_path / "sample"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detector",
            "run",
            "--baseline",
            str(SAMPLE / "baseline.tif"),
            "--current",
            str(SAMPLE / "current.tif"),
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "candidates:" in proc.stdout and "km²/h" in proc.stdout
    cand = gpd.read_file(out / "candidates.gpkg", layer="candidates")
    truth = gpd.read_file(SAMPLE / "truth.geojson").to_crs(cand.crs)
    assert cand.crs.to_epsg() == 4547

    from training.metrics import match_one_to_one

    ious = np.array(
        [[c.intersection(t).area / c.union(t).area for t in truth.geometry] for c in cand.geometry]
    )
    matches = match_one_to_one(ious, 0.3) if len(cand) else []
    recall = len(matches) / len(truth)
    false = len(cand) - len(matches)
    with rasterio.open(SAMPLE / "baseline.tif") as src:
        area_km2 = src.width * src.height * src.res[0] * src.res[1] / 1e6
    assert recall >= 0.9, (recall, len(cand), len(truth))
    assert false / (area_km2 / 0.1) <= 1.0, (false, area_km2)
