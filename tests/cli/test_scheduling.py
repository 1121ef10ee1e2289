"""The nightly wrapper (scripts/buildwatch-nightly.sh) and ``buildwatch doctor``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "buildwatch-nightly.sh"


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs util-linux flock")
def test_nightly_wrapper_runs_one_night_once_at_a_time(tmp_path):
    fake = tmp_path / "buildwatch"  # stands in for the CLI: doctor passes, run takes 3 s
    fake.write_text('#!/bin/sh\nif [ "$1" = run ]; then sleep 3; echo "run $*"; fi\nexit 0\n')
    fake.chmod(0o755)
    env = dict(os.environ, BUILDWATCH_ROOT=str(tmp_path / "bw"), BUILDWATCH=str(fake))
    first = subprocess.Popen(["sh", str(SCRIPT), "night.yaml", "2026-05-01"], env=env)
    time.sleep(1.0)
    second = subprocess.run(["sh", str(SCRIPT), "night.yaml", "2026-05-01"], env=env, timeout=30)
    other_night = subprocess.run(
        ["sh", str(SCRIPT), "night.yaml", "2026-05-02"], env=env, timeout=30
    )
    assert first.wait(timeout=30) == 0
    assert second.returncode == 75  # the same night is already running
    assert other_night.returncode == 0
    log = (tmp_path / "bw" / "logs" / "nightly.log").read_text()
    assert "night 2026-05-01: already running" in log
    views = tmp_path / "bw" / "cache" / "baseline-views"
    assert (
        f"--out {tmp_path / 'bw' / 'nights' / '2026-05-01'} --baseline-cache {views} --no-progress"
        in log
    )
    assert log.count("night 2026-05-01: exit 0") == 1


def test_doctor_passes_on_this_installation(tmp_path, capsys):
    code = main(["doctor", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "checksum matches buildwatch-default.onnx.sha256" in out
    assert "raster drivers GTiff, COG" in out and "CPUExecutionProvider" in out
    assert not (tmp_path / "out").exists()  # checking writes nothing


def test_doctor_fails_with_exit_2_on_a_broken_model_and_folder(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not onnx")
    (tmp_path / "file").write_text("x")
    code = main(["doctor", "--model", str(model), "--out", str(tmp_path / "file" / "out")])
    captured = capsys.readouterr()
    assert code == 2
    fails = [line for line in captured.out.splitlines() if line.startswith("FAIL")]
    assert (
        len(fails) == 2
        and "not a readable ONNX model" in fails[0]
        and "cannot be created" in fails[1]
    )
    assert captured.err.strip() == "error: doctor: 2 check(s) failed; fix the FAIL lines above"


def _layers_config(tmp_path, kind: str) -> Path:
    """A nightly config on the sample whose boundary / exclusion layer / registry is as ``kind``."""
    import geopandas as gpd
    from shapely.geometry import box

    sample = Path(__file__).resolve().parents[2] / "sample_tiles"
    layer = tmp_path / "communities.gpkg"
    gpd.GeoDataFrame(
        {"name": ["Xinsheng"], "unit": ["team 1"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:4326"
    ).to_file(layer)
    lines = [f"baseline: {sample / 'baseline.tif'}", f"current: {sample / 'current.tif'}"]
    if kind == "boundaries_missing":
        lines += [
            f"cases:\n  registry: {tmp_path / 'cases.gpkg'}",
            f"  boundaries: {tmp_path / 'comunities.gpkg'}",
        ]
    elif kind == "exclusion_missing":
        lines += [
            "change:",
            "  exclusions:",
            f"    - path: {tmp_path / 'permits.gpkg'}",
            "      kind: permitted",
        ]
    elif kind == "exclusion_local_cs":  # readable, but a site grid: the run's CRS rule refuses it
        from pyproj import CRS

        wkt = (
            'LOCAL_CS["site",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
        )
        gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=CRS.from_wkt(wkt)).to_file(
            tmp_path / "permits.gpkg"
        )
        lines += [
            "change:",
            "  exclusions:",
            f"    - path: {tmp_path / 'permits.gpkg'}",
            "      kind: permitted",
        ]
    elif kind == "registry_not_sqlite":
        (tmp_path / "cases.gpkg").write_text("not a registry")
        lines += [f"cases:\n  registry: {tmp_path / 'cases.gpkg'}"]
    elif kind == "all_good":
        lines += [f"cases:\n  registry: {tmp_path / 'cases.gpkg'}", f"  boundaries: {layer}"]
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("boundaries_missing", "comunities.gpkg"),
        ("exclusion_missing", "permits.gpkg: exclusion layer (permitted) not found"),
        ("exclusion_local_cs", "permits.gpkg: exclusion layer (permitted)"),
        ("registry_not_sqlite", "cases.gpkg"),
        ("all_good", None),
    ],
)
def test_doctor_checks_the_layers_a_night_reads(tmp_path, capsys, kind, needle):
    """What the run would refuse before its first tile, doctor fails on too (the nightly script's
    gate): a missing boundary or exclusion layer, a file that is no registry."""
    code = main(["doctor", "--config", str(_layers_config(tmp_path, kind))])
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    if needle is None:
        assert code == 0 and not fails, out
        assert "boundary layer" in out and "1 communities" in out
    else:
        assert code == 2 and len(fails) == 1 and needle in fails[0], (out, capsys.readouterr())


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path):
    from affine import Affine

    from pipeline_util import make_contract_model, run_argv, textured_image, write_geotiff

    T = Affine(0.1, 0, 500000, 0, -0.1, 2513000)
    rgb = textured_image(2400, 2400)
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", T)
    c = write_geotiff(tmp_path / "c.tif", rgb, "EPSG:4547", T)
    m = make_contract_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "detector",
            *run_argv(b, c, m, out, "--no-resume"),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("work/*/*.json")):
        time.sleep(0.05)
    proc.terminate()
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM")
    assert proc.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "interrupted; finished tiles are kept, rerun the same command to resume"
    ]
    assert not (out / "candidates.gpkg").exists()


def test_doctor_says_the_move_between_the_mosaics_and_warns_beyond_the_flights_accuracy(
    tmp_path, capsys
):
    import rasterio
    from affine import Affine

    src = ROOT / "sample_tiles" / "baseline.tif"
    with rasterio.open(src) as ds:
        profile, data, t = ds.profile, ds.read(), ds.transform
    profile["transform"] = Affine(
        t.a, t.b, t.c + 5.6, t.d, t.e, t.f - 4.2
    )  # tonight 7 m off (plain GNSS)
    with rasterio.open(tmp_path / "tonight.tif", "w", **profile) as ds:
        ds.write(data)
    for accuracy, status in ((5.0, "ok"), (2.0, "warn")):
        cfg = tmp_path / f"night-{accuracy}.yaml"
        cfg.write_text(
            f"baseline: {src}\ncurrent: {tmp_path / 'tonight.tif'}\nalign:\n  flight_accuracy_m: {accuracy}\n"
        )
        assert main(["doctor", "--config", str(cfg)]) == 0  # a warning, not a failure
        line = next(x for x in capsys.readouterr().out.splitlines() if "registration:" in x)
        assert line.startswith(status) and "moved 7.0" in line, line


def test_doctor_checks_the_model_the_run_would_use_from_the_registry(tmp_path, capsys):
    """With ``models:`` (a model registry) doctor checks the promoted version, as the run resolves
    it, not the shipped file (the grid of its registration check is that model's too)."""
    from detector.night.model import DEFAULT_MODEL_PATH
    from detector.night.model_registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    registry.add(DEFAULT_MODEL_PATH)
    registry.promote("v0001")
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text(f"models: {tmp_path / 'models'}\n")
    assert main(["doctor", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    model_line = next(line for line in out.splitlines() if line.startswith("ok   model "))
    assert str(tmp_path / "models" / "v0001") in model_line, model_line
