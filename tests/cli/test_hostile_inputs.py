"""Hostile inputs, as an unlucky operator of the unattended nightly job would give them.

Every case: exit code 2, exactly one line on stderr naming the file and what to do, no
traceback, checked before work starts (no ``candidates.gpkg``, no registry created, nothing
left in the output folder but what was there), every input byte-for-byte untouched, and no
hang (each case runs under an alarm).
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from cases_util import candidates
from detector.cli import main
from pipeline_util import (
    PAIR_TRANSFORM,
    folder_digest,
    make_contract_model,
    run_argv,
    textured_image,
    write_geotiff,
)

T = PAIR_TRANSFORM  # the grid of the `pair` fixture (conftest.py)
HANG_S = 60  # a case taking longer than this is a hang


@pytest.fixture(autouse=True)
def no_hang():
    def alarm(signum, frame):
        raise TimeoutError(f"hung for {HANG_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _expect_refused(capsys, tmp_path, argv, needle, *, out=None):
    """Run the CLI; assert the one-line exit-2 contract and that nothing was written or changed."""
    out = Path(out) if out is not None else tmp_path / "out"
    before = folder_digest(tmp_path)
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1, err
    assert needle in err[0], err
    assert "Traceback" not in err[0]
    after = folder_digest(tmp_path)
    created = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"inputs changed: {changed}"
    assert not [p for p in created if not p.endswith(("buildwatch-errors.log",))], (
        f"written: {created}"
    )
    if out.exists() and out.is_dir():
        assert not (out / "candidates.gpkg").is_file()
    return err[0]


def _raster(
    path, count=3, dtype="uint8", crs="EPSG:4547", transform=T, w=100, h=100, data=None, **kw
):
    import rasterio

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=count,
        dtype=dtype,
        crs=crs,
        transform=transform,
        **kw,
    ) as d:
        d.write(np.zeros((count, h, w), dtype) if data is None else data)
    return path


# ---------------------------------------------------------------- mosaics


def _bad_current(tmp_path, kind):
    p = tmp_path / f"{kind}.tif"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "folder":
        p.mkdir()
    elif kind == "text":
        p.write_text("not a raster")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        data = write_geotiff(
            tmp_path / "whole.tif", textured_image(600, 600), "EPSG:4547", T
        ).read_bytes()
        (tmp_path / "whole.tif").unlink()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "nocrs":
        import rasterio

        with rasterio.open(
            p, "w", driver="GTiff", width=50, height=50, count=3, dtype="uint8"
        ) as d:
            d.write(np.zeros((3, 50, 50), np.uint8))
    elif kind == "degrees_label_metres":
        _raster(p, crs="EPSG:4326", transform=Affine(0.1, 0, 500000, 0, -0.1, 2513000))
    elif kind == "two_bands":
        _raster(p, count=2)
    elif kind == "float32":
        _raster(p, dtype="float32")
    elif kind == "all_nodata":
        write_geotiff(p, np.zeros((600, 600, 3), np.uint8), "EPSG:4547", T, nodata=0)
    elif kind == "all_black":
        write_geotiff(p, np.zeros((600, 600, 3), np.uint8), "EPSG:4547", T)
    elif kind == "alpha_zero":
        data = np.concatenate(
            [np.moveaxis(textured_image(600, 600), -1, 0), np.zeros((1, 600, 600), np.uint8)]
        )
        _raster(p, count=4, w=600, h=600, data=data, photometric="RGB", alpha="YES")
    elif kind == "one_pixel":
        _raster(p, w=1, h=1, data=np.full((3, 1, 1), 128, np.uint8))
    elif kind == "gsd_100m":
        _raster(
            p,
            w=3,
            h=3,
            transform=Affine(100, 0, 499990, 0, -100, 2513010),
            data=np.full((3, 3, 3), 90, np.uint8),
        )
    elif kind == "elsewhere":
        write_geotiff(
            p, textured_image(100, 100), "EPSG:4547", Affine(0.1, 0, 600000, 0, -0.1, 2513000)
        )
    return p


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("fifo", "FIFO (named pipe), not a regular file"),
        ("folder", "is a folder"),
        ("text", "cannot be read"),
        ("empty", "empty.tif"),
        ("truncated", "truncated.tif"),
        ("nocrs", "has no CRS"),
        ("degrees_label_metres", "the CRS label is wrong"),
        ("two_bands", "2 band(s)"),
        ("float32", "pixel type float32"),
        ("all_nodata", "covers 0.0% of the baseline"),
        ("all_black", "covers 0.0% of the baseline"),
        ("alpha_zero", "covers 0.0% of the baseline"),
        ("one_pixel", "covers 0.0% of the baseline"),
        ("gsd_100m", "coarser than the model's"),
        ("elsewhere", "does not overlap"),
    ],
)
def test_bad_current_mosaic(capsys, tmp_path, pair, kind, needle):
    b, _, m = pair
    bad = _bad_current(tmp_path, kind)
    line = _expect_refused(capsys, tmp_path, run_argv(b, bad, m, tmp_path / "out"), needle)
    assert bad.name in line


def test_special_device_as_baseline(capsys, tmp_path, pair):
    _, c, m = pair
    _expect_refused(
        capsys,
        tmp_path,
        run_argv("/dev/zero", c, m, tmp_path / "out"),
        "/dev/zero: baseline mosaic is a device",
    )


# ---------------------------------------------------------------- model


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("folder", "model file is a folder"),
        ("fifo", "model file is a FIFO"),
        ("text", "not a readable ONNX model"),
        ("gsd_tiny", "buildwatch_gsd_m = 0.0001 m is outside"),
        ("gsd_huge", "buildwatch_gsd_m = 50 m is outside"),
    ],
)
def test_bad_model(capsys, tmp_path, pair, kind, needle):
    b, c, _ = pair
    m = tmp_path / "model.onnx"
    if kind == "folder":
        m.mkdir()
    elif kind == "fifo":
        os.mkfifo(m)
    elif kind == "text":
        m.write_text("onnx? no")
    elif kind == "gsd_tiny":
        make_contract_model(m, gsd=0.0001)
    elif kind == "gsd_huge":
        make_contract_model(m, gsd=50)
    _expect_refused(capsys, tmp_path, run_argv(b, c, m, tmp_path / "out"), needle)


# ---------------------------------------------------------------- flags and settings


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--conf", "0"), "setting 'detect.conf': Input should be greater than 0"),
        (("--conf", "1.5"), "setting 'detect.conf'"),
        (("--workers", "0"), "setting 'workers'"),
        (("--workers", "100000"), "more than 4 x the"),
        (("--conf", "abc"), "'abc' is not a valid float"),
        (("--no-such-flag",), "No such option '--no-such-flag'"),
    ],
)
def test_bad_flags(capsys, tmp_path, pair, extra, needle):
    b, c, m = pair
    argv = run_argv(b, c, m, tmp_path / "out")
    argv = argv[: argv.index("--workers")] + list(extra) + ["--no-progress"]
    _expect_refused(capsys, tmp_path, argv, needle)


def test_unknown_command_is_one_line(capsys, tmp_path):
    _expect_refused(capsys, tmp_path, ["frobnicate"], "No such command 'frobnicate'")


def _config(tmp_path, text: str | bytes, name="night.yaml") -> Path:
    p = tmp_path / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


@pytest.mark.parametrize(
    "content,needle",
    ids=lambda v: "binary" if isinstance(v, bytes) else str(v)[:24],
    argvalues=[
        ("current_date: 2026-02-30\n", "impossible value"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8 text"),
        ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("- just\n- a list\n", "expected a mapping"),
        ("detect:\n  intra_op_threads: 100000\n", "setting 'detect.intra_op_threads'"),
        ("detect:\n  conf: 0\n", "setting 'detect.conf'"),
        ("no_such_setting: 1\n", "setting 'no_such_setting'"),
        ("model: ''\n", "setting 'model': Value error, is empty"),
        ("cases:\n  registry: ''\n", "setting 'cases.registry'"),
        ("key: [unclosed\n", "not valid YAML"),
        ("x" * (2 << 20), "a settings file is a few KB"),
    ],
)
def test_bad_config_file(capsys, tmp_path, pair, content, needle):
    b, c, m = pair
    cfg = _config(tmp_path, content)
    argv = run_argv(b, c, m, tmp_path / "out", "--config", str(cfg))
    if "model:" in str(content):  # the flag would override the file's setting
        argv = argv[: argv.index("--model")] + argv[argv.index("--model") + 2 :]
    _expect_refused(capsys, tmp_path, argv, needle)


def test_config_fifo(capsys, tmp_path, pair):
    b, c, m = pair
    cfg = tmp_path / "night.yaml"
    os.mkfifo(cfg)
    _expect_refused(
        capsys, tmp_path, run_argv(b, c, m, tmp_path / "out", "--config", str(cfg)), "FIFO"
    )


# ---------------------------------------------------------------- output folder


def test_out_empty_string(capsys, tmp_path, pair, monkeypatch):
    b, c, m = pair
    monkeypatch.chdir(tmp_path)
    _expect_refused(capsys, tmp_path, run_argv(b, c, m, ""), "setting 'out': Value error, is empty")


@pytest.mark.parametrize(
    "setup,needle",
    [
        ("out_is_file", "output folder is a file"),
        ("parent_is_file", "cannot be created"),
        ("gpkg_is_folder", "candidates.gpkg: is a folder"),
        ("log_is_folder", "buildwatch.log: is a folder"),
        ("work_is_file", "work: is a file"),
    ],
)
def test_bad_output_folder(capsys, tmp_path, pair, setup, needle):
    b, c, m = pair
    out = tmp_path / "out"
    if setup == "out_is_file":
        out.write_text("x")
    elif setup == "parent_is_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    else:
        out.mkdir()
        name = {
            "gpkg_is_folder": "candidates.gpkg",
            "log_is_folder": "buildwatch.log",
            "work_is_file": "work",
        }[setup]
        (out / name).mkdir() if setup != "work_is_file" else (out / name).write_text("x")
    _expect_refused(capsys, tmp_path, run_argv(b, c, m, out), needle, out=out)


@pytest.mark.skipif(
    not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and os.geteuid() != 0,
    reason="needs a read-only file system (sysfs)",
)
def test_out_on_read_only_storage(capsys, tmp_path, pair):
    b, c, m = pair
    _expect_refused(capsys, tmp_path, run_argv(b, c, m, "/sys/buildwatch-out"), "not writable")


@pytest.mark.parametrize("where", ["out", "cases"])
def test_output_path_too_long_for_sqlite(capsys, tmp_path, pair, where):
    """SQLite opens no database whose absolute path exceeds 512 bytes: refused before the run,
    not 'Destination buffer too small' and an internal error after it."""
    b, c, m = pair
    deep = tmp_path
    while len(str(deep)) < 560:
        deep = deep / ("d" * 100)
    deep.mkdir(parents=True)
    (deep / "out").mkdir()  # the refused run must write nothing: the folders exist beforehand
    out = deep / "out" if where == "out" else tmp_path / "out"
    extra = ("--cases", str(deep / "cases.gpkg")) if where == "cases" else ()
    _expect_refused(
        capsys,
        tmp_path,
        run_argv(b, c, m, out, *extra),
        "the path is too long for a GeoPackage",
        out=out,
    )


def test_out_without_free_space(capsys, tmp_path, pair, monkeypatch):
    import detector.fileio as fileio

    b, c, m = pair
    monkeypatch.setattr(fileio, "free_bytes", lambda folder: 1 << 20)
    _expect_refused(
        capsys, tmp_path, run_argv(b, c, m, tmp_path / "out"), "has 1 MB free, the run needs about"
    )


# ---------------------------------------------------------------- registry, boundaries, exclusions


def _foreign_gpkg_with_cases_layer(path: Path) -> Path:
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame({"name": ["x"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:4547").to_file(
        path, layer="cases"
    )
    return path


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("text", "not a GeoPackage/SQLite file"),
        ("zero_bytes", "has no 'cases' layer"),
        ("foreign_cases_layer", "layer is not a buildwatch case registry"),
        ("folder", "is a folder"),
    ],
)
def test_bad_registry(capsys, tmp_path, pair, kind, needle):
    b, c, m = pair
    reg = tmp_path / "cases.gpkg"
    if kind == "text":
        reg.write_text("hello")
    elif kind == "zero_bytes":
        reg.write_bytes(b"")
    elif kind == "foreign_cases_layer":
        _foreign_gpkg_with_cases_layer(reg)
        mode = (
            sqlite3.connect(f"file:{reg}?mode=ro", uri=True)
            .execute("PRAGMA journal_mode")
            .fetchone()[0]
        )
    elif kind == "folder":
        reg.mkdir()
    _expect_refused(
        capsys, tmp_path, run_argv(b, c, m, tmp_path / "out", "--cases", str(reg)), needle
    )
    if kind == "zero_bytes":
        assert reg.stat().st_size == 0
    if (
        kind == "foreign_cases_layer"
    ):  # still in its journal mode (not switched to WAL), no -wal/-shm
        assert (
            sqlite3.connect(f"file:{reg}?mode=ro", uri=True)
            .execute("PRAGMA journal_mode")
            .fetchone()[0]
            == mode
        )
        assert not list(tmp_path.glob("cases.gpkg-*"))


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("text", "cannot read the boundary layer"),
        ("missing", "not found"),
        ("no_name_field", "no field 'name'"),
    ],
)
def test_bad_boundaries_leave_no_registry(capsys, tmp_path, pair, kind, needle):
    b, c, m = pair
    bnd = tmp_path / "communities.geojson"
    if kind == "text":
        bnd.write_text("these are not polygons")
    elif kind == "no_name_field":
        import geopandas as gpd
        from shapely.geometry import box

        gpd.GeoDataFrame(
            {"label": ["a"]}, geometry=[box(500000, 2512940, 500060, 2513000)], crs="EPSG:4547"
        ).to_file(bnd)
    cfg = _config(
        tmp_path, f"cases:\n  registry: {tmp_path / 'reg' / 'cases.gpkg'}\n  boundaries: {bnd}\n"
    )
    _expect_refused(
        capsys, tmp_path, run_argv(b, c, m, tmp_path / "out", "--config", str(cfg)), needle
    )
    assert not (tmp_path / "reg" / "cases.gpkg").exists()


def test_exclusion_layer_is_a_folder(capsys, tmp_path, pair):
    b, c, m = pair
    (tmp_path / "permits.gpkg").mkdir()
    cfg = _config(
        tmp_path,
        f"change:\n  exclusions:\n    - path: {tmp_path / 'permits.gpkg'}\n      kind: permitted\n",
    )
    _expect_refused(
        capsys,
        tmp_path,
        run_argv(b, c, m, tmp_path / "out", "--config", str(cfg)),
        "exclusion layer (permitted) is a folder",
    )


# ---------------------------------------------------------------- ingest


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("fifo", "FIFO"),
        ("truncated", "truncated.tif"),
        ("degrees_label_metres", "the CRS label is wrong"),
    ],
)
def test_bad_ingest_mosaic(capsys, tmp_path, pair, kind, needle):
    b, _, _ = pair
    bad = _bad_current(tmp_path, kind)
    _expect_refused(
        capsys,
        tmp_path,
        ["ingest", str(bad), "--baseline", str(b), "--out", str(tmp_path / "cur.tif")],
        needle,
    )


# ---------------------------------------------------------------- read-only commands


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("foreign_cases_layer", "layer is not a buildwatch case registry"),
        ("zero_bytes", "has no 'cases' layer"),
        ("text", "not a GeoPackage/SQLite file"),
    ],
)
def test_cases_list_never_writes(capsys, tmp_path, kind, needle):
    """``cases list`` on a foreign or empty file: exit 2, the file byte-for-byte unchanged, no -wal/-shm."""
    reg = tmp_path / "cases.gpkg"
    if kind == "foreign_cases_layer":
        _foreign_gpkg_with_cases_layer(reg)
    elif kind == "zero_bytes":
        reg.write_bytes(b"")
    else:
        reg.write_text("hello")
    code = main(["cases", "list", "--registry", str(reg)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.gpkg"]


def test_cases_list_reads_a_registry_without_writing(capsys, tmp_path):
    """A real registry is listed, and its bytes and folder are unchanged (no WAL switch, no -shm left)."""
    from detector.config import CasesConfig
    from detector.review.registry import update_registry

    reg = tmp_path / "cases.gpkg"
    update_registry(
        candidates(["A", "B"]),
        CasesConfig(registry=reg, district_prefix="LG"),
        run_id="r1",
        night=__import__("datetime").date(2026, 5, 1),
        baseline_path=tmp_path / "b.tif",
        current_path=tmp_path / "c.tif",
    )
    for extra in tmp_path.glob("cases.gpkg-*"):
        extra.unlink()
    before = folder_digest(tmp_path)
    assert main(["cases", "list", "--registry", str(reg)]) == 0
    assert "LG20260501-0001" in capsys.readouterr().out
    assert folder_digest(tmp_path) == before


def test_cases_export_onto_a_folder(capsys, tmp_path):
    from datetime import date

    from detector.config import CasesConfig
    from detector.review.registry import update_registry

    reg = tmp_path / "cases.gpkg"
    update_registry(
        candidates(["A"]),
        CasesConfig(registry=reg),
        run_id="r",
        night=date(2026, 5, 1),
        baseline_path=tmp_path / "b.tif",
        current_path=tmp_path / "c.tif",
    )
    for extra in tmp_path.glob("cases.gpkg-*"):
        extra.unlink()
    (tmp_path / "field.geojson").mkdir()
    _expect_refused(
        capsys,
        tmp_path,
        ["cases", "export", "--registry", str(reg), "--out", str(tmp_path / "field.geojson")],
        "field.geojson: is a folder",
    )
    # a file where the export's folder would be made
    (tmp_path / "afile").write_text("x")
    _expect_refused(
        capsys,
        tmp_path,
        ["cases", "export", "--registry", str(reg), "--out", str(tmp_path / "afile" / "x.csv")],
        "a file is in the way",
    )


# ---------------------------------------------------------------- pattern 1: settings checked together
#
# Each setting alone is valid; together (or for what they mean) they are not. Refused before any
# work: exit 2, one line naming the key (or file) and what to do, nothing written (no output
# folder, no lock, no registry).


def _dated(path: Path, date: str) -> Path:
    return write_geotiff(path, textured_image(600, 600), "EPSG:4547", T, date=f"{date} 10:00:00")


def _settings_case(tmp_path: Path, pair, kind: str) -> tuple[list[str], str]:
    """(argv, needle) of one pattern-1 case; the files it needs are made here, before the run."""
    b, c, m = pair
    out = tmp_path / "out"
    argv = run_argv(b, c, m, out)

    def with_config(text: str) -> list[str]:
        return [*argv, "--config", str(_config(tmp_path, text))]

    if kind == "duplicate_block":  # plain YAML would drop the first block's conf
        return with_config(
            "detect:\n  conf: 0.9\nworkers: 1\ndetect:\n  iou: 0.5\n"
        ), "night.yaml: line 4: key 'detect' is given twice (first on line 1)"
    if kind == "duplicate_nested_key":
        return with_config(
            "change:\n  min_area_m2: 4\n  min_area_m2: 40\n"
        ), "night.yaml: line 3: key 'min_area_m2' is given twice (first on line 2)"
    if kind == "min_area_above_max":
        return with_config(
            "change:\n  min_area_m2: 500\n  max_area_m2: 100\n"
        ), "setting 'change.min_area_m2': 500 m² is above max_area_m2 (100 m²)"
    if kind == "infinite_shift":
        return with_config("align:\n  max_shift_m: .inf\n"), (
            "setting 'align.max_shift_m': Input should be a finite number"
        )
    if kind == "dates_reversed":
        return with_config("baseline_date: 2026-05-02\ncurrent_date: 2026-05-01\n"), (
            "setting 'current_date': the current date 2026-05-01 is before the baseline date 2026-05-02"
        )
    if kind == "raster_dates_reversed":  # both from TIFFTAG_DATETIME
        b2, c2 = (
            _dated(tmp_path / "b2.tif", "2026:05:02"),
            _dated(tmp_path / "c2.tif", "2026:05:01"),
        )
        return run_argv(b2, c2, m, out), (
            "c2.tif (its TIFFTAG_DATETIME): the current date 2026-05-01 is before the baseline date"
        )
    if kind == "config_date_before_raster_baseline":
        b2 = _dated(tmp_path / "b2.tif", "2026:05:02")
        argv = run_argv(b2, c, m, out)
        return with_config("current_date: 2026-04-30\n"), "b2.tif (its TIFFTAG_DATETIME)"
    if kind == "boundaries_without_cases":
        bnd = tmp_path / "communities.geojson"
        bnd.write_text('{"type": "FeatureCollection", "features": []}')
        return [*argv, "--boundaries", str(bnd)], (
            "setting 'cases.boundaries': is set but cases.registry is not"
        )
    if kind == "cases_is_the_runs_candidates":
        return [*argv, "--cases", str(out / "candidates.gpkg")], (
            "setting 'cases.registry': " + f"{out / 'candidates.gpkg'} is the run's own output"
        )
    if kind == "cases_is_a_previous_nights_candidates":  # the output exists from last night
        out.mkdir()
        candidates(["A"]).to_file(out / "candidates.gpkg", layer="candidates")
        return [*argv, "--cases", str(out / "candidates.gpkg")], "is the run's own output"
    if kind == "cases_in_work_folder":
        return [*argv, "--cases", str(out / "work" / "cases.gpkg")], (
            "setting 'cases.registry': " + f"{out / 'work' / 'cases.gpkg'} is inside the run's work"
        )
    if kind == "cases_is_the_out_folder":
        return [
            *argv,
            "--cases",
            str(out),
        ], "setting 'cases.registry': " + f"{out} is the run's output folder"
    if kind == "cases_is_the_baseline":
        return [
            *argv,
            "--cases",
            str(b),
        ], "setting 'cases.registry': " + f"{b} is also the input baseline"
    if kind == "cases_is_the_model_via_dots":
        return [*argv, "--cases", f"{tmp_path}/sub/../m.onnx"], "is also the input model"
    if kind == "current_is_the_baseline":
        return run_argv(b, b, m, out), f"setting 'current': {b} is the same file as baseline"
    if kind == "current_is_a_hard_link_of_the_baseline":
        os.link(b, tmp_path / "tonight.tif")
        return run_argv(b, tmp_path / "tonight.tif", m, out), "is the same file as baseline"
    if kind == "current_is_a_symlink_of_the_baseline":
        (tmp_path / "tonight.tif").symlink_to(b)
        return run_argv(b, tmp_path / "tonight.tif", m, out), "is the same file as baseline"
    if kind == "dsms_the_same_file":
        dsm = tmp_path / "dsm.tif"
        dsm.write_bytes(b.read_bytes())
        return [*argv, "--baseline-dsm", str(dsm), "--current-dsm", str(dsm)], (
            "setting 'current_dsm': " + f"{dsm} is the same file as baseline_dsm"
        )
    if kind == "dsm_is_the_baseline_mosaic":
        dsm = tmp_path / "dsm.tif"
        dsm.symlink_to(b)
        return [*argv, "--baseline-dsm", str(dsm), "--current-dsm", str(c)], (
            "setting 'baseline_dsm': " + f"{dsm} is the same file as baseline"
        )
    if kind == "dsm_unit_without_dsm":
        return with_config("height:\n  current_units: foot\n"), (
            "setting 'height.current_units': is foot but current_dsm is not given"
        )
    if kind == "exclusion_is_the_runs_output":  # last night's candidates as tonight's permits
        out.mkdir()
        candidates(["A"]).to_file(out / "candidates.gpkg", layer="candidates")
        return (
            with_config(
                f"change:\n  exclusions:\n    - path: {out / 'candidates.gpkg'}\n      kind: known_building\n"
            ),
            "setting 'change.exclusions.0.path': "
            + f"{out / 'candidates.gpkg'} is the run's own output",
        )
    if kind == "prefix_with_path":  # would write evidence PNGs outside the registry folder
        reg = tmp_path / "reg" / "cases.gpkg"
        return (
            with_config(f"cases:\n  registry: {reg}\n  district_prefix: '../../../escaped/'\n"),
            "setting 'cases.district_prefix': Value error, '../../../escaped/' becomes part of file names",
        )
    if kind == "prefix_absolute":
        return with_config("cases:\n  district_prefix: /tmp/x\n"), "setting 'cases.district_prefix'"
    if kind == "prefix_too_long":
        return with_config(f"cases:\n  district_prefix: {'L' * 40}\n"), "40 characters long"
    if kind == "model_version_with_path":
        (tmp_path / "models").mkdir()
        argv = argv[: argv.index("--model")] + argv[argv.index("--model") + 2 :]
        return [*argv, "--models", str(tmp_path / "models"), "--model-version", "../v0001"], (
            "setting 'model_version': Value error, '../v0001' becomes part of file names"
        )
    if kind == "model_version_without_models":
        argv = argv[: argv.index("--model")] + argv[argv.index("--model") + 2 :]
        return [*argv, "--model-version", "v0001"], "model_version v0001 needs the registry folder"
    if kind == "model_and_model_version":
        return [*argv, "--model-version", "v0001"], "give either model (a file) or model_version"
    if kind == "one_dsm":
        dsm = tmp_path / "dsm.tif"
        dsm.write_bytes(b.read_bytes())
        return [*argv, "--baseline-dsm", str(dsm)], "height change needs both DSMs: give --current"
    raise AssertionError(kind)


SETTINGS_CASES = [
    "duplicate_block",
    "duplicate_nested_key",
    "min_area_above_max",
    "infinite_shift",
    "dates_reversed",
    "raster_dates_reversed",
    "config_date_before_raster_baseline",
    "boundaries_without_cases",
    "cases_is_the_runs_candidates",
    "cases_is_a_previous_nights_candidates",
    "cases_in_work_folder",
    "cases_is_the_out_folder",
    "cases_is_the_baseline",
    "cases_is_the_model_via_dots",
    "current_is_the_baseline",
    "current_is_a_hard_link_of_the_baseline",
    "current_is_a_symlink_of_the_baseline",
    "dsms_the_same_file",
    "dsm_is_the_baseline_mosaic",
    "dsm_unit_without_dsm",
    "exclusion_is_the_runs_output",
    "prefix_with_path",
    "prefix_absolute",
    "prefix_too_long",
    "model_version_with_path",
    "model_version_without_models",
    "model_and_model_version",
    "one_dsm",
]


@pytest.mark.parametrize("kind", SETTINGS_CASES)
def test_settings_checked_together(capsys, tmp_path, pair, kind):
    argv, needle = _settings_case(tmp_path, pair, kind)
    existed = (tmp_path / "out").exists()
    # last night's candidates.gpkg is there beforehand: the digest shows it unchanged
    out = tmp_path / ("unused" if existed else "out")
    _expect_refused(capsys, tmp_path, argv, needle, out=out)
    assert (tmp_path / "out").exists() == existed  # no output folder made, so no lock left
    assert not (tmp_path / "reg").exists() and not (tmp_path.parent / "escaped").exists()


def test_same_day_epochs_are_not_refused():
    """The date rule refuses only a current date before the baseline's (two flights a day are fine)."""
    from detector.config import load_config

    cfg = load_config(None, {"baseline_date": "2026-05-01", "current_date": "2026-05-01"})
    assert cfg.current_date == cfg.baseline_date


