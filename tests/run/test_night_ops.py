"""Unattended operation: locks, leftovers, Ctrl-C, internal errors, library noise, coverage,
concurrent registry creation and flat memory of the coarse read."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import warnings
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest

from cases_util import candidates, write_scene
from detector.cli import main
from pipeline_util import (
    PAIR_TRANSFORM,
    make_contract_model,
    run_argv,
    textured_image,
    write_geotiff,
)

T = PAIR_TRANSFORM  # the grid of the `pair` fixture (conftest.py)
ROOT = Path(__file__).resolve().parents[2]


def _run(capsys, b, c, m, out, *extra):
    code = main(run_argv(b, c, m, out, *extra))
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def test_second_run_on_a_locked_output_folder_is_refused(capsys, tmp_path, pair):
    from detector.fileio import exclusive_lock
    from detector.run import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out / LOCK_NAME, "this output folder"):
        code, err, _ = _run(capsys, *pair, out)
    assert code == 2 and len(err) == 1, err
    assert f"another buildwatch process (pid {os.getpid()}) is using this output folder" in err[0]
    assert not (out / "candidates.gpkg").exists()
    code, err, _ = _run(capsys, *pair, out)  # released: the next run goes ahead
    assert code == 0, err


def test_leftovers_of_a_killed_run_are_removed_at_the_next_start(capsys, tmp_path, pair):
    out = tmp_path / "out"
    out.mkdir()
    litter = [
        out / ".candidates.k2j3h4.tmp.gpkg",
        out / ".candidates.k2j3h4.tmp.gpkg-journal",
        out / ".report.x9.tmp.html",
    ]
    for p in litter:
        p.write_bytes(b"x" * 1000)
    (out / ".ingest-abc").mkdir()
    (out / ".ingest-abc" / "current.tif").write_bytes(b"x")
    keep = out / "notes.txt"
    keep.write_text("mine")
    code, err, _ = _run(capsys, *pair, out)
    assert code == 0, err
    assert not any(p.exists() for p in litter) and not (out / ".ingest-abc").exists()
    assert keep.read_text() == "mine" and (out / "candidates.gpkg").is_file()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_ctrl_c_exits_130_with_a_resume_hint(capsys, tmp_path, pair, monkeypatch):
    import detector.run.night as pipeline

    def interrupted(night):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_process_tiles", interrupted)
    out = tmp_path / "out"
    code, err, _ = _run(capsys, *pair, out)
    assert code == 130
    assert err == ["interrupted; finished tiles are kept, rerun the same command to resume"]
    assert "interrupted" in (out / "buildwatch.log").read_text()
    assert not (out / "candidates.gpkg").exists()


def test_internal_error_is_one_line_and_the_traceback_goes_to_a_file(
    capsys, tmp_path, pair, monkeypatch
):
    import detector.run.night as pipeline

    def boom(night, results):
        raise RuntimeError("boom")

    log = tmp_path / "errors.log"
    monkeypatch.setenv("BUILDWATCH_ERROR_LOG", str(log))
    monkeypatch.setattr(pipeline, "_merge", boom)
    code, err, _ = _run(capsys, *pair, tmp_path / "out")
    assert code == 1
    assert err == [f"internal error: RuntimeError: boom (please report; traceback in {log})"]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text
    assert "RuntimeError: boom" in (tmp_path / "out" / "buildwatch.log").read_text()


@pytest.mark.parametrize(
    "err_no,needle",
    [
        (
            errno.ENOSPC,
            "no space left on device; free space, then rerun the same command to resume",
        ),
        (errno.EROFS, "read-only file system; choose a writable folder"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_os_errors_during_the_write_are_exit_2_and_leave_no_partial_file(
    capsys, tmp_path, pair, monkeypatch, err_no, needle
):
    def fail(df, path, *args, **kwargs):
        raise OSError(err_no, os.strerror(err_no), str(path))

    monkeypatch.setattr("pyogrio.write_dataframe", fail)
    out = tmp_path / "out"
    code, err, _ = _run(capsys, *pair, out)
    assert code == 2 and len(err) == 1, err
    assert needle in err[0] and "candidates" in err[0]
    assert not (out / "candidates.gpkg").exists()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_library_warnings_go_to_the_log_not_the_terminal(capsys, tmp_path, pair, monkeypatch):
    import detector.run.night as pipeline

    real = pipeline._merge

    def noisy(night, results):
        warnings.warn("a library grumbles", UserWarning, stacklevel=1)
        import logging

        logging.getLogger("rasterio._env").warning("CPLE_AppDefined in GDAL says something")
        return real(night, results)

    import logging

    monkeypatch.setattr(pipeline, "_merge", noisy)
    logging.captureWarnings(
        False
    )  # undo an earlier test's capture, which pytest's warning recorder replaced
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, err, stdout = _run(capsys, *pair, out)
    assert code == 0 and err == [], err
    log = (out / "buildwatch.log").read_text()
    assert "a library grumbles" in log and "CPLE_AppDefined in GDAL says something" in log


def test_partial_coverage_is_measured_and_min_coverage_applies(capsys, tmp_path, pair):
    """Tonight's flight holds imagery for the left 30 % of the baseline: runs by default, refused at 50 %."""
    b, _, m = pair
    rgb = textured_image(600, 600)
    rgb[:, 180:] = 0
    c = write_geotiff(tmp_path / "part.tif", rgb, "EPSG:4547", T, nodata=0)
    code, err, _ = _run(capsys, b, c, m, tmp_path / "out")
    assert code == 0, err
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("min_coverage: 0.5\n")
    code, err, _ = _run(capsys, b, c, m, tmp_path / "out2", "--config", str(cfg))
    assert code == 2 and len(err) == 1
    assert "covers 30.0% of the baseline (less than min_coverage 50.0%" in err[0]


