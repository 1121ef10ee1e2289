"""Orthorectification against exact synthetic truth, bad frames, output format, real DJI photos."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

from detector.cli import main
from detector.flight.baseline import WorldFrame, open_baseline
from detector.flight.camera import Camera, GroundPlane, camera_rotation
from detector.flight.ortho import OrthoConfig, orthomosaic
from detector.flight.refine import match_to_baseline
from detector.geo.grid import Grid
from detector.synth.frames import render_frame_from_orthophoto, write_frame_jpeg

CRS = "EPSG:32650"  # UTM 50N (Shenzhen)
LEFT, TOP, RES, SIZE = 500_000.0, 2_500_300.0, 0.2, 1500  # 300 m x 300 m at 0.2 m


def _texture(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n), np.float32)
    for scale in (3, 12, 48):
        small = rng.random((n // scale + 3, n // scale + 3)).astype(np.float32)
        img += (
            cv2.resize(small, (n + 3 * scale, n + 3 * scale), interpolation=cv2.INTER_CUBIC)[:n, :n]
            / 3
        )
    rgb = np.stack([img * 200, img * 170 + 30, 160 - img * 110], -1)
    for _ in range(700):  # "roofs"
        x, y = rng.integers(0, n - 40, 2)
        w, h = rng.integers(6, 40, 2)
        rgb[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A textured baseline GeoTIFF (the ground truth orthophoto) and a renderer of frames over it."""
    folder = tmp_path_factory.mktemp("ortho")
    rgb = _texture(SIZE)
    base = folder / "baseline.tif"
    with rasterio.open(
        base,
        "w",
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=3,
        dtype="uint8",
        crs=CRS,
        transform=from_origin(LEFT, TOP, RES, RES),
        tiled=True,
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    grid = Grid(
        crs=rasterio.crs.CRS.from_string(CRS),
        left=LEFT,
        top=TOP,
        res_x=RES,
        res_y=RES,
        width=SIZE,
        height=SIZE,
    )
    world = WorldFrame(grid.crs, 114.0, 22.6)
    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)

    def frame(
        name,
        x,
        y,
        alt,
        yaw,
        pitch,
        roll=0.0,
        width=800,
        height=600,
        f35=24,
        pose_error=(0.0, 0.0, 0.0),
        **kwargs,
    ):
        """Render what a camera at (x, y, alt) sees; write the pose (plus ``pose_error`` dx, dy, dyaw) to EXIF/XMP."""
        fpx = f35 / 36 * max(width, height)
        cam = Camera(
            center=np.array([x, y, alt]),
            rotation=camera_rotation(yaw, pitch, roll),
            focal_px=fpx,
            width=width,
            height=height,
        )
        img = render_frame_from_orthophoto(rgb, grid, cam, world, GroundPlane(0.0))
        lon, lat = to_lonlat.transform(x + pose_error[0], y + pose_error[1])
        path = folder / name
        write_frame_jpeg(
            path,
            img,
            lat,
            lon,
            alt,
            yaw + pose_error[2],
            pitch,
            roll,
            abs_alt_m=alt + 30,
            focal_px=fpx,
            quality=95,
            **kwargs,
        )
        return path

    return {"folder": folder, "baseline": base, "frame": frame, "rgb": rgb}


