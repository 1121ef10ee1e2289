"""Tests of the synthetic scene generator (detector.synth) and ``buildwatch synth``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.synth.scene import derive_seed, generate, generate_scene
from detector.synth.write import write_scene
from detector.types import CHANGE_CLASSES

REPO = Path(__file__).resolve().parents[2]


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _mask(polygons, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for poly in polygons:
        cv2.fillPoly(mask, [np.round((poly - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def _pixel_change(scene, t: int) -> np.ndarray:
    """Mean absolute RGB difference between epochs t and t+1, with t+1 moved back into the baseline frame."""
    before = scene.epochs[t].astype(np.float32)
    after = scene.epochs[t + 1].astype(np.float32)
    dx0, dy0 = scene.shifts[t]
    dx1, dy1 = scene.shifts[t + 1]
    for img, (dx, dy) in ((before, (dx0, dy0)), (after, (dx1, dy1))):
        if dx or dy:
            img[:] = cv2.warpAffine(
                img,
                np.float32([[1, 0, -dx], [0, 1, -dy]]),
                img.shape[1::-1],
                borderMode=cv2.BORDER_REFLECT,
            )
    # remove the scene-wide illumination shift (a distractor, not a change): match mean and std per channel
    after = (after - after.mean((0, 1))) / after.std((0, 1)) * before.std((0, 1)) + before.mean(
        (0, 1)
    )
    return np.abs(after - before).mean(axis=2)


# ---------------------------------------------------------------- determinism
def test_same_seed_same_scene_in_process(tmp_path):
    a = generate_scene(11, size=256, gsd=0.25)
    b = generate_scene(11, size=256, gsd=0.25)
    for ea, eb in zip(a.epochs, b.epochs):
        assert np.array_equal(ea, eb)
    assert [(c.cls, c.structure_id) for c in a.changes[0]] == [
        (c.cls, c.structure_id) for c in b.changes[0]
    ]
    write_scene(a, tmp_path / "a")
    write_scene(b, tmp_path / "b")
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    other = generate_scene(12, size=256, gsd=0.25)
    assert not np.array_equal(a.epochs[0], other.epochs[0])


def test_cli_is_deterministic_across_processes(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "detector",
        "synth",
        "--seed",
        "4",
        "--scenes",
        "2",
        "--size",
        "192",
        "--gsd",
        "0.3",
    ]
    for name in ("run1", "run2"):
        done = subprocess.run(
            cmd[:4] + [str(tmp_path / name)] + cmd[4:], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    first = _hashes(tmp_path / "run1")
    assert len(first) == 2 * 6  # 2 scenes x (2 tif, 3 geojson, scene.json)
    assert first == _hashes(tmp_path / "run2")
    generate(tmp_path / "inproc", seed=4, scenes=2, size=192, gsd=0.3)
    assert first == _hashes(tmp_path / "inproc")


def test_scene_module_keeps_the_names_its_callers_import():
    """CLI, training and older scripts import these from ``detector.synth.scene``."""
    import detector.synth.scene as scene

    for name in (
        "generate",
        "generate_scene",
        "write_scene",
        "derive_seed",
        "scene_transform",
        "Scene",
        "Footprint",
        "ChangeTruth",
        "CHANGE_CLASSES",
        "DEFAULT_CRS",
        "BASELINE_DATE",
    ):
        assert hasattr(scene, name), name
    assert scene.CHANGE_CLASSES is CHANGE_CLASSES


def test_planning_and_rendering_need_no_gdal():
    """The training machine has no GDAL: importing the generator loads neither rasterio nor pyproj."""
    code = (
        "import sys, detector.synth.scene; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rasterio', 'pyproj', 'osgeo')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_scene_seeds_are_derived_and_stable():
    assert derive_seed(4, 0) == derive_seed(4, 0)
    assert len({derive_seed(4, k) for k in range(20)}) == 20
    assert derive_seed(4, 1) != derive_seed(5, 1)


def test_cli_rejects_bad_size_with_exit_code_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "detector", "synth", str(tmp_path / "x"), "--size", "10"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--size 10" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- truth consistency
@pytest.mark.parametrize("seed,size,gsd", [(1, 512, 0.25), (2, 512, 0.25), (3, 640, 0.1)])
def test_truth_polygons_cover_changed_pixels(seed, size, gsd):
    scene = generate_scene(seed, size=size, gsd=gsd)
    assert scene.changes[0], "every scene has changes"
    diff = _pixel_change(scene, 0)
    explained = _mask(
        [c.polygon for c in scene.changes[0]] + [d.polygon for d in scene.demolished[0]], size
    )
    # typical (median) change of an unchanged pixel: shadows that moved, cars, noise, residual shift
    unchanged_level = float(np.median(diff[~explained]))
    assert unchanged_level < 20
    for change in scene.changes[0]:
        inside = _mask([change.polygon], size)
        inner = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        level = float(np.median(diff[inner if inner.sum() > 20 else inside]))
        assert level > 2.5 * unchanged_level, (
            change.cls,
            change.structure_id,
            level,
            unchanged_level,
        )


@pytest.mark.parametrize("seed", [5, 6])
def test_footprints_inside_raster_and_classes_valid(seed):
    scene = generate_scene(seed, size=384, gsd=0.25, nights=2)
    for epoch_footprints in scene.footprints:
        assert epoch_footprints
        for fp in epoch_footprints:
            assert fp.polygon.shape[1] == 2 and len(fp.polygon) >= 3
            assert fp.polygon.min() >= 0 and fp.polygon.max() <= scene.size
    for night in scene.changes:
        for change in night:
            assert change.cls in CHANGE_CLASSES
            assert change.polygon.min() >= 0 and change.polygon.max() <= scene.size


@pytest.mark.slow
def test_default_scene_has_every_class_with_metric_sizes():
    scene = generate_scene(21)  # 1024 px at 0.1 m
    classes = {c.cls for c in scene.changes[0]}
    assert classes == set(CHANGE_CLASSES)
    for change in scene.changes[0]:
        edges = (
            np.linalg.norm(np.diff(np.vstack([change.polygon, change.polygon[:1]]), axis=0), axis=1)
            * scene.gsd
        )
        longest = edges.max()
        limits = {
            "new_building": (5.9, 25.1),
            "extension": (2.9, 8.1),
            "temporary_structure": (2.9, 10.1),
            "construction_site": (9.9, 30.1),
        }[change.cls]
        assert limits[0] <= longest <= limits[1], (change.cls, longest)


def test_sizes_are_metric_at_any_gsd():
    coarse = generate_scene(8, size=256, gsd=0.4)
    fine = generate_scene(8, size=1024, gsd=0.1)
    # the same plan in metres: the same structures, polygons scaled by the GSD ratio
    a = {c.structure_id: c.polygon for c in coarse.changes[0]}
    b = {c.structure_id: c.polygon for c in fine.changes[0]}
    assert a.keys() == b.keys() and a
    for sid in a:
        assert np.allclose(a[sid] * 0.4, b[sid] * 0.1, atol=1e-6)


def test_multi_night_structures_persist_and_are_not_new_again():
    scene = generate_scene(9, size=512, gsd=0.25, nights=3)
    assert len(scene.epochs) == 4 and len(scene.changes) == 3 and len(scene.footprints) == 4
    seen_new: set[int] = set()
    removed: set[int] = set()
    for t, night in enumerate(scene.changes):
        ids = {c.structure_id for c in night}
        assert not ids & seen_new, "a structure became a change twice"
        seen_new |= ids
        removed |= {d.structure_id for d in scene.demolished[t]}
        present = {fp.structure_id for fp in scene.footprints[t + 1]}
        assert ids <= present
        assert (seen_new - removed) <= present
        assert not removed & present
        assert not ids & {d.structure_id for d in scene.demolished[t]}


def test_shift_is_bounded_and_baseline_unshifted():
    scene = generate_scene(10, size=256, gsd=0.25, nights=2)
    assert scene.shifts[0] == (0.0, 0.0)
    assert all(0 < np.hypot(*s) <= 3.0 for s in scene.shifts[1:])
    still = generate_scene(10, size=256, gsd=0.25, nights=2, max_shift_px=0)
    assert all(s == (0.0, 0.0) for s in still.shifts)


# ---------------------------------------------------------------- georeferencing
@pytest.mark.parametrize("crs", ["EPSG:4547", "EPSG:32650", "EPSG:4326"])
def test_crs_and_geotransform(tmp_path, crs):
    import pyogrio
    import rasterio
    from pyproj import Geod, Transformer

    scene = generate_scene(13, size=200, gsd=0.25)
    paths = write_scene(scene, tmp_path, crs=crs, center_lonlat=(114.25, 22.72))
    geod = Geod(ellps="WGS84")
    with rasterio.open(paths["baseline"]) as ds:
        assert ds.crs.to_epsg() == int(crs.split(":")[1])
        assert ds.count == 3 and ds.dtypes[0] == "uint8" and ds.width == 200
        assert ds.tags()["TIFFTAG_DATETIME"] == "2026:05:01 10:00:00"
        assert ds.block_shapes[0] == (256, 256) and ds.overviews(1) == []  # too small for overviews
        cx, cy = ds.transform @ (100, 100)
        lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
        assert geod.inv(lon, lat, 114.25, 22.72)[2] < 1.0
        x1, y1 = ds.transform @ (101, 100)
        x2, y2 = ds.transform @ (100, 101)
        to_ll = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        width_m = geod.inv(*to_ll.transform(cx, cy), *to_ll.transform(x1, y1))[2]
        height_m = geod.inv(*to_ll.transform(cx, cy), *to_ll.transform(x2, y2))[2]
        assert width_m == pytest.approx(0.25, rel=0.01) and height_m == pytest.approx(
            0.25, rel=0.01
        )
        bounds = ds.bounds
    with rasterio.open(paths["current"]) as ds:
        assert ds.tags()["TIFFTAG_DATETIME"] == "2026:05:02 10:00:00"
    truth = pyogrio.read_dataframe(paths["truth"])
    assert truth.crs.to_epsg() == int(crs.split(":")[1])
    assert set(truth["class"]) <= set(CHANGE_CLASSES) and len(truth) == len(scene.changes[0])
    left, bottom, right, top = truth.total_bounds
    assert (
        bounds.left <= left
        and right <= bounds.right
        and bounds.bottom <= bottom
        and top <= bounds.top
    )
    expected = sorted(round(_area(c.polygon) * 0.0625, 2) for c in scene.changes[0])
    assert sorted(truth["area_m2"]) == pytest.approx(expected)
    if crs != "EPSG:4326":
        assert sorted(truth.geometry.area) == pytest.approx(expected, rel=1e-3)


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def test_multi_night_files(tmp_path):
    folders = generate(tmp_path, seed=3, scenes=1, size=160, gsd=0.3, nights=2)
    names = {p.name for p in folders[0].iterdir()}
    for expected in (
        "baseline.tif",
        "current.tif",
        "truth.geojson",
        "epoch_00.tif",
        "epoch_02.tif",
        "truth_01.geojson",
        "truth_02.geojson",
        "footprints_00.geojson",
        "footprints_02.geojson",
    ):
        assert expected in names
    assert (folders[0] / "baseline.tif").read_bytes() == (folders[0] / "epoch_00.tif").read_bytes()
    assert (folders[0] / "truth.geojson").read_bytes() == (
        folders[0] / "truth_01.geojson"
    ).read_bytes()