def test_coverage_of_baseline_exact():
    """Coverage counts valid, non-black current pixels over the valid baseline (exact on a 240 px grid)."""
    import tempfile

    from detector.night.mosaic import coverage_of_baseline, make_grid, open_mosaic

    with tempfile.TemporaryDirectory() as tmp:
        rgb = textured_image(600, 600)
        b = open_mosaic(write_geotiff(Path(tmp) / "b.tif", rgb, "EPSG:4547", T), "baseline")
        cur = rgb.copy()
        cur[:300] = 0  # north half black (no nodata set), the rest imagery
        c = open_mosaic(write_geotiff(Path(tmp) / "c.tif", cur, "EPSG:4547", T), "current")
        grid = make_grid(b, c, 0.25)
        assert coverage_of_baseline(b, c, grid) == pytest.approx(0.5, abs=0.01)


def _update(
    registry: str, names: list[str], night: str, start_at: float, slow_create_s: float = 0.0
) -> int:
    """One run's registry step (the pipeline's, with its lock), started at the same moment as another.

    ``slow_create_s``: this run takes that long to create the registry file after deciding to
    (the window in which, without the lock, it would replace the other run's finished registry).
    """
    import detector.review.registry as registry_module
    import detector.run.night as pipeline
    from detector.config import CasesConfig, RunConfig

    create = registry_module.create_registry

    def slow_create(*args, **kwargs):
        time.sleep(slow_create_s)
        create(*args, **kwargs)

    registry_module.create_registry = slow_create

    cfg = RunConfig(
        cases=CasesConfig(registry=registry, evidence=False, report=False, district_prefix="LG")
    )
    ctx = SimpleNamespace(
        baseline=SimpleNamespace(path=Path(registry).parent / "b.tif"),
        current=SimpleNamespace(path=Path(registry).parent / "c.tif"),
        dsm=None,
    )
    while time.time() < start_at:
        time.sleep(0.001)
    result = pipeline._update_cases(
        candidates(names),
        cfg,
        f"run-{names[0]}",
        date.fromisoformat(night),
        ctx,
        Path(registry).parent,
    )
    return result.opened


