"""Hostile inputs, round three (issue 26, patterns 2 and 3): content checked before work, bounded
waits, other libraries' output contained.

Every refused case: exit 2, exactly one stderr line naming the file and what to do, no
traceback, nothing written (a listing of the test folder before and after, with every file's
digest) and no hang. The accepted cases (a south-up mosaic, a mosaic whose header declares
400,000 px on a side, a huge mostly empty extent) assert the numbers the run gives.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from cases_util import STRUCTURES, run_night, write_scene
from detector.cli import main
from detector.config import CasesConfig
from detector.review import gpkg
from pipeline_util import (
    PAIR_TRANSFORM,
    folder_digest,
    make_contract_model,
    plant,
    run_argv,
    textured_image,
    write_geotiff,
)

HANG_S = 90
LOCAL_CS = (
    'LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_hang():
    def alarm(signum, frame):
        raise TimeoutError(f"hung for {HANG_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _expect_refused(capsys, tmp_path, argv, needles):
    """The one-line exit-2 contract, ``needles`` all in the line, nothing written or changed."""
    before = folder_digest(tmp_path)
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err
    after = folder_digest(tmp_path)
    assert after == before, sorted(set(after) ^ set(before))
    return err[0]


# ------------------------------------------------------------------ pattern 2: content


def _registry(tmp_path: Path) -> Path:
    """A real registry with two cases (A, B) written by a night, in EPSG:4547 like the pair."""
    scene = (
        write_scene(tmp_path / "scene_b.tif", []),
        write_scene(tmp_path / "scene_c.tif", list(STRUCTURES)),
        CasesConfig(registry=tmp_path / "reg" / "cases.gpkg", evidence=False, report=False),
        tmp_path / "night1",
    )
    run_night(scene, ["A", "B"], date(2026, 1, 1))
    return tmp_path / "reg" / "cases.gpkg"


def _edit_registry(reg: Path, kind: str) -> str:
    """Damage the registry the way ``kind`` says; return the first case's ID."""
    conn = sqlite3.connect(reg)
    gpkg.register_gpkg_functions(conn)
    case_id = conn.execute("SELECT case_id FROM cases ORDER BY fid").fetchone()[0]
    if kind == "srs_id_disagrees":  # the layer says WGS84, the blobs say 4547
        conn.execute("UPDATE gpkg_geometry_columns SET srs_id = 4326")
    elif kind == "srs_id_and_blobs_relabelled":  # everything says WGS84, coordinates are metres
        conn.execute("UPDATE gpkg_geometry_columns SET srs_id = 4326")
        for fid, blob in conn.execute("SELECT fid, geom FROM cases").fetchall():
            geom = gpkg.decode_gpkg_geometry(blob)
            conn.execute(
                "UPDATE cases SET geom = ? WHERE fid = ?",
                (gpkg.encode_gpkg_geometry(geom, 4326), fid),
            )
    elif kind == "empty_geometry":
        conn.execute(
            "UPDATE cases SET geom = ? WHERE case_id = ?",
            (gpkg.encode_gpkg_geometry(shapely.Polygon(), 4547), case_id),
        )
    elif kind == "null_geometry":
        conn.execute("UPDATE cases SET geom = NULL WHERE case_id = ?", (case_id,))
    elif kind == "nan_geometry":
        bad = shapely.Polygon([(500020, 2500150), (np.nan, 2500160), (500030, 2500150)])
        conn.execute(
            "UPDATE cases SET geom = ? WHERE case_id = ?",
            (gpkg.encode_gpkg_geometry(bad, 4547), case_id),
        )
    elif kind == "local_cs":
        conn.execute(
            "INSERT INTO gpkg_spatial_ref_sys VALUES ('site grid', 100001, 'NONE', 100001, ?, '')",
            (LOCAL_CS,),
        )
        conn.execute("UPDATE gpkg_geometry_columns SET srs_id = 100001")
    conn.commit()
    conn.close()
    return case_id


