"""Direct georeferencing: place a frame's camera from its pose and resample the frame onto a
map grid through the camera model (inverse mapping with ``cv2.remap``: no gaps)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detector.flight.baseline import WorldFrame
from detector.flight.camera import Camera, camera_rotation
from detector.flight.config import OrthoConfig
from detector.flight.pose import FramePose
from detector.geo.grid import Grid


class FrameSkipped(Exception):
    """A frame cannot be used; the message is the reason shown in the log and summary."""


def camera_for_pose(pose: FramePose, world: WorldFrame, ground, cfg: OrthoConfig) -> Camera:
    """Place the frame's camera in the world frame (height from relative or absolute altitude).

    Raises
    ------
    FrameSkipped
        The frame looks too close to the horizon, or its height above ground is unknown.
    """
    if pose.pitch_deg > cfg.max_pitch_deg:
        raise FrameSkipped(
            f"camera pitch {pose.pitch_deg:.1f} deg looks towards the horizon "
            f"(needs <= {cfg.max_pitch_deg:.0f} deg; -90 is nadir)"
        )
    x, y = world.lonlat_to_world(pose.lon, pose.lat)
    if cfg.altitude_source == "absolute":
        if pose.abs_alt_m is None:
            raise FrameSkipped(
                "no absolute altitude in EXIF/XMP/flight log (altitude_source: absolute)"
            )
        z = pose.abs_alt_m + cfg.altitude_offset_m
    else:
        agl = pose.rel_alt_m if pose.rel_alt_m is not None else cfg.flight_altitude_m
        if agl is None:
            raise FrameSkipped(
                "no relative altitude (DJI RelativeAltitude or flight log); set flight_altitude_m in the config"
            )
        if agl <= 1.0:
            raise FrameSkipped(
                f"relative altitude {agl:.1f} m is not above ground (frame taken on the ground?)"
            )
        base = (
            cfg.takeoff_height_m
            if cfg.takeoff_height_m is not None
            else float(ground.height(np.array([x]), np.array([y]))[0])
        )
        z = base + agl
    return Camera(
        center=np.array([x, y, z]),
        rotation=camera_rotation(pose.yaw_deg, pose.pitch_deg, pose.roll_deg),
        focal_px=pose.focal_px,
        width=pose.width,
        height=pose.height,
        k1=cfg.k1,
        k2=cfg.k2,
    )


def ground_footprint(
    camera: Camera, ground, max_view_angle_deg: float, samples: int = 16
) -> np.ndarray:
    """Ground points (N, 2) where the image border's rays meet the ground (world frame).

    Rays steeper than ``max_view_angle_deg`` from nadir are cut at that angle, so an oblique
    frame's footprint stays finite. The DEM height is refined with two fixed-point steps.
    """
    t = np.linspace(0, 1, samples, endpoint=False)
    w, h = camera.width - 1, camera.height - 1
    u = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    v = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    rays = camera.rays(u, v)
    min_down = math.cos(math.radians(max_view_angle_deg))
    horizontal = np.linalg.norm(rays[:, :2], axis=1)
    too_flat = -rays[:, 2] < min_down
    if too_flat.any():  # bend the ray down to the maximum view angle, keeping its azimuth
        scale = math.sin(math.radians(max_view_angle_deg)) / np.maximum(horizontal[too_flat], 1e-9)
        rays[too_flat, 0] *= scale
        rays[too_flat, 1] *= scale
        rays[too_flat, 2] = -min_down
    z_ground = ground.height(np.array([camera.center[0]]), np.array([camera.center[1]]))[
        0
    ] * np.ones(len(u))
    for _ in range(3):
        dist = (camera.center[2] - z_ground) / np.maximum(-rays[:, 2], 1e-6)
        pts = camera.center[:2] + rays[:, :2] * dist[:, None]
        z_ground = ground.height(pts[:, 0], pts[:, 1])
    return pts


def ground_heights(ground, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Terrain height at world points."""
    return ground.height(x, y)


