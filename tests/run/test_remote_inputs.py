"""Mosaics on a web server or an object store: ``https://``, ``s3://`` and GDAL ``/vsi...`` inputs.

A loopback server with byte ranges (``tests/rangeserver.py``) stands in for the web server and,
through ``AWS_S3_ENDPOINT``, for S3. The run must give exactly the local run's candidates, read
the mosaics partially (overviews and windows, not whole-file downloads), refer to them in the
QGIS project by their GDAL location, and refuse an unreachable or missing one with one line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from detector.cli import main
from detector.config import load_config
from detector.geo.location import RemotePath, as_location, is_remote, location_fingerprint
from rangeserver import s3_env, serve

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_tiles"


@pytest.mark.parametrize(
    "given, expected",
    [
        ("s3://bucket/night/c.tif", "/vsis3/bucket/night/c.tif"),
        ("S3://bucket/c.tif", "/vsis3/bucket/c.tif"),
        ("gs://bucket/c.tif", "/vsigs/bucket/c.tif"),
        ("az://container/c.tif", "/vsiaz/container/c.tif"),
        ("https://host:8443/a/c.tif", "/vsicurl/https://host:8443/a/c.tif"),
        ("http://host/a//c.tif?x=1", "/vsicurl/http://host/a//c.tif?x=1"),
        ("/vsis3/bucket/c.tif", "/vsis3/bucket/c.tif"),
        ("/vsicurl/https://host/c.tif", "/vsicurl/https://host/c.tif"),
    ],
)
def test_urls_become_gdal_locations(given, expected):
    loc = as_location(given)
    assert isinstance(loc, RemotePath) and loc == expected and is_remote(loc)
    assert loc.name == expected.rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    "given, expected",
    [
        ("B.tif", Path("B.tif")),
        ("/data/night/B.tif", Path("/data/night/B.tif")),
        ("file:///data/B.tif", Path("/data/B.tif")),
    ],
)
def test_local_paths_stay_paths(given, expected):
    loc = as_location(given)
    assert type(loc) is type(expected) and loc == expected and not is_remote(loc)


def test_unsupported_scheme_is_one_config_line(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--baseline",
                "ftp://host/B.tif",
                "--current",
                str(SAMPLE / "current.tif"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ftp:// is not a location buildwatch reads" in err
    assert not (tmp_path / "out").exists()


def test_config_file_keeps_urls_and_resolves_local_paths(tmp_path):
    cfg = tmp_path / "conf" / "night.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "baseline: s3://district/baseline.tif\ncurrent: tonight.tif\nout: out\n"
        "baseline_dsm: https://host/dsm.tif\n"
    )
    c = load_config(cfg)
    assert c.baseline == "/vsis3/district/baseline.tif" and isinstance(c.baseline, RemotePath)
    assert c.baseline_dsm == "/vsicurl/https://host/dsm.tif"
    assert c.current == cfg.parent / "tonight.tif"  # relative to the config file, as before
    assert '"baseline":"/vsis3/district/baseline.tif"' in c.model_dump_json()  # the run record


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "night").mkdir()
    for name in ("baseline.tif", "current.tif"):
        shutil.copy(SAMPLE / name, root / "night" / name)
    with serve(root) as (url, counts):
        yield url, counts, root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    assert (
        main(
            [
                "run",
                "--baseline",
                str(SAMPLE / "baseline.tif"),
                "--current",
                str(SAMPLE / "current.tif"),
                "--out",
                str(out),
                "--no-progress",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    return out


def _candidates(out: Path):
    import geopandas as gpd

    return gpd.read_file(out / "candidates.gpkg", layer="candidates")


def _same_candidates(a: Path, b: Path) -> int:
    ca, cb = _candidates(a), _candidates(b)
    assert list(ca.candidate_id) == list(cb.candidate_id)
    assert list(ca.confidence) == list(cb.confidence)
    assert [g.wkb for g in ca.geometry] == [g.wkb for g in cb.geometry]
    return len(ca)


def test_https_run_gives_the_local_candidates_and_reads_partially(
    tmp_path, served, local_run, capsys
):
    url, counts, root = served
    counts.clear()
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--baseline",
                f"{url}/night/baseline.tif",
                "--current",
                f"{url}/night/current.tif",
                "--out",
                str(out),
                "--no-progress",
                "--workers",
                "2",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert _same_candidates(local_run, out) == 13
    assert counts["/night/current.tif"] > 1  # range requests, not one whole-file GET
    import pyogrio

    runs = pyogrio.read_dataframe(out / "candidates.gpkg", layer="runs")
    assert (
        runs.current[0] == f"/vsicurl/{url}/night/current.tif"
    )  # the run record names the location


def test_s3_run_with_registry_refers_to_the_bucket_in_qgis(
    tmp_path, served, local_run, monkeypatch, capsys
):
    url, _, root = served
    for key, value in s3_env(url).items():
        monkeypatch.setenv(key, value)
    out, cases = tmp_path / "out", tmp_path / "cases" / "cases.gpkg"
    assert (
        main(
            [
                "run",
                "--baseline",
                "s3://night/baseline.tif",
                "--current",
                "/vsis3/night/current.tif",
                "--out",
                str(out),
                "--cases",
                str(cases),
                "--no-progress",
                "--workers",
                "1",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert _same_candidates(local_run, out) == 13
    qgs = (cases.parent / "cases.qgs").read_text()
    assert "<datasource>/vsis3/night/current.tif</datasource>" in qgs
    assert "<datasource>/vsis3/night/baseline.tif</datasource>" in qgs
    assert not (cases.parent / "imagery").exists()  # nothing downloaded into the cases folder
    assert len(list((cases.parent / "evidence").glob("*.png"))) == 13  # chips read over the network


def test_remote_fingerprint_is_stable_and_tells_files_apart(served):
    url, _, root = served
    b, c = as_location(f"{url}/night/baseline.tif"), as_location(f"{url}/night/current.tif")
    assert location_fingerprint(b) == location_fingerprint(b)
    assert location_fingerprint(b) != location_fingerprint(c)


@pytest.mark.parametrize(
    "where, expect",
    [
        ("missing", "HTTP response code: 404"),
        ("refused", "Could not connect"),
    ],
)
def test_unreadable_remote_mosaic_is_one_line_before_work(tmp_path, served, capsys, where, expect):
    url, _, _ = served
    current = (
        f"{url}/night/nothere.tif" if where == "missing" else "http://127.0.0.1:9/night/current.tif"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--baseline",
                f"{url}/night/baseline.tif",
                "--current",
                current,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "current mosaic cannot be read over the network" in err and expect in err
    assert not out.exists()


def test_doctor_checks_the_configs_remote_inputs(tmp_path, served, capsys):
    url, _, _ = served
    cfg = tmp_path / "night.yaml"
    cfg.write_text(
        f"baseline: {url}/night/baseline.tif\ncurrent: {url}/night/tonight-not-flown.tif\n"
    )
    assert main(["doctor", "--config", str(cfg)]) == 0  # tonight's mosaic missing is a warning
    out = capsys.readouterr().out
    assert (
        f"ok   baseline mosaic /vsicurl/{url}/night/baseline.tif: 2,048 x 2,048 px, readable" in out
    )
    assert "warn /vsicurl/" in out and "HTTP response code: 404" in out
    cfg.write_text(f"baseline: {url}/night/gone.tif\n")
    assert (
        main(["doctor", "--config", str(cfg)]) == 2
    )  # a baseline nobody can read fails the installation
    assert "FAIL /vsicurl/" in capsys.readouterr().out


def test_ingest_reads_another_tools_mosaic_from_a_url(tmp_path, served, capsys):
    """A photogrammetry service's output on a web server / bucket is put on the baseline's grid locally."""
    import numpy as np
    import rasterio

    url, _, _ = served
    out = tmp_path / "night" / "current.tif"
    assert (
        main(
            [
                "ingest",
                f"{url}/night/current.tif",
                "--baseline",
                str(SAMPLE / "baseline.tif"),
                "--out",
                str(out),
            ]
        )
        == 0
    ), capsys.readouterr().err
    with rasterio.open(out) as got, rasterio.open(SAMPLE / "current.tif") as local:
        assert got.transform == local.transform and got.crs == local.crs
        assert (
            np.abs(got.read().astype(int) - local.read().astype(int)).mean() < 1.0
        )  # same grid: a copy
    assert (
        main(
            [
                "ingest",
                f"{url}/night/missing.tif",
                "--baseline",
                str(SAMPLE / "baseline.tif"),
                "--out",
                str(tmp_path / "x" / "current.tif"),
            ]
        )
        == 2
    )
    assert (
        "mosaic cannot be read over the network (HTTP response code: 404)"
        in capsys.readouterr().err
    )
