"""A killed nightly run loses nothing: finished tiles are kept and a rerun resumes."""

from __future__ import annotations

import signal
import subprocess
import sys

import geopandas as gpd
import pytest
from affine import Affine

from detector.config import RunConfig
from detector.run import run_pipeline
from pipeline_util import (
    SIGNAL_MID_RUN,
    make_contract_model,
    plant,
    run_argv,
    textured_image,
    write_geotiff,
)


@pytest.fixture
def big_pair(tmp_path):
    rgb = textured_image(3000, 3000, seed=7)
    t = Affine(0.1, 0, 520000, 0, -0.1, 2515000)
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", t)
    c = write_geotiff(tmp_path / "c.tif", plant(rgb, [(500, 500, 80, 60)]), "EPSG:4547", t)
    m = make_contract_model(tmp_path / "m.onnx", imgsz=256, overlap=64)
    return b, c, m


def test_torn_and_missing_tile_results_are_recomputed(tmp_path, big_pair):
    b, c, m = big_pair
    cfg = RunConfig(baseline=b, current=c, out=tmp_path / "out", model=m, workers=1, progress=False)
    first = run_pipeline(cfg)
    work = next((tmp_path / "out" / "work").iterdir())
    files = sorted(work.glob("*.json"))
    assert len(files) == first.tiles_total
    for f in files[:5]:
        f.unlink()
    files[5].write_text(files[5].read_text()[:20])  # a torn write from a killed process
    second = run_pipeline(cfg)
    assert second.tiles_resumed == first.tiles_total - 6
    t1 = gpd.read_file(first.candidates_path, layer="tiles")
    assert len(t1) == first.tiles_total == second.tiles_total


def test_sigkill_mid_run_then_rerun_completes(tmp_path, big_pair):
    b, c, m = big_pair
    out = tmp_path / "out"
    args = run_argv(b, c, m, out)
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            SIGNAL_MID_RUN,
            str(out),
            str(tmp_path / "signalled"),
            "SIGKILL",
            "3",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-1500:])
    assert not (out / "candidates.gpkg").exists()  # nothing half-written in place
    done_before = len(list(out.glob("work/*/*.json")))
    assert done_before >= 3
    rerun = subprocess.run(
        [sys.executable, "-m", "detector", *args], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert "resumed" in rerun.stdout
    resumed = int(rerun.stdout.split("done (")[1].split(" resumed")[0])
    assert resumed >= done_before - 1  # a tile being written at the kill may be redone
    runs = gpd.read_file(out / "candidates.gpkg", layer="runs")
    assert runs["tiles_resumed"].iloc[0] == resumed
    assert (
        len(gpd.read_file(out / "candidates.gpkg", layer="candidates")) == 0
    )  # the contract model finds nothing


def test_tile_work_file_round_trip():
    import json
    from dataclasses import replace

    from shapely.geometry import box

    from detector.types import Candidate, TileResult

    cand = Candidate(
        class_name="extension",
        confidence=0.5,
        pixel_change=0.25,
        baseline_iou=0.125,
        tile_id="c1_r2",
        geometry=box(0.1, 0.2, 1.3, 2.7),
    )
    result = TileResult("c1_r2", "done", 1.0, 9.0, 0.1, -0.2, 0.3, 0.4, "", [cand], 0.5, "mosaic")
    back = TileResult.from_json(result.to_json())
    assert back.candidates[0].geometry.equals_exact(cand.geometry, 0)
    assert replace(back, candidates=[]) == replace(result, candidates=[])
    assert replace(back.candidates[0], geometry=None) == replace(cand, geometry=None)
    # a work file from before candidates had a type (wkt + the detection keys, no tile_id) still resumes
    old = json.loads(result.to_json())
    old["candidates"] = [
        {
            "wkt": cand.geometry.wkt,
            "class": "extension",
            "confidence": 0.5,
            "pixel_change": 0.25,
            "baseline_iou": 0.125,
        }
    ]
    assert replace(TileResult.from_json(json.dumps(old)).candidates[0], geometry=None) == replace(
        cand, geometry=None
    )


@pytest.mark.parametrize(
    "done, resumed, want",
    [
        (9, 0, "(36.00 km²/h)"),
        (9, 4, "(36.00 km²/h, 4 tiles resumed)"),
        (9, 9, "(every tile resumed from the earlier run: no throughput measured)"),
    ],
)
def test_summary_rate_says_when_tiles_were_resumed(done, resumed, want):
    """A rerun that only read finished tiles back has no throughput to report (it printed
    e.g. 83 km²/h for 2 s of reading)."""
    from pathlib import Path

    from detector.run.night import RunSummary

    s = RunSummary("r", Path("c.gpkg"), Path("l.log"), 9, done, 0, 0, resumed, 0, {}, 1.0, 100.0)
    assert want in s.text()