# ---------------------------------------------------------------- pattern 1: ingest and ortho


def _ingest_case(tmp_path: Path, pair, kind: str) -> tuple[list[str], str]:
    b, c, _ = pair
    ingest = ["ingest", str(c), "--baseline", str(b), "--out"]
    if kind == "out_is_the_mosaic":  # would rewrite its input in place
        return [*ingest, str(c)], f"{c}: --out is the input MOSAIC"
    if kind == "out_is_the_baseline":
        return [*ingest, str(b)], f"{b}: --out is the input --baseline"
    if kind == "out_is_the_mosaic_via_dots":
        return [*ingest, f"{tmp_path}/x/../c.tif"], "--out is the input MOSAIC"
    if kind == "out_is_a_hard_link_of_the_mosaic":
        os.link(c, tmp_path / "current.tif")
        return [*ingest, str(tmp_path / "current.tif")], "--out is the input MOSAIC"
    if kind == "out_empty":
        return [*ingest, ""], "is not a file name; give the output COG"
    if kind == "units_without_dsm":
        return [*ingest, str(tmp_path / "cur.tif"), "--units", "foot"], (
            "--units foot is for a DSM's heights and needs --dsm"
        )
    if kind == "coverage_above_one":
        return [*ingest, str(tmp_path / "cur.tif"), "--min-coverage", "2"], (
            "--min-coverage 2.0: must be a fraction between 0 and 1"
        )
    if kind == "coverage_nan":
        return [*ingest, str(tmp_path / "cur.tif"), "--min-coverage", "nan"], (
            "--min-coverage nan: must be a fraction"
        )
    if kind == "all_nodata_into_a_new_folder":  # refused while writing: the folder it made goes
        bad = _bad_current(tmp_path, "all_nodata")
        return ["ingest", str(bad), "--baseline", str(b), "--out", "night/2026-05-01/c.tif"], (
            "has no valid pixels over the baseline"
        )
    if kind == "ortho_out_is_the_baseline":
        frame = tmp_path / "DJI_0001.JPG"
        frame.write_bytes(b"\xff\xd8\xff")
        return ["ortho", str(frame), "--baseline", str(b), "--out", str(b)], (
            f"{b}: --out is the input --baseline"
        )
    if kind == "ortho_out_is_a_frame":
        frame = tmp_path / "DJI_0001.JPG"
        frame.write_bytes(b"\xff\xd8\xff")
        return ["ortho", str(frame), "--baseline", str(b), "--out", str(frame)], (
            "--out is the input FRAMES"
        )
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "out_is_the_mosaic",
        "out_is_the_baseline",
        "out_is_the_mosaic_via_dots",
        "out_is_a_hard_link_of_the_mosaic",
        "out_empty",
        "units_without_dsm",
        "coverage_above_one",
        "coverage_nan",
        "all_nodata_into_a_new_folder",
        "ortho_out_is_the_baseline",
        "ortho_out_is_a_frame",
    ],
)
def test_ingest_and_ortho_arguments_checked_together(capsys, tmp_path, pair, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, needle = _ingest_case(tmp_path, pair, kind)
    _expect_refused(capsys, tmp_path, argv, needle)


@pytest.mark.parametrize("dsm", [False, True], ids=["mosaic", "dsm"])
def test_ingest_readme_form_writes_in_the_working_folder(capsys, tmp_path, pair, monkeypatch, dsm):
    """``buildwatch ingest ODM_DSM.tif --baseline B.tif --out current_dsm.tif --dsm`` (docs): a
    bare file name is in the working folder, as for any command (it was refused as an empty
    folder)."""
    import rasterio

    b, c, _ = pair
    monkeypatch.chdir(tmp_path)
    if dsm:  # heights 12.5 m everywhere, in metres
        data = np.full((1, 600, 600), 12.5, np.float32)
        c = _raster(tmp_path / "ODM_DSM.tif", count=1, dtype="float32", w=600, h=600, data=data)
    out = "current_dsm.tif" if dsm else "current.tif"
    before = {p.name for p in tmp_path.iterdir()}
    argv = ["ingest", c.name, "--baseline", b.name, "--out", out, *(["--dsm"] if dsm else [])]
    assert main(argv) == 0
    assert f"wrote {out} (600x600 px)" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} - before == {out}  # no temporary folder left
    with rasterio.open(tmp_path / out) as src, rasterio.open(b) as ref:
        assert (src.crs, src.transform, src.width, src.height) == (
            ref.crs,
            ref.transform,
            ref.width,
            ref.height,
        )
        if dsm:
            assert src.dtypes[0] == "float32"
            assert float(src.read(1)[300, 300]) == 12.5