@pytest.mark.parametrize(
    "kind,needles",
    [
        (
            "srs_id_disagrees",
            ["is stored in SRS 4547", "gpkg_geometry_columns.srs_id", "set srs_id"],
        ),
        ("srs_id_and_blobs_relabelled", ["outside the area of the layer's CRS", "srs_id"]),
        ("empty_geometry", ["has an empty geometry", "draw its outline in QGIS"]),
        ("null_geometry", ["has no geometry", "delete the case"]),
        ("nan_geometry", ["non-finite", "draw its outline"]),
        ("local_cs", ["local/engineering grid", "assign the real CRS"]),
    ],
)
def test_registry_content_refused_before_work(capsys, tmp_path, pair, kind, needles):
    """A registry problem is found before a tile runs: one line naming the registry and the case,
    no output folder, the registry untouched (never half-applied), and every rerun the same."""
    b, c, m = pair
    reg = _registry(tmp_path)
    case_id = _edit_registry(reg, kind)
    line = _expect_refused(
        capsys, tmp_path, run_argv(b, c, m, tmp_path / "out", "--cases", str(reg)), needles
    )
    assert str(reg) in line
    if kind != "local_cs":  # the CRS is refused before any case is read
        assert case_id in line
    assert not (tmp_path / "out").exists()
    _expect_refused(  # a rerun: the same line, still nothing written
        capsys, tmp_path, run_argv(b, c, m, tmp_path / "out", "--cases", str(reg)), needles
    )


def _mosaic_case(tmp_path: Path, kind: str, pair):
    b, c, m = pair
    rgb = textured_image(600, 600)
    if kind == "local_cs_mosaic":
        c = write_geotiff(tmp_path / "local.tif", rgb, LOCAL_CS, PAIR_TRANSFORM)
        return run_argv(b, c, m, tmp_path / "out"), [str(c), "local/engineering grid"]
    if kind in ("local_cs_boundaries", "local_cs_exclusion"):
        import geopandas as gpd
        from shapely.geometry import box

        layer = tmp_path / "layer.gpkg"
        gpd.GeoDataFrame(
            {"name": ["a"], "unit": ["u"]},
            geometry=[box(500000, 2512940, 500060, 2513000)],
            crs=LOCAL_CS,
        ).to_file(layer)
        cfg = tmp_path / "night.yaml"
        if kind == "local_cs_boundaries":
            reg = tmp_path / "reg" / "cases.gpkg"
            cfg.write_text(f"cases:\n  registry: {reg}\n  boundaries: {layer}\n")
            what = "boundary layer"
        else:
            cfg.write_text(f"change:\n  exclusions:\n    - path: {layer}\n      kind: permitted\n")
            what = "exclusion layer (permitted)"
        argv = run_argv(b, c, m, tmp_path / "out", "--config", str(cfg))
        return argv, [f"{layer}: {what}", "local/engineering grid", "Set Layer CRS"]
    if kind == "model_imgsz_100000":
        m = make_contract_model(tmp_path / "huge.onnx", extra_meta={"imgsz": "[100000, 100000]"})
        return run_argv(b, c, m, tmp_path / "out"), [str(m), "imgsz [100000, 100000]", "re-export"]
    if kind in ("damaged_block_ingest", "damaged_block_run"):
        p = tmp_path / "damaged.tif"
        with rasterio.open(
            p,
            "w",
            driver="GTiff",
            width=1024,
            height=1024,
            count=3,
            dtype="uint8",
            crs="EPSG:4547",
            transform=PAIR_TRANSFORM,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        ) as d:
            d.write(np.moveaxis(textured_image(1024, 1024), -1, 0))
            d.build_overviews([2, 4], rasterio.enums.Resampling.average)  # the check reads these
        with rasterio.open(p) as d:
            off = int(d.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
            size = int(d.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
        data = bytearray(p.read_bytes())
        data[off : off + size] = b"\xff" * size
        p.write_bytes(bytes(data))
        if kind == "damaged_block_run":  # a model at the mosaic's GSD reads full resolution
            m = make_contract_model(tmp_path / "m01.onnx", gsd=0.1)
            b = write_geotiff(
                tmp_path / "b1024.tif", textured_image(1024, 1024), "EPSG:4547", PAIR_TRANSFORM
            )
            argv = run_argv(b, p, m, tmp_path / "out")
        else:
            argv = [
                "ingest",
                str(p),
                "--baseline",
                str(b),
                "--out",
                str(tmp_path / "night" / "c.tif"),
            ]
        return argv, [str(p), "block at row 1, column 1 (pixels x 256-511, y 256-511)", "again"]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "local_cs_mosaic",
        "local_cs_boundaries",
        "local_cs_exclusion",
        "model_imgsz_100000",
        "damaged_block_ingest",
        "damaged_block_run",
    ],
)
def test_raster_and_model_content_refused(capsys, tmp_path, pair, kind):
    argv, needles = _mosaic_case(tmp_path, kind, pair)
    _expect_refused(capsys, tmp_path, argv, needles)
    assert not (tmp_path / "out").exists() and not (tmp_path / "night").exists()