def projection_maps(
    camera: Camera,
    ground,
    world: WorldFrame,
    grid: Grid,
    correction: np.ndarray | None = None,
    max_view_angle_deg: float = 89.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image coordinates of every pixel of ``grid`` (for ``cv2.remap``) and its view angle mask.

    Parameters
    ----------
    correction : (3, 3) array, optional
        A map-to-map transform in the baseline CRS: where the directly georeferenced frame
        content really lies. Output pixel ``q`` then samples the ground point
        ``correction^-1 (q)``.

    Returns
    -------
    map_u, map_v : float32 arrays (H, W)
        Column and row in the frame; -1 where the pixel is not seen.
    usable : bool array (H, W)
    """
    import cv2

    # the projection is smooth: evaluate it every `step` pixels and interpolate bilinearly
    step = 8 if min(grid.width, grid.height) > 64 else 1
    cols = np.arange(0, grid.width - 1 + step, step, dtype=np.float64)
    rows = np.arange(0, grid.height - 1 + step, step, dtype=np.float64)
    cc, rr = np.meshgrid(cols, rows)
    bx = grid.left + (cc + 0.5) * grid.res_x
    by = grid.top - (rr + 0.5) * grid.res_y
    if correction is not None:
        inv = np.linalg.inv(correction)
        den = inv[2, 0] * bx + inv[2, 1] * by + inv[2, 2]
        bx, by = (
            (inv[0, 0] * bx + inv[0, 1] * by + inv[0, 2]) / den,
            (inv[1, 0] * bx + inv[1, 1] * by + inv[1, 2]) / den,
        )
    wx, wy = world.to_world(bx, by)
    wz = ground.height(wx, wy)
    u, v, depth = camera.project(wx, wy, wz)
    horizontal = np.hypot(wx - camera.center[0], wy - camera.center[1])
    steep_margin = (camera.center[2] - wz) * math.tan(math.radians(max_view_angle_deg)) - horizontal
    seen = np.minimum(depth, steep_margin)
    bad = ~np.isfinite(u) | ~np.isfinite(v) | (seen <= 0)
    coarse = [np.where(bad, -1e6, a).astype(np.float32) for a in (u, v, seen)]
    if step > 1:
        fc, fr = np.meshgrid(
            np.arange(grid.width, dtype=np.float32) / step,
            np.arange(grid.height, dtype=np.float32) / step,
        )
        u, v, seen = (
            cv2.remap(a, fc, fr, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for a in coarse
        )
    else:
        u, v, seen = coarse
    usable = (
        (seen > 0)
        & (u >= -0.5)
        & (v >= -0.5)
        & (u <= camera.width - 0.5)
        & (v <= camera.height - 0.5)
    )
    u = np.where(usable, u, -1).astype(np.float32)
    v = np.where(usable, v, -1).astype(np.float32)
    return u, v, usable


def load_frame_pixels(path: Path, reduce: int = 1) -> np.ndarray:
    """Decode a frame (BGR uint8), optionally at 1/2, 1/4 or 1/8 size straight from the JPEG.

    Raises
    ------
    FrameSkipped
        The file cannot be decoded (corrupt or truncated).
    """
    import cv2

    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }[reduce]
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise FrameSkipped("image data cannot be decoded (corrupt or truncated file)")
    # libjpeg fills a truncated file's missing rows with grey: refuse when the last rows are flat 128
    tail = image[-max(2, image.shape[0] // 50) :]
    if tail.size and np.all(np.abs(tail.astype(np.int16) - 128) <= 1):
        raise FrameSkipped("image data is truncated (bottom of the frame missing)")
    return image


def orthorectify(
    image_bgr: np.ndarray,
    reduce: int,
    camera: Camera,
    ground,
    world: WorldFrame,
    grid: Grid,
    correction: np.ndarray | None = None,
    max_view_angle_deg: float = 89.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a frame onto ``grid``: returns RGB uint8 (H, W, 3) and a validity mask.

    ``image_bgr`` may be the frame decoded at 1/``reduce`` size; the camera is at full size.
    """
    import cv2

    map_u, map_v, usable = projection_maps(
        camera, ground, world, grid, correction, max_view_angle_deg
    )
    if reduce != 1:
        map_u = np.where(usable, (map_u + 0.5) / reduce - 0.5, -1).astype(np.float32)
        map_v = np.where(usable, (map_v + 0.5) / reduce - 0.5, -1).astype(np.float32)
    out = np.zeros((grid.height, grid.width, 3), np.uint8)
    # cv2.remap handles at most 32767 pixels per side: remap in strips
    step = 8192
    for r0 in range(0, grid.height, step):
        for c0 in range(0, grid.width, step):
            sl = (slice(r0, r0 + step), slice(c0, c0 + step))
            out[sl] = cv2.remap(
                image_bgr, map_u[sl], map_v[sl], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
    return np.ascontiguousarray(out[..., ::-1]), usable


def choose_reduction(camera: Camera, out_res_m: float) -> int:
    """Largest JPEG decode reduction (1, 2, 4, 8) that keeps the frame at least as fine as the output."""
    height = max(camera.center[2], 1.0)
    frame_gsd = height / camera.focal_px  # at nadir (oblique parts are coarser anyway)
    reduce = 1
    for r in (2, 4, 8):
        if frame_gsd * r <= out_res_m * 0.75:
            reduce = r
    return reduce