# ---------------------------------------------------------------- no string becomes a path


def test_evidence_writer_refuses_a_path_outside_the_registry_folder(tmp_path):
    """Defence in depth behind the config's rule: a registry built with a prefix that holds a path
    (the config refuses it; ``model_construct`` skips validation, as an old or edited registry
    would) writes its cases but not one evidence PNG outside the registry folder."""
    from datetime import date

    from cases_util import STRUCTURES, write_scene
    from detector.config import CasesConfig
    from detector.review import nightly

    base = write_scene(tmp_path / "baseline.tif", [])
    cur = write_scene(tmp_path / "current.tif", list(STRUCTURES))
    reg = tmp_path / "a" / "b" / "c" / "cases.gpkg"
    config = CasesConfig.model_construct(
        **{**CasesConfig().model_dump(), "registry": reg, "district_prefix": "../../../escaped/"}
    )
    result = nightly.update_cases(
        candidates(["A", "B"]),
        config,
        run_id="r",
        night=date(2026, 5, 1),
        baseline_path=base,
        current_path=cur,
        out_dir=tmp_path / "out",
    )
    assert len(result.opened_ids) == 2
    assert result.evidence_paths == []
    pngs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert pngs == [] and not (tmp_path / "a" / "escaped").exists()


@pytest.mark.parametrize(
    "target,within",
    [
        ("reg/evidence/../../../escaped/x.png", None),  # climbs out of the folder it names
        ("/etc/x.png", "reg"),  # an absolute 'evidence' value
        ("reg/../x.png", "reg"),
        ("reg/link/x.png", "reg"),  # a symlink inside the registry folder pointing outside
    ],
)
def test_contained_path_refuses_escapes(tmp_path, monkeypatch, target, within):
    from detector.errors import InputError
    from detector.review.evidence import contained_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reg" / "evidence").mkdir(parents=True)
    (tmp_path / "reg" / "link").symlink_to(tmp_path.parent)
    with pytest.raises(InputError, match="evidence chip path leads outside"):
        contained_path(Path(target), within and Path(within))
    assert contained_path(Path("reg/evidence/LG20260501-0001.png"), Path("reg"))
    assert contained_path(Path("reg/evidence/LG20260501-0001.png"))