def _candidates(out: Path):
    import geopandas as gpd

    return gpd.read_file(out / "candidates.gpkg", layer="candidates")


def test_south_up_mosaic_is_normalised_not_refused(capsys, tmp_path, oracle):
    """Tonight's mosaic stored south-up (positive pixel height) over exactly the baseline: read
    the right way up; the one planted structure is found where it is, once."""
    rgb = textured_image(600, 600)
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", PAIR_TRANSFORM)
    changed = plant(rgb, [(300, 200, 40, 40)])  # col, row, w, h: x 500030-500034, y 2512976-80
    south_up = Affine(0.1, 0, 500000, 0, 0.1, 2513000 - 60)  # row 0 is the southern edge
    c = write_geotiff(tmp_path / "c.tif", changed[::-1].copy(), "EPSG:4547", south_up)
    m = make_contract_model(tmp_path / "m.onnx")
    code = main(run_argv(b, c, m, tmp_path / "out"))
    assert code == 0, capsys.readouterr().err
    cands = _candidates(tmp_path / "out")
    assert len(cands) == 1
    x, y = cands.geometry.iloc[0].centroid.coords[0]
    assert abs(x - 500032.0) < 0.5 and abs(y - 2512978.0) < 0.5


def test_south_up_mosaic_ingests_the_right_way_up(capsys, tmp_path):
    """``ingest`` of a south-up mosaic over the baseline gives the baseline's north-up grid with
    the very same pixels (it said "does not overlap" before)."""
    rgb = textured_image(600, 600)
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", PAIR_TRANSFORM)
    south_up = Affine(0.1, 0, 500000, 0, 0.1, 2513000 - 60)
    c = write_geotiff(tmp_path / "c.tif", rgb[::-1].copy(), "EPSG:4547", south_up)
    out = tmp_path / "night" / "current.tif"
    assert main(["ingest", str(c), "--baseline", str(b), "--out", str(out)]) == 0
    with rasterio.open(out) as d:
        assert d.transform == PAIR_TRANSFORM
        assert np.array_equal(d.read(), np.moveaxis(rgb, -1, 0))


def test_huge_declared_current_is_not_allocated(capsys, tmp_path, pair):
    """A current mosaic whose header declares 400,000 x 400,000 px (sparse: one 512 px block of
    data, over the baseline) is read only over the baseline: the run finishes, where it
    allocated 71.5 GiB before."""
    b, _, m = pair
    c = tmp_path / "huge.tif"
    with rasterio.open(
        c,
        "w",
        driver="GTiff",
        width=400_000,
        height=400_000,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=Affine(0.1, 0, 500000 - 20000, 0, -0.1, 2513000 + 20000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        sparse_ok=True,
    ) as d:
        rgb = np.moveaxis(textured_image(1024, 1024), -1, 0)
        d.write(rgb, window=rasterio.windows.Window(200_000, 200_000, 1024, 1024))
    code = main(run_argv(b, c, m, tmp_path / "out"))
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "candidates.gpkg").is_file()