def test_two_first_runs_creating_one_registry_keep_both_nights_cases(tmp_path):
    """Two runs (different areas) create the same new registry at once: all 6 cases are kept, none replaced."""
    import multiprocessing as mp

    from detector.review.registry import read_cases_frame

    registry = str(tmp_path / "shared" / "cases.gpkg")
    (tmp_path / "shared").mkdir()
    write_scene(tmp_path / "shared" / "b.tif", [])
    write_scene(tmp_path / "shared" / "c.tif", ["A", "B", "C", "D", "E", "F"])
    start_at = time.time() + 3.0
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        opened = pool.starmap(
            _update,
            [
                (registry, ["A", "B", "C"], "2026-05-01", start_at, 0.0),
                (registry, ["D", "E", "F"], "2026-05-01", start_at, 2.0),
            ],
        )
    assert opened == [3, 3]
    assert len(read_cases_frame(registry)) == 6


@pytest.mark.slow
def test_coarse_read_memory_is_flat_without_overviews():
    """The coarse whole-mosaic read of a 1.6-gigapixel mosaic without overviews stays under 150 MB."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_coarse_read.py"), "40000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    side, _gigapixels, seconds, peak_mb = (float(v) for v in out.stdout.splitlines()[-1].split())
    assert side == 40000 and peak_mb < 150, (seconds, peak_mb)


@pytest.mark.slow
def test_real_ctrl_c_with_two_workers_prints_one_line(tmp_path):
    """SIGINT to the whole process group mid-run (as Ctrl-C does): exit 130, one line, no pool traceback."""
    import signal

    rgb = textured_image(4800, 4800)  # ~100 tiles: seconds of work to interrupt
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", T)
    c = write_geotiff(tmp_path / "c.tif", rgb, "EPSG:4547", T)
    m = make_contract_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "detector",
            "run",
            "--baseline",
            str(b),
            "--current",
            str(c),
            "--out",
            str(out),
            "--model",
            str(m),
            "--workers",
            "2",
            "--no-progress",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # the pool's workers are up once tile results are written (they are spawned: a detector patched in
    # this process, as test_resume does, would not reach them, so the interrupt is sent from outside)
    deadline = time.time() + 120
    while (
        time.time() < deadline and proc.poll() is None and len(list(out.glob("work/*/*.json"))) < 3
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if (
        proc.returncode == 0 or "output: " in stdout
    ):  # finished: the interrupt hit the interpreter's exit
        pytest.skip("the run finished before the interrupt")
    assert proc.returncode == 130, stderr
    assert lines == ["interrupted; finished tiles are kept, rerun the same command to resume"], (
        stderr
    )


def test_ingest_removes_a_killed_ingests_work_folder_but_not_a_live_one(tmp_path, pair, capsys):
    b, c, _ = pair
    out_dir = tmp_path / "night"
    out_dir.mkdir()
    old, live = out_dir / ".ingest-killed", out_dir / ".ingest-live"
    for d in (old, live):
        d.mkdir()
        (d / "current.tif").write_bytes(b"x" * 100)
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    assert (
        main(["ingest", str(c), "--baseline", str(b), "--out", str(out_dir / "current.tif")]) == 0
    )
    assert not old.exists() and live.exists() and (out_dir / "current.tif").is_file()


def test_registry_lock_wait_is_bounded_and_says_what_to_do(tmp_path):
    """A second run's registry update waits for the first's at most ``timeout_s``, then one line
    saying what to do for the registry (not the output folder's "give another --out")."""
    import time

    from detector.errors import OutputError
    from detector.fileio import exclusive_lock

    lock = tmp_path / ".cases.gpkg.lock"
    hint = "run this night again once it is done: its finished tiles are resumed"
    with exclusive_lock(lock, "the case registry"):
        start = time.monotonic()
        with pytest.raises(OutputError) as err:
            with exclusive_lock(lock, "the case registry", wait=True, timeout_s=0.3, hint=hint):
                pass
        assert 0.3 <= time.monotonic() - start < 2.0
    line = str(err.value)
    assert "is using the case registry for 0.3 s" in line and line.endswith(hint)
    assert "--out" not in line