# The training commands' options that only mean something beside another option: refused in
# one line before any work, never silently ignored.
TRAINING_OPTION_CASES = {
    "export_building_config_without_weights": (
        ["export", "--weights", "W", "--out", "m.onnx", "--building-config", "b.yaml"],
        "--building-config is the building model's training config and needs --building-weights",
    ),
    "retrain_tiles_gsd_without_tiles": (
        [
            "retrain",
            "--models",
            "models",
            "--work",
            "work",
            "--cases",
            "cases.gpkg",
            "--tiles-gsd",
            "0.5",
        ],
        "--tiles-gsd is the pixel size of the --tiles folder's PNG tiles and needs --tiles",
    ),
    "retrain_baseline_without_cases": (
        ["retrain", "--models", "models", "--work", "work", "--tiles", "tiles", "--baseline", "B"],
        "--baseline needs --cases: it is the mosaic of the night the cases were reviewed on",
    ),
    "retrain_both_mosaics_without_cases": (
        [
            "retrain",
            "--models",
            "models",
            "--work",
            "work",
            "--tiles",
            "tiles",
            "--baseline",
            "B",
            "--current",
            "C",
        ],
        "--baseline and --current need --cases: they are the mosaics of the night",
    ),
}


@pytest.mark.parametrize("kind", list(TRAINING_OPTION_CASES))
def test_training_options_that_need_another(capsys, tmp_path, pair, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    b, c, _ = pair
    argv, needle = TRAINING_OPTION_CASES[kind]
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"not read: refused before")
    names = {"W": str(weights), "B": str(b), "C": str(c)}
    _expect_refused(capsys, tmp_path, [names.get(a, a) for a in argv], needle)