def _misregistration_m(path, baseline, block: int = 96) -> tuple[float, int]:
    """RMS of block-wise phase-correlation shifts (metres) between a mosaic and the baseline."""
    base = open_baseline(baseline)
    with rasterio.open(path) as src:
        t = src.transform
        grid = Grid(
            crs=src.crs,
            left=t.c,
            top=t.f,
            res_x=t.a,
            res_y=-t.e,
            width=src.width,
            height=src.height,
        )
        img = cv2.cvtColor(np.moveaxis(src.read(), 0, -1), cv2.COLOR_RGB2GRAY).astype(np.float32)
        valid = src.read_masks(1) > 0
    ref_rgb, ref_valid = base.read(grid)
    ref = cv2.cvtColor(ref_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    win = cv2.createHanningWindow((block, block), cv2.CV_32F)
    shifts = []
    for r in range(0, grid.height - block, block):
        for c in range(0, grid.width - block, block):
            sl = (slice(r, r + block), slice(c, c + block))
            if valid[sl].all() and ref_valid[sl].all():
                (dx, dy), response = cv2.phaseCorrelate(ref[sl], img[sl], win)
                if response > 0.1:
                    shifts.append((dx, dy))
    s = np.array(shifts)
    return float(np.sqrt(np.mean(np.sum(s**2, axis=1))) * grid.res_x), len(s)


def test_rotation_conventions():
    up_in_image = np.array([0.0, -1.0, 0.0])  # camera -y = towards the top of the image
    assert camera_rotation(0, -90, 0) @ np.array([0, 0, 1.0]) == pytest.approx(
        [0, 0, -1]
    )  # nadir looks down
    assert camera_rotation(0, -90, 0) @ up_in_image == pytest.approx(
        [0, 1, 0]
    )  # yaw 0: image top = north
    assert camera_rotation(90, -90, 0) @ up_in_image == pytest.approx(
        [1, 0, 0]
    )  # yaw 90: image top = east
    assert camera_rotation(90, 0, 0) @ np.array([0, 0, 1.0]) == pytest.approx(
        [1, 0, 0]
    )  # level, heading east


def test_exact_poses_land_within_half_a_metre_without_refinement(scene, tmp_path):
    frames = [
        scene["frame"]("a.jpg", LEFT + 120, TOP - 130, 60.0, 25.0, -88.0, 1.5),
        scene["frame"]("b.jpg", LEFT + 170, TOP - 150, 120.0, -140.0, -75.0, -2.0),
        scene["frame"]("c.jpg", LEFT + 150, TOP - 170, 90.0, 200.0, -90.0),
    ]
    out = tmp_path / "direct.tif"
    result = orthomosaic(frames, scene["baseline"], out, cfg=OrthoConfig(refine=False))
    assert [f.status for f in result.frames] == ["direct"] * 3
    rmse, blocks = _misregistration_m(out, scene["baseline"])
    assert blocks >= 20
    print(f"direct RMSE {rmse:.3f} m over {blocks} blocks")
    assert rmse <= 0.5, f"direct georeferencing RMSE {rmse:.2f} m"


def test_large_mosaic_path_gives_the_same_pixels(scene, tmp_path, monkeypatch):
    """Above IN_MEMORY_MOSAIC_PX the nadir-distance array lives on disk; the mosaic is identical."""
    import rasterio

    import detector.flight.blend as blend

    frames = [
        scene["frame"]("m1.jpg", LEFT + 130, TOP - 140, 80.0, 40.0, -90.0),
        scene["frame"]("m2.jpg", LEFT + 165, TOP - 160, 100.0, -70.0, -85.0),
    ]
    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    orthomosaic(frames, scene["baseline"], small, cfg=OrthoConfig(refine=False))
    monkeypatch.setattr(blend, "IN_MEMORY_MOSAIC_PX", 0)
    orthomosaic(frames, scene["baseline"], large, cfg=OrthoConfig(refine=False))
    with rasterio.open(small) as a, rasterio.open(large) as b:
        assert np.array_equal(a.read(), b.read())
        assert np.array_equal(a.dataset_mask(), b.dataset_mask())


def test_pose_errors_are_corrected_to_one_working_pixel(scene, tmp_path):
    errors = [(3.0, -2.0, 2.0), (-3.0, 3.0, -2.0)]  # dx, dy (m), dyaw (deg)
    frames = [
        scene["frame"]("e1.jpg", LEFT + 130, TOP - 140, 80.0, 40.0, -90.0, pose_error=errors[0]),
        scene["frame"]("e2.jpg", LEFT + 165, TOP - 160, 100.0, -70.0, -85.0, pose_error=errors[1]),
    ]
    direct, refined = tmp_path / "direct.tif", tmp_path / "refined.tif"
    orthomosaic(frames, scene["baseline"], direct, cfg=OrthoConfig(refine=False))
    result = orthomosaic(frames, scene["baseline"], refined)
    assert [f.status for f in result.frames] == ["refined", "refined"]
    before, _ = _misregistration_m(direct, scene["baseline"])
    after, blocks = _misregistration_m(refined, scene["baseline"])
    assert before > 2.0  # the pose errors really displaced the frames
    assert blocks >= 20
    print(f"misregistration before {before:.3f} m, after {after:.3f} m")
    assert after <= RES, (
        f"after refinement {after:.2f} m (working GSD {RES} m); before {before:.2f} m"
    )
    for rep in result.frames:
        assert (
            2.0 < rep.shift_m < 10.0
        )  # the reported offset before refinement is the injected error
        assert (
            rep.residual_m < 2 * RES
        )  # per-keypoint RMS (ORB localisation noise), not the alignment error


def test_output_is_a_cog_with_mask_and_residual_tags(scene, tmp_path):
    frame = scene["frame"]("tag.jpg", LEFT + 150, TOP - 150, 80.0, 10.0, -90.0)
    out = tmp_path / "current.tif"
    orthomosaic([frame], scene["baseline"], out)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32650 and src.res == (RES, RES)
        assert (src.transform.c - LEFT) / RES == pytest.approx(
            round((src.transform.c - LEFT) / RES)
        )  # baseline-aligned
        assert src.count == 3 and src.overviews(1)
        assert src.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
        mask = src.read_masks(1)
        assert 0.3 < (mask > 0).mean() < 1.0
        frames = json.loads(src.tags()["buildwatch_ortho_frames"])
        assert src.tags()["TIFFTAG_DATETIME"] == "2024:05:01 10:00:00"
    assert frames[0]["status"] == "refined" and frames[0]["residual_m"] < 2 * RES
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_bad_frames_are_skipped_with_reasons(scene, tmp_path, capsys):
    good = scene["frame"]("good.jpg", LEFT + 150, TOP - 150, 80.0, 0.0, -90.0)
    no_gps = write_frame_jpeg(
        tmp_path / "nogps.jpg",
        np.full((60, 80, 3), 128, np.uint8),
        None,
        None,
        80.0,
        0.0,
        -90.0,
        focal_px=50,
    )
    horizon = scene["frame"]("horizon.jpg", LEFT + 150, TOP - 150, 80.0, 0.0, -20.0)
    outside = scene["frame"](
        "outside.jpg", LEFT + 150, TOP - 150, 80.0, 0.0, -90.0, pose_error=(5000.0, 0.0, 0.0)
    )
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    out = tmp_path / "mosaic.tif"
    code = main(
        [
            "ortho",
            str(good),
            str(no_gps),
            str(horizon),
            str(outside),
            str(corrupt),
            "--baseline",
            str(scene["baseline"]),
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "from 1 of 5 frames" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert "no GPS" in lines["nogps.jpg"]
    assert "horizon" in lines["horizon.jpg"]
    assert "outside the baseline" in lines["outside.jpg"]
    assert "truncated" in lines["corrupt.jpg"] or "corrupt" in lines["corrupt.jpg"]
    assert "refined" in lines["good.jpg"]


def test_no_usable_frame_is_exit_2(scene, tmp_path, capsys):
    no_gps = write_frame_jpeg(
        tmp_path / "nogps.jpg",
        np.full((60, 80, 3), 128, np.uint8),
        None,
        None,
        80.0,
        0.0,
        -90.0,
        focal_px=50,
    )
    code = main(
        [
            "ortho",
            str(no_gps),
            "--baseline",
            str(scene["baseline"]),
            "--out",
            str(tmp_path / "x.tif"),
        ]
    )
    assert code == 2
    assert "no GPS" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_brighton_beach_against_webodm_orthophoto(shared_data, tmp_path):
    images = shared_data / "drone_brighton_beach" / "images"
    baseline = shared_data / "webodm_test_fixtures" / "orthophoto.tif"
    out = tmp_path / "bb.tif"
    result = orthomosaic([images], baseline, out)
    assert len(result.used) == 5
    for rep in result.frames:
        assert rep.status == "refined", rep
        assert rep.residual_m < 2.0 and rep.shift_m < 5.0
    # independent check: match the written mosaic against the orthophoto again
    base = open_baseline(baseline)
    with rasterio.open(out) as src:
        t = src.transform
        grid = Grid(
            crs=src.crs,
            left=t.c,
            top=t.f,
            res_x=t.a,
            res_y=-t.e,
            width=src.width,
            height=src.height,
        )
        mosaic = np.ascontiguousarray(np.moveaxis(src.read(), 0, -1))
        valid = src.read_masks(1) > 0
    ref, ref_valid = base.read(grid)
    check = match_to_baseline(
        mosaic, valid, ref, ref_valid, grid, OrthoConfig(retry_flipped_yaw=False)
    )
    assert check.ok, check.reason
    assert check.shift_m < 2.0 and check.residual_m < 2.0


class _Ramp:
    """Terrain rising 0.15 m per metre eastwards (0 m at LEFT, 45 m at the eastern edge)."""

    def height(self, x, y):
        return 0.15 * (np.asarray(x, dtype=float) - LEFT)


@pytest.mark.parametrize("altitude", [dict(altitude_source="absolute"), dict(takeoff_height_m=0.0)])
def test_dem_removes_terrain_parallax(scene, tmp_path, altitude):
    """Frames over sloping ground: a DEM puts them in place, a flat plane does not."""
    grid = Grid(
        crs=rasterio.crs.CRS.from_string(CRS),
        left=LEFT,
        top=TOP,
        res_x=RES,
        res_y=RES,
        width=SIZE,
        height=SIZE,
    )
    world = WorldFrame(grid.crs, 114.0, 22.6)
    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    frames = []
    for name, x, y, yaw in (
        ("d1.jpg", LEFT + 150, TOP - 140, 30.0),
        ("d2.jpg", LEFT + 180, TOP - 165, -60.0),
    ):
        alt = 100.0  # above the take-off point, which is at terrain height 0 (x = LEFT)
        fpx = 24 / 36 * 800
        cam = Camera(
            center=np.array([x, y, alt]),
            rotation=camera_rotation(yaw, -90.0, 0.0),
            focal_px=fpx,
            width=800,
            height=600,
        )
        img = render_frame_from_orthophoto(scene["rgb"], grid, cam, world, _Ramp())
        lon, lat = to_lonlat.transform(x, y)
        path = tmp_path / name
        write_frame_jpeg(
            path, img, lat, lon, alt, yaw, -90.0, 0.0, abs_alt_m=alt, focal_px=fpx, quality=95
        )
        frames.append(path)
    dem = tmp_path / "dem.tif"
    cols = np.arange(400) * 1.0 + 0.5
    with rasterio.open(
        dem,
        "w",
        driver="GTiff",
        width=400,
        height=400,
        count=1,
        dtype="float32",
        crs=CRS,
        transform=from_origin(LEFT, TOP, 1.0, 1.0),
    ) as dst:
        dst.write(np.tile(0.15 * cols, (400, 1)).astype(np.float32)[None])
    flat, with_dem = tmp_path / "flat.tif", tmp_path / "dem_ortho.tif"
    orthomosaic(frames, scene["baseline"], flat, cfg=OrthoConfig(refine=False))
    orthomosaic(
        frames, scene["baseline"], with_dem, dem=dem, cfg=OrthoConfig(refine=False, **altitude)
    )
    err_flat, _ = _misregistration_m(flat, scene["baseline"])
    err_dem, blocks = _misregistration_m(with_dem, scene["baseline"])
    print(
        f"terrain parallax: flat plane {err_flat:.2f} m, with DEM {err_dem:.2f} m over {blocks} blocks"
    )
    assert blocks >= 10
    assert err_dem <= 0.5 and err_flat > 2 * err_dem
