"""Scale-out on Dask: a LocalCluster (2 worker processes on loopback) gives the local run's
candidates exactly, also when a worker is killed mid-run. Skipped without the [dask] extra."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from detector.cli import main

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_tiles"


def _run(out: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "--baseline",
            str(SAMPLE / "baseline.tif"),
            "--current",
            str(SAMPLE / "current.tif"),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def _layers(out: Path):
    import geopandas as gpd
    import pyogrio

    cand = gpd.read_file(out / "candidates.gpkg", layer="candidates")
    tiles = gpd.read_file(out / "candidates.gpkg", layer="tiles")
    runs = pyogrio.read_dataframe(out / "candidates.gpkg", layer="runs")
    return cand, tiles, runs


def _assert_identical(a: Path, b: Path, same_config: bool = True) -> int:
    ca, ta, ra = _layers(a)
    cb, tb, rb = _layers(b)
    assert list(ca.candidate_id) == list(cb.candidate_id)
    assert list(ca.confidence) == list(cb.confidence)
    assert [g.wkb for g in ca.geometry] == [g.wkb for g in cb.geometry]
    assert list(ta.tile_id) == list(tb.tile_id) and list(ta.status) == list(tb.status)
    if same_config:
        assert ra.fingerprint[0] == rb.fingerprint[0]  # same night, same resume folder name
    return len(ca)


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=50,
        ) as c,
        Client(c, set_as_default=False) as client,
    ):
        yield c, client


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    assert _run(out, "--workers", "1") == 0
    return out


@pytest.mark.slow
def test_local_cluster_gives_the_local_candidates(tmp_path, cluster, local_run, capsys):
    c, _ = cluster
    out = tmp_path / "dask"
    assert _run(out, "--scheduler", c.scheduler_address) == 0, capsys.readouterr().err
    n = _assert_identical(local_run, out)
    assert n > 0  # the sample has planted changes: the comparison is not of two empty layers
    assert "dask: " in (out / "buildwatch.log").read_text()


@pytest.mark.slow
def test_killed_worker_mid_run_still_gives_identical_candidates(
    tmp_path, cluster, local_run, capsys
):
    c, client = cluster
    out = tmp_path / "dask-kill"
    cfg = tmp_path / "small-batches.yaml"
    cfg.write_text("detect:\n  batch_size: 1\n")  # one tile per task: many tasks in flight to lose
    killed = []

    def kill_one_worker():
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("work/*/*.json")):
            time.sleep(0.05)
        pids = client.run(os.getpid)
        pid = sorted(pids.values())[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    code = _run(out, "--scheduler", c.scheduler_address, "--config", str(cfg))
    killer.join(timeout=60)
    assert killed, "no worker was killed"
    assert code == 0, capsys.readouterr().err
    _assert_identical(local_run, out, same_config=False)  # batch size is part of the fingerprint


def test_unreachable_scheduler_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    code = _run(out, "--scheduler", "tcp://127.0.0.1:9")  # discard port: nothing listens
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "cannot reach the Dask scheduler" in err[0]
    assert not out.exists()  # refused before work: no output folder, no lock


@pytest.mark.slow
def test_workers_read_the_mosaics_over_http(tmp_path, cluster, local_run, capsys):
    """Workers on other machines open the mosaics by URL (here a loopback web server)."""
    import shutil

    from rangeserver import serve

    c, _ = cluster
    (tmp_path / "www").mkdir()
    for name in ("baseline.tif", "current.tif"):
        shutil.copy(SAMPLE / name, tmp_path / "www" / name)
    out = tmp_path / "dask-http"
    with serve(tmp_path / "www") as (url, counts):
        code = main(
            [
                "run",
                "--baseline",
                f"{url}/baseline.tif",
                "--current",
                f"{url}/current.tif",
                "--out",
                str(out),
                "--no-progress",
                "--scheduler",
                c.scheduler_address,
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert counts["/current.tif"] > 1
    assert (
        _assert_identical(local_run, out, same_config=False) == 13
    )  # another location: another fingerprint