# ------------------------------------------------------------------ pattern 3: waits, litter


HOLDER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def locked_registry(tmp_path):
    """A registry another process (a real second SQLite connection) holds with BEGIN EXCLUSIVE."""
    reg = _registry(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(reg)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    yield reg, holder
    holder.kill()
    holder.wait()


def test_registry_lock_wait_is_bounded_and_names_the_holder(
    capsys, tmp_path, pair, locked_registry
):
    b, c, m = pair
    reg, holder = locked_registry
    cfg = tmp_path / "night.yaml"
    cfg.write_text(f"cases:\n  registry: {reg}\n  lock_wait_s: 1.5\n")
    t0 = time.monotonic()
    line = _expect_refused(
        capsys,
        tmp_path,
        run_argv(b, c, m, tmp_path / "out", "--config", str(cfg)),
        [str(reg), f"pid {holder.pid}", "within 1.5 s", "rerun"],
    )
    waited = time.monotonic() - t0
    assert 1.5 <= waited < 1.5 + 10, (waited, line)
    assert not (tmp_path / "out").exists()


def test_registry_write_wait_is_bounded_too(locked_registry):
    """The registry update at the end of a night (a lock taken after the run's check) waits at
    most ``cases.lock_wait_s`` in total too (20 x 30 s before), naming the holder."""
    from detector.errors import OutputError

    reg, holder = locked_registry
    conn = gpkg.connect(reg)
    t0 = time.monotonic()
    with gpkg.lock_wait(0.5), pytest.raises(OutputError) as err:
        with gpkg.write_transaction(conn):
            pass
    waited = time.monotonic() - t0
    conn.close()
    assert 0.5 <= waited < 3.0, waited
    assert f"pid {holder.pid}" in str(err.value) and "within 0.5 s" in str(err.value)


def test_sigterm_during_registry_wait_acts_within_a_second(tmp_path, pair, locked_registry):
    """SIGTERM while the run waits for the registry: exit 130 within 2 s, and no output folder
    (no candidates.gpkg, no lock) left behind."""
    b, c, m = pair
    reg, _ = locked_registry
    out = tmp_path / "out"
    cfg = tmp_path / "night.yaml"
    cfg.write_text(f"cases:\n  registry: {reg}\n  lock_wait_s: 60\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.Popen(
        [sys.executable, "-m", "detector", *run_argv(b, c, m, out, "--config", str(cfg))],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the run's only sleep is the lock wait's poll
        wchan = Path(f"/proc/{run.pid}/wchan").read_text()
        if "nanosleep" in wchan:
            break
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    else:
        raise AssertionError("the run never reached the registry wait")
    t0 = time.monotonic()
    run.send_signal(signal.SIGTERM)
    code = run.wait(timeout=10)
    took = time.monotonic() - t0
    assert code == 130, run.stderr.read()
    assert took < 2.0, took
    assert not out.exists()
    assert not list(reg.parent.glob(".*lock"))


def test_bad_scheduler_is_one_line_and_nothing_after(tmp_path, pair):
    """``--scheduler "not a scheduler"``: refused before work, and no "Exception ignored in
    Client.__del__" traceback afterwards."""
    pytest.importorskip("distributed")
    b, c, m = pair
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detector",
            *run_argv(b, c, m, tmp_path / "out", "--scheduler", "not a scheduler"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=80,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, lines
    assert "'not a scheduler' is not a Dask scheduler address" in lines[0]
    assert "tcp://HOST:PORT" in lines[0]
    assert time.monotonic() - t0 < 40
    assert not (tmp_path / "out").exists()


def test_retrain_levir_without_labels_leaves_nothing(capsys, tmp_path):
    import cv2

    levir = tmp_path / "levir"
    for sub in ("A", "B"):
        (levir / sub).mkdir(parents=True)
        cv2.imwrite(str(levir / sub / "t1.png"), textured_image(64, 64))
    _expect_refused(
        capsys,
        tmp_path,
        [
            "retrain",
            "--models",
            str(tmp_path / "models"),
            "--work",
            str(tmp_path / "work"),
            "--tiles",
            str(levir),
            "--tiles-gsd",
            "0.5",
        ],
        [str(levir), "label/ is missing"],
    )
    assert not (tmp_path / "work").exists() and not (tmp_path / "models").exists()


def test_mostly_empty_extent_skips_tiles_from_the_coarse_read(capsys, tmp_path):
    """A baseline of 20,000 x 20,000 px at 0.1 m whose imagery is one 600 px corner (nodata
    elsewhere): the tiles with no data in the coarse masks are never read (a tile that is read
    leaves its result in OUT/work/; the skipped ones are "nodata" in the tiles layer)."""
    import geopandas as gpd

    rgb = textured_image(600, 600)
    b = tmp_path / "b.tif"
    with rasterio.open(
        b,
        "w",
        driver="GTiff",
        width=20_000,
        height=20_000,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=PAIR_TRANSFORM,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        nodata=0,
        sparse_ok=True,
    ) as d:
        d.write(np.moveaxis(rgb, -1, 0), window=rasterio.windows.Window(0, 0, 600, 600))
    c = write_geotiff(tmp_path / "c.tif", rgb, "EPSG:4547", PAIR_TRANSFORM)
    m = make_contract_model(tmp_path / "m.onnx")
    code = main(run_argv(b, c, m, tmp_path / "out"))
    assert code == 0, capsys.readouterr().err
    tiles = gpd.read_file(tmp_path / "out" / "candidates.gpkg", layer="tiles")
    read = list((tmp_path / "out" / "work").glob("*/*.json"))
    # 2000 m x 2000 m at 0.25 m in 256 px tiles: the grid's every cell is a tile
    assert len(tiles) > 1000
    # the data (60 m x 60 m) touches a few cells, plus the one-coarse-pixel margin
    assert 1 <= len(read) <= 16, len(read)
    assert (tiles["status"] == "nodata").sum() >= len(tiles) - len(read)


def test_bit_flipped_block_that_decodes_is_logged(capsys, tmp_path, oracle):
    """A full-resolution block of tonight's mosaic damaged after its overviews were built (bytes
    overwritten in an uncompressed block: it decodes without error) shows as a change; the run
    still finishes, and the log names the file, the tile and the place, from the overview."""
    rgb = textured_image(600, 600)
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", PAIR_TRANSFORM)
    c = tmp_path / "c.tif"
    with rasterio.open(
        c,
        "w",
        driver="GTiff",
        width=600,
        height=600,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=PAIR_TRANSFORM,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as d:
        d.write(np.moveaxis(rgb, -1, 0))
        d.build_overviews([2, 4], rasterio.enums.Resampling.average)
    with rasterio.open(c) as d:  # pixel-interleaved block (row 0, col 1): x 256-511, y 0-255
        off = int(d.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1))
    data = bytearray(c.read_bytes())
    for row in range(100, 140):  # a 40 x 40 px red square at block pixels (100..139, 100..139)
        start = off + (row * 256 + 100) * 3
        data[start : start + 40 * 3] = bytes([230, 30, 30]) * 40
    c.write_bytes(bytes(data))
    m = make_contract_model(tmp_path / "m.onnx", gsd=0.1)  # reads full resolution, not overviews
    code = main(run_argv(b, c, m, tmp_path / "out"))
    assert code == 0, capsys.readouterr().err
    assert len(_candidates(tmp_path / "out")) == 1  # the damage is seen as a change...
    log = (tmp_path / "out" / "buildwatch.log").read_text()
    warned = [line for line in log.splitlines() if "differ from its own overview" in line]
    assert len(warned) == 1, log  # ... and named
    assert str(c) in warned[0] and "current mosaic" in warned[0]
    # the square's centre: x 500000 + (256 + 120) * 0.1, y 2513000 - 120 * 0.1
    x, y = (float(v) for v in warned[0].split("near (")[1].split(")")[0].split(", "))
    assert abs(x - 500037.6) < 2.5 and abs(y - 2512988.0) < 2.5
