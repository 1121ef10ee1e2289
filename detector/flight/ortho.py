"""Raw drone frames -> an orthomosaic in the baseline's CRS, in seconds per frame.

Pipeline per frame (see :func:`orthomosaic`):

1. pose from EXIF/XMP or a flight log (:mod:`detector.flight.pose`);
2. **direct georeferencing**: a pinhole camera (optional radial distortion k1, k2) at the
   GPS position, looking along the gimbal angles; every output ground pixel (on a plane at
   the take-off height, or on a DEM) is projected into the image and sampled with
   ``cv2.remap`` (inverse mapping: no gaps);
3. **refinement**: the orthorectified frame is matched to the baseline at a common working
   GSD (ORB or SIFT + ratio test + RANSAC similarity/affine/homography); poor fits are
   rejected (the direct georeferencing is kept and the frame is flagged); the correction is
   folded into the projection so that the pixels are resampled only once;
4. **mosaic**: the pixel from the frame whose nadir point is nearest wins; per-frame gains
   match each frame to what is already mosaicked (radiometric balancing); written as a COG
   (deflate, overviews, internal mask) with per-frame residuals in its metadata.

World frame: a local metric CRS (the baseline's CRS when it is projected in metres, else
the site's UTM zone), x east, y north, z up. Camera frame: OpenCV (x right, y down, z
along the view).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detector.errors import InputError
from detector.fileio import read_yaml_mapping
from detector.flight.pose import FramePose, PoseError, pose_with_flight_log, read_flight_log, read_pose

log = logging.getLogger("buildwatch.ortho")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")


class OrthoConfig(BaseModel):
    """Settings of ``buildwatch ortho`` (YAML via ``--config``; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    gsd_m: Optional[float] = Field(None, gt=0, description="output GSD in CRS units; None = the baseline's")
    flight_altitude_m: Optional[float] = Field(None, gt=0, description="height above ground when a frame has no RelativeAltitude")
    altitude_source: Literal["relative", "absolute"] = "relative"
    takeoff_height_m: Optional[float] = Field(
        None, description="ground height of the take-off point in the DEM's datum: relative altitudes (DJI "
        "RelativeAltitude) are above it. None: above the ground below each frame (exact on flat ground)")
    altitude_offset_m: float = Field(0.0, description="added to absolute altitudes (geoid/ellipsoid vs DEM datum)")
    sensor_width_mm: Optional[float] = Field(None, gt=0)
    focal_px: Optional[float] = Field(None, gt=0)
    k1: float = 0.0
    k2: float = 0.0
    default_pitch_deg: Optional[float] = Field(None, le=0, ge=-90, description="for cameras without gimbal angles")
    max_pitch_deg: float = Field(-30.0, le=0, description="frames looking higher than this (towards the horizon) are skipped")
    max_view_angle_deg: float = Field(70.0, gt=0, lt=89, description="ground pixels seen more obliquely are not used")
    refine: bool = True
    refine_gsd_m: Optional[float] = Field(None, gt=0, description="working GSD for matching; None = automatic")
    refine_max_px: int = Field(1000, ge=200, description="longest side of the frame at the working GSD (automatic GSD)")
    retry_flipped_yaw: bool = Field(True, description="when matching fails, try the yaw + 180 deg (frames rotated after capture)")
    refine_model: Literal["similarity", "affine", "homography"] = "similarity"
    features: Literal["orb", "sift"] = "orb"
    min_inliers: int = Field(15, ge=4)
    min_match_side_px: int = Field(500, ge=50, description="windows smaller than this are upsampled (up to 4x) for matching")
    max_residual_px: float = Field(2.0, gt=0, description="inlier RMS in working pixels above which a fit is refused")
    max_correction_m: float = Field(10.0, gt=0, description="largest position correction accepted")
    max_rotation_deg: float = Field(10.0, gt=0)
    balance: bool = True
    compress: Literal["deflate", "lzw", "jpeg", "zstd"] = "deflate"


def load_ortho_config(path: str | Path | None, overrides: dict | None = None) -> OrthoConfig:
    """Read an :class:`OrthoConfig` from YAML (optional) plus overrides (None ignored).

    The YAML may hold the settings at the top level or under an ``ortho:`` key.

    Raises
    ------
    ConfigError
        Missing file, invalid YAML or an invalid setting (one line naming it).
    """

    data: dict = {}
    if path is not None:
        raw = read_yaml_mapping(path)
        data = raw.get("ortho", raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    from detector.config import validate_settings

    return validate_settings(OrthoConfig, data, path or "ortho config")


# --- camera model ----------------------------------------------------------------------

def camera_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation matrix camera -> world (columns: camera x, y, z axes in world ENU).

    At yaw 0, pitch 0 the camera looks north with the image top up; pitch -90 looks straight
    down with the image top towards the heading; yaw turns clockwise seen from above.
    """
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    level = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: right=E, down=-Up, forward=N
    rot_pitch = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rot_roll = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot_yaw = np.array([[math.cos(-y), -math.sin(-y), 0], [math.sin(-y), math.cos(-y), 0], [0, 0, 1]])
    return rot_yaw @ level @ rot_pitch @ rot_roll


@dataclass
class Camera:
    """A pinhole camera with optional radial distortion, in a local metric world frame."""

    center: np.ndarray  # (3,) x, y, z in metres
    rotation: np.ndarray  # (3, 3) camera -> world
    focal_px: float
    width: int
    height: int
    k1: float = 0.0
    k2: float = 0.0

    @property
    def principal_point(self) -> tuple[float, float]:
        return (self.width - 1) / 2.0, (self.height - 1) / 2.0

    def project(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points -> image pixel coordinates (u=column, v=row) and depth along the view."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        rt = self.rotation.T
        xc = rt[0, 0] * dx + rt[0, 1] * dy + rt[0, 2] * dz
        yc = rt[1, 0] * dx + rt[1, 1] * dy + rt[1, 2] * dz
        zc = rt[2, 0] * dx + rt[2, 1] * dy + rt[2, 2] * dz
        with np.errstate(divide="ignore", invalid="ignore"):
            xn, yn = xc / zc, yc / zc
        if self.k1 or self.k2:
            r2 = xn * xn + yn * yn
            factor = 1 + self.k1 * r2 + self.k2 * r2 * r2
            xn, yn = xn * factor, yn * factor
        cx, cy = self.principal_point
        return xn * self.focal_px + cx, yn * self.focal_px + cy, zc

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unit view directions (N, 3) in world coordinates for pixels (distortion ignored)."""
        cx, cy = self.principal_point
        d = np.stack([(u - cx) / self.focal_px, (v - cy) / self.focal_px, np.ones_like(u, dtype=float)], axis=-1)
        d = d @ self.rotation.T
        return d / np.linalg.norm(d, axis=-1, keepdims=True)


# --- ground models -----------------------------------------------------------------------

class GroundPlane:
    """Flat ground at a fixed height (metres, same datum as the camera height)."""

    def __init__(self, height_m: float = 0.0):
        self.height_m = float(height_m)

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.full(np.shape(x), self.height_m, dtype=np.float64)


class GroundDEM:
    """Terrain heights from a DEM/DSM GeoTIFF, sampled bilinearly in the metric world frame."""

    def __init__(self, path: str | Path, metric_crs, bounds: tuple[float, float, float, float], res_m: float = 1.0):
        import rasterio
        from rasterio.warp import Resampling, reproject
        from rasterio.transform import from_origin

        path = Path(path)
        left, bottom, right, top = bounds
        width, height = max(2, int(math.ceil((right - left) / res_m)) + 2), max(2, int(math.ceil((top - bottom) / res_m)) + 2)
        self.transform = from_origin(left - res_m, top + res_m, res_m, res_m)
        self.values = np.full((height, width), np.nan, dtype=np.float32)
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise InputError(f"{path}: DEM has no CRS; assign one (gdal_edit.py -a_srs) and retry")
                reproject(rasterio.band(src, 1), self.values, dst_transform=self.transform, dst_crs=metric_crs,
                          dst_nodata=np.nan, resampling=Resampling.bilinear)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{path}: DEM is not a readable raster ({str(exc).splitlines()[0][:120]})") from None
        finite = np.isfinite(self.values)
        if not finite.any():
            raise InputError(f"{path}: DEM has no data under the frames; give a DEM covering the flight")
        self.fill = float(np.median(self.values[finite]))
        self.values[~finite] = self.fill

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        import cv2

        inv = ~self.transform
        col = (inv.a * x + inv.b * y + inv.c - 0.5).astype(np.float32)
        row = (inv.d * x + inv.e * y + inv.f - 0.5).astype(np.float32)
        shape = np.shape(x)
        out = cv2.remap(self.values, col.reshape(-1, 1) if col.ndim == 1 else col, row.reshape(-1, 1) if row.ndim == 1 else row,
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=self.fill)
        return out.reshape(shape).astype(np.float64)


# --- grids ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid in the baseline CRS: origin (upper-left corner), pixel size, shape."""

    crs: object
    left: float
    top: float
    res_x: float
    res_y: float  # positive; rows go south
    width: int
    height: int

    @property
    def transform(self):
        from rasterio.transform import from_origin

        return from_origin(self.left, self.top, self.res_x, self.res_y)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.left, self.top - self.height * self.res_y, self.left + self.width * self.res_x, self.top

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        xs = self.left + (np.arange(self.width) + 0.5) * self.res_x
        ys = self.top - (np.arange(self.height) + 0.5) * self.res_y
        return np.meshgrid(xs, ys)

    def window_of(self, other: "Grid") -> tuple[int, int]:
        """(row, col) offset of ``other`` (same pixel size, aligned) inside this grid."""
        return int(round((self.top - other.top) / self.res_y)), int(round((other.left - self.left) / self.res_x))

    def sub_grid(self, bounds: tuple[float, float, float, float]) -> Optional["Grid"]:
        """The part of this grid covering ``bounds`` (snapped outwards to pixels), or None if disjoint."""
        left, bottom, right, top = bounds
        c0 = max(0, int(math.floor((left - self.left) / self.res_x)))
        c1 = min(self.width, int(math.ceil((right - self.left) / self.res_x)))
        r0 = max(0, int(math.floor((self.top - top) / self.res_y)))
        r1 = min(self.height, int(math.ceil((self.top - bottom) / self.res_y)))
        if c1 <= c0 or r1 <= r0:
            return None
        return replace(self, left=self.left + c0 * self.res_x, top=self.top - r0 * self.res_y, width=c1 - c0, height=r1 - r0)

    def resampled(self, res: float) -> "Grid":
        """The same area on a grid of pixel size ``res`` (anchored at the same corner)."""
        left, bottom, right, top = self.bounds
        return replace(self, res_x=res, res_y=res, width=max(1, int(math.ceil((right - left) / res))),
                       height=max(1, int(math.ceil((top - bottom) / res))))


@dataclass
class Baseline:
    """The reference orthomosaic: its grid and how to read it."""

    path: Path
    grid: Grid
    is_metric: bool  # CRS in metres (else geographic / feet: the world frame is UTM)
    metre_per_unit: float

    def read(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (H, W, 3) and a validity mask of the baseline resampled onto ``grid``."""
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        with rasterio.open(self.path) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                                        height=grid.height, resampling=Resampling.bilinear) as vrt:
            bands = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
            rgb = vrt.read(bands)
            mask = vrt.read_masks(1) > 0
        if rgb.dtype != np.uint8:
            rgb = _to_uint8(rgb, mask)
        return np.ascontiguousarray(np.moveaxis(rgb, 0, -1)), mask


def _to_uint8(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    valid = data[:, mask] if mask.any() else data.reshape(data.shape[0], -1)
    hi = float(np.percentile(valid, 99.5)) if valid.size else 1.0
    return np.clip(data.astype(np.float32) * (255.0 / max(hi, 1e-6)), 0, 255).astype(np.uint8)


def open_baseline(path: str | Path) -> Baseline:
    """Open and check the baseline GeoTIFF.

    Raises
    ------
    InputError
        Missing, unreadable, without CRS, or rotated (non north-up) raster.
    """
    import rasterio

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: baseline not found; check --baseline")
    try:
        with rasterio.open(path) as src:
            crs, t, width, height = src.crs, src.transform, src.width, src.height
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path}: baseline is not a readable raster ({str(exc).splitlines()[0][:120]})") from None
    if crs is None:
        raise InputError(f"{path}: baseline has no CRS; assign one (gdal_edit.py -a_srs EPSG:...) and retry")
    if t.b != 0 or t.d != 0 or t.e >= 0:
        raise InputError(f"{path}: baseline is not a north-up grid; warp it first (gdalwarp)")
    units = (crs.linear_units or "").lower() if crs.is_projected else ""
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    metric = crs.is_projected and units in ("metre", "meter", "m")
    grid = Grid(crs=crs, left=t.c, top=t.f, res_x=t.a, res_y=-t.e, width=width, height=height)
    return Baseline(path=path, grid=grid, is_metric=metric, metre_per_unit=factor if crs.is_projected else 111_320.0)


class WorldFrame:
    """Converts between the baseline CRS and the local metric world frame of the cameras."""

    def __init__(self, baseline_crs, metric: bool, lon: float, lat: float):
        from pyproj import CRS, Transformer

        if metric:
            self.crs = CRS.from_user_input(baseline_crs)
        else:
            zone = int((lon + 180) // 6) + 1
            self.crs = CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
        self.identity = metric
        self._to_world = Transformer.from_crs(baseline_crs, self.crs, always_xy=True)
        self._from_world = Transformer.from_crs(self.crs, baseline_crs, always_xy=True)
        self._from_lonlat = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)

    def lonlat_to_world(self, lon: float, lat: float) -> tuple[float, float]:
        return self._from_lonlat.transform(lon, lat)

    def to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return x, y
        wx, wy = self._to_world.transform(np.ravel(x), np.ravel(y))
        return np.reshape(wx, np.shape(x)), np.reshape(wy, np.shape(y))

    def from_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return x, y
        bx, by = self._from_world.transform(np.ravel(x), np.ravel(y))
        return np.reshape(bx, np.shape(x)), np.reshape(by, np.shape(y))


# --- direct georeferencing ---------------------------------------------------------------

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
        raise FrameSkipped(f"camera pitch {pose.pitch_deg:.1f} deg looks towards the horizon "
                           f"(needs <= {cfg.max_pitch_deg:.0f} deg; -90 is nadir)")
    x, y = world.lonlat_to_world(pose.lon, pose.lat)
    if cfg.altitude_source == "absolute":
        if pose.abs_alt_m is None:
            raise FrameSkipped("no absolute altitude in EXIF/XMP/flight log (altitude_source: absolute)")
        z = pose.abs_alt_m + cfg.altitude_offset_m
    else:
        agl = pose.rel_alt_m if pose.rel_alt_m is not None else cfg.flight_altitude_m
        if agl is None:
            raise FrameSkipped("no relative altitude (DJI RelativeAltitude or flight log); set flight_altitude_m in the config")
        if agl <= 1.0:
            raise FrameSkipped(f"relative altitude {agl:.1f} m is not above ground (frame taken on the ground?)")
        base = (cfg.takeoff_height_m if cfg.takeoff_height_m is not None
                else float(ground.height(np.array([x]), np.array([y]))[0]))
        z = base + agl
    return Camera(center=np.array([x, y, z]), rotation=camera_rotation(pose.yaw_deg, pose.pitch_deg, pose.roll_deg),
                  focal_px=pose.focal_px, width=pose.width, height=pose.height, k1=cfg.k1, k2=cfg.k2)


def ground_footprint(camera: Camera, ground, max_view_angle_deg: float, samples: int = 16) -> np.ndarray:
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
    z_ground = ground.height(np.array([camera.center[0]]), np.array([camera.center[1]]))[0] * np.ones(len(u))
    for _ in range(3):
        dist = (camera.center[2] - z_ground) / np.maximum(-rays[:, 2], 1e-6)
        pts = camera.center[:2] + rays[:, :2] * dist[:, None]
        z_ground = ground.height(pts[:, 0], pts[:, 1])
    return pts


def ground_heights(ground, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Terrain height at world points."""
    return ground.height(x, y)


def projection_maps(camera: Camera, ground, world: WorldFrame, grid: Grid, correction: Optional[np.ndarray] = None,
                    max_view_angle_deg: float = 89.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        bx, by = (inv[0, 0] * bx + inv[0, 1] * by + inv[0, 2]) / den, (inv[1, 0] * bx + inv[1, 1] * by + inv[1, 2]) / den
    wx, wy = world.to_world(bx, by)
    wz = ground.height(wx, wy)
    u, v, depth = camera.project(wx, wy, wz)
    horizontal = np.hypot(wx - camera.center[0], wy - camera.center[1])
    steep_margin = (camera.center[2] - wz) * math.tan(math.radians(max_view_angle_deg)) - horizontal
    seen = np.minimum(depth, steep_margin)
    bad = ~np.isfinite(u) | ~np.isfinite(v) | (seen <= 0)
    coarse = [np.where(bad, -1e6, a).astype(np.float32) for a in (u, v, seen)]
    if step > 1:
        fc, fr = np.meshgrid(np.arange(grid.width, dtype=np.float32) / step, np.arange(grid.height, dtype=np.float32) / step)
        u, v, seen = (cv2.remap(a, fc, fr, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for a in coarse)
    else:
        u, v, seen = coarse
    usable = (seen > 0) & (u >= -0.5) & (v >= -0.5) & (u <= camera.width - 0.5) & (v <= camera.height - 0.5)
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

    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise FrameSkipped("image data cannot be decoded (corrupt or truncated file)")
    # libjpeg fills a truncated file's missing rows with grey: refuse when the last rows are flat 128
    tail = image[-max(2, image.shape[0] // 50):]
    if tail.size and np.all(np.abs(tail.astype(np.int16) - 128) <= 1):
        raise FrameSkipped("image data is truncated (bottom of the frame missing)")
    return image


def orthorectify(image_bgr: np.ndarray, reduce: int, camera: Camera, ground, world: WorldFrame, grid: Grid,
                 correction: Optional[np.ndarray] = None, max_view_angle_deg: float = 89.0) -> tuple[np.ndarray, np.ndarray]:
    """Resample a frame onto ``grid``: returns RGB uint8 (H, W, 3) and a validity mask.

    ``image_bgr`` may be the frame decoded at 1/``reduce`` size; the camera is at full size.
    """
    import cv2

    map_u, map_v, usable = projection_maps(camera, ground, world, grid, correction, max_view_angle_deg)
    if reduce != 1:
        map_u = np.where(usable, (map_u + 0.5) / reduce - 0.5, -1).astype(np.float32)
        map_v = np.where(usable, (map_v + 0.5) / reduce - 0.5, -1).astype(np.float32)
    out = np.zeros((grid.height, grid.width, 3), np.uint8)
    # cv2.remap handles at most 32767 pixels per side: remap in strips
    step = 8192
    for r0 in range(0, grid.height, step):
        for c0 in range(0, grid.width, step):
            sl = (slice(r0, r0 + step), slice(c0, c0 + step))
            out[sl] = cv2.remap(image_bgr, map_u[sl], map_v[sl], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.ascontiguousarray(out[..., ::-1]), usable


def render_frame_from_orthophoto(ortho_rgb: np.ndarray, ortho_grid: Grid, camera: Camera, world: WorldFrame,
                                 ground) -> np.ndarray:
    """Simulate a drone frame: what ``camera`` sees of an orthophoto lying on ``ground``.

    Used to make synthetic frames with exact truth (tests, benchmarks). Returns BGR uint8
    (camera.height, camera.width, 3); pixels whose ray misses the orthophoto are black.
    """
    import cv2

    u, v = np.meshgrid(np.arange(camera.width, dtype=float), np.arange(camera.height, dtype=float))
    rays = camera.rays(u.ravel(), v.ravel())
    z = ground.height(np.array([camera.center[0]]), np.array([camera.center[1]]))[0] * np.ones(rays.shape[0])
    for _ in range(3):
        dist = (camera.center[2] - z) / np.maximum(-rays[:, 2], 1e-9)
        gx = camera.center[0] + rays[:, 0] * dist
        gy = camera.center[1] + rays[:, 1] * dist
        z = ground.height(gx, gy)
    bx, by = world.from_world(gx, gy)
    col = ((bx - ortho_grid.left) / ortho_grid.res_x - 0.5).reshape(camera.height, camera.width).astype(np.float32)
    row = ((ortho_grid.top - by) / ortho_grid.res_y - 0.5).reshape(camera.height, camera.width).astype(np.float32)
    frame = cv2.remap(np.ascontiguousarray(ortho_rgb[..., ::-1]), col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return frame


# --- refinement against the baseline --------------------------------------------------------

@dataclass
class Refinement:
    """Outcome of matching one orthorectified frame to the baseline."""

    ok: bool
    correction: Optional[np.ndarray] = None  # (3, 3) map -> map in the baseline CRS
    shift_m: float = float("nan")  # size of the correction at the frame centre (the offset before refinement)
    rotation_deg: float = float("nan")
    residual_m: float = float("nan")  # RMS of the inliers after the correction
    inliers: int = 0
    matches: int = 0
    reason: str = ""


def _detector(kind: str):
    import cv2

    if kind == "sift":
        return cv2.SIFT_create(nfeatures=3000), cv2.NORM_L2
    return cv2.ORB_create(nfeatures=5000, fastThreshold=10, edgeThreshold=15, patchSize=31), cv2.NORM_HAMMING


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)


def match_to_baseline(frame_rgb: np.ndarray, frame_valid: np.ndarray, base_rgb: np.ndarray, base_valid: np.ndarray,
                      grid: Grid, cfg: OrthoConfig, metre_per_unit: float = 1.0) -> Refinement:
    """Fit the transform that moves the orthorectified frame onto the baseline (same ``grid``).

    Returns a rejected :class:`Refinement` (``ok=False`` with a reason) when there are too
    few inliers, the residual is high, or the correction is implausibly large.
    """
    import cv2

    detector, norm = _detector(cfg.features)
    # small windows (a coarse baseline) give too few features: match on upsampled copies
    up = int(min(4, max(1, math.ceil(cfg.min_match_side_px / max(1, min(grid.width, grid.height))))))
    erode = np.ones((5, 5), np.uint8)
    images = []
    for rgb, valid in ((frame_rgb, frame_valid), (base_rgb, base_valid)):
        gray, mask = _gray(rgb), cv2.erode(valid.astype(np.uint8) * 255, erode)
        if up > 1:
            gray = cv2.resize(gray, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
            mask = cv2.resize(mask, None, fx=up, fy=up, interpolation=cv2.INTER_NEAREST)
        images.append((gray, mask))
    kf, df = detector.detectAndCompute(*images[0])
    kb, db = detector.detectAndCompute(*images[1])
    if df is None or db is None or len(kf) < cfg.min_inliers or len(kb) < cfg.min_inliers:
        return Refinement(ok=False, reason=f"too few features (frame {len(kf)}, baseline {len(kb)})")
    matcher = cv2.BFMatcher(norm)
    pairs = matcher.knnMatch(df, db, k=2)
    res_m = grid.res_x * metre_per_unit
    max_shift_px = cfg.max_correction_m / res_m + 0.5 * math.hypot(grid.width, grid.height) * math.sin(math.radians(cfg.max_rotation_deg))
    src, dst = [], []
    for pair in pairs:
        if len(pair) < 2 or pair[0].distance > 0.85 * pair[1].distance:
            continue
        p, q = kf[pair[0].queryIdx].pt, kb[pair[0].trainIdx].pt
        p, q = ((p[0] + 0.5) / up - 0.5, (p[1] + 0.5) / up - 0.5), ((q[0] + 0.5) / up - 0.5, (q[1] + 0.5) / up - 0.5)
        if math.hypot(q[0] - p[0], q[1] - p[1]) <= max_shift_px:
            src.append(p)
            dst.append(q)
    n = len(src)
    if n < cfg.min_inliers:
        return Refinement(ok=False, matches=n, reason=f"too few feature matches ({n} < {cfg.min_inliers})")
    src_a, dst_a = np.float32(src), np.float32(dst)
    thresh = max(2.0, 1.5 * cfg.max_residual_px)
    if cfg.refine_model == "homography":
        h, inl = cv2.findHomography(src_a, dst_a, cv2.RANSAC, thresh, maxIters=5000, confidence=0.999)
        pix = h
    else:
        fit = cv2.estimateAffinePartial2D if cfg.refine_model == "similarity" else cv2.estimateAffine2D
        a, inl = fit(src_a, dst_a, method=cv2.RANSAC, ransacReprojThreshold=thresh, maxIters=5000, confidence=0.999,
                     refineIters=20)
        pix = None if a is None else np.vstack([a, [0, 0, 1]])
    if pix is None or inl is None:
        return Refinement(ok=False, matches=n, reason="no consistent transform between frame and baseline")
    inl = inl.ravel().astype(bool)
    k = int(inl.sum())
    proj = cv2.perspectiveTransform(src_a[inl].reshape(-1, 1, 2), pix).reshape(-1, 2)
    residual_px = float(np.sqrt(np.mean(np.sum((proj - dst_a[inl]) ** 2, axis=1)))) if k else float("inf")
    t = np.array(grid.transform).reshape(3, 3)
    correction = t @ pix @ np.linalg.inv(t)
    centre = np.array([grid.width / 2, grid.height / 2, 1.0])
    moved = pix @ centre
    shift_m = float(math.hypot(moved[0] / moved[2] - centre[0], moved[1] / moved[2] - centre[1]) * res_m)
    rotation = float(math.degrees(math.atan2(pix[1, 0], pix[0, 0])))
    scale = float(math.sqrt(abs(np.linalg.det(pix[:2, :2]))))
    result = Refinement(ok=False, correction=correction, shift_m=shift_m, rotation_deg=rotation,
                        residual_m=residual_px * res_m, inliers=k, matches=n)
    if k < cfg.min_inliers:
        result.reason = f"too few RANSAC inliers ({k} < {cfg.min_inliers})"
    elif residual_px > cfg.max_residual_px:
        result.reason = f"residual {residual_px * res_m:.2f} m too high (> {cfg.max_residual_px} px)"
    elif shift_m > cfg.max_correction_m:
        result.reason = f"correction {shift_m:.1f} m larger than max_correction_m {cfg.max_correction_m}"
    elif abs(rotation) > cfg.max_rotation_deg or not 0.85 < scale < 1.15:
        result.reason = f"implausible correction (rotation {rotation:.1f} deg, scale {scale:.3f})"
    else:
        result.ok = True
    return result


# --- per-frame processing -------------------------------------------------------------------

@dataclass
class FrameReport:
    """What happened to one frame; one line of the run summary and of the output's metadata."""

    name: str
    status: str  # "refined" | "direct" (not refined: georeferenced from the pose only) | "skipped"
    reason: str = ""
    shift_m: float = float("nan")  # offset of the direct georeferencing vs the baseline
    residual_m: float = float("nan")  # residual after refinement
    inliers: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        def num(x: float):
            return None if x != x else round(x, 3)

        return {"name": self.name, "status": self.status, "reason": self.reason, "shift_m": num(self.shift_m),
                "residual_m": num(self.residual_m), "inliers": self.inliers, "seconds": round(self.seconds, 2)}


@dataclass
class PreparedFrame:
    """A frame placed on the ground: camera, footprint grid (output GSD), correction."""

    pose: FramePose
    camera: Camera
    grid: Grid  # the output-grid window the frame covers
    nadir_xy: tuple[float, float]  # camera position in the baseline CRS
    correction: Optional[np.ndarray]
    report: FrameReport
    reduce: int = 1


def choose_reduction(camera: Camera, out_res_m: float) -> int:
    """Largest JPEG decode reduction (1, 2, 4, 8) that keeps the frame at least as fine as the output."""
    height = max(camera.center[2], 1.0)
    frame_gsd = height / camera.focal_px  # at nadir (oblique parts are coarser anyway)
    reduce = 1
    for r in (2, 4, 8):
        if frame_gsd * r <= out_res_m * 0.75:
            reduce = r
    return reduce


def working_res(grid: Grid, cfg: OrthoConfig, baseline: Baseline) -> float:
    """Pixel size (CRS units) for matching: the baseline's, coarsened so the frame is <= refine_max_px."""
    if cfg.refine_gsd_m:
        return cfg.refine_gsd_m / baseline.metre_per_unit
    span = max(grid.width * grid.res_x, grid.height * grid.res_y)
    return max(baseline.grid.res_x, grid.res_x, span / cfg.refine_max_px)


def _refine_camera(camera: Camera, path: Path, grid: Grid, baseline: Baseline, world: WorldFrame, ground,
                   cfg: OrthoConfig) -> Refinement:
    """Orthorectify a frame at the working GSD and match it to the baseline.

    Raises
    ------
    FrameSkipped
        The frame does not overlap the baseline's valid data, or cannot be decoded.
    """
    work_grid = grid.resampled(working_res(grid, cfg, baseline))
    work_reduce = choose_reduction(camera, work_grid.res_x * baseline.metre_per_unit)
    image = load_frame_pixels(path, work_reduce)
    rgb, valid = orthorectify(image, work_reduce, camera, ground, world, work_grid, None, cfg.max_view_angle_deg)
    if not valid.any():
        raise FrameSkipped("frame footprint is outside the baseline")
    base_rgb, base_valid = baseline.read(work_grid)
    if not (base_valid & valid).any():
        raise FrameSkipped("frame footprint is outside the baseline's valid data")
    return match_to_baseline(rgb, valid, base_rgb, base_valid, work_grid, cfg, baseline.metre_per_unit)


def prepare_frame(pose: FramePose, baseline: Baseline, out_grid: Grid, world: WorldFrame, ground,
                  cfg: OrthoConfig) -> PreparedFrame:
    """Georeference and (optionally) refine one frame against the baseline.

    Raises
    ------
    FrameSkipped
        With the reason the frame cannot be used.
    """
    start = time.perf_counter()
    camera = camera_for_pose(pose, world, ground, cfg)
    pts = ground_footprint(camera, ground, cfg.max_view_angle_deg)
    bx, by = world.from_world(pts[:, 0], pts[:, 1])
    margin = cfg.max_correction_m / baseline.metre_per_unit if cfg.refine else 0.0
    footprint = (float(bx.min()) - margin, float(by.min()) - margin, float(bx.max()) + margin, float(by.max()) + margin)
    grid = out_grid.sub_grid(footprint)
    if grid is None:
        raise FrameSkipped("frame footprint is outside the baseline")
    reduce = choose_reduction(camera, out_grid.res_x * baseline.metre_per_unit)
    nadir = world.from_world(np.array([camera.center[0]]), np.array([camera.center[1]]))
    report = FrameReport(name=pose.path.name, status="direct")
    prepared = PreparedFrame(pose=pose, camera=camera, grid=grid, nadir_xy=(float(nadir[0][0]), float(nadir[1][0])),
                             correction=None, report=report, reduce=reduce)
    if cfg.refine:
        yaw_offsets = (0.0, 180.0) if cfg.retry_flipped_yaw else (0.0,)
        first: Optional[Refinement] = None
        for yaw_offset in yaw_offsets:
            cam = camera if not yaw_offset else camera_for_pose(replace(pose, yaw_deg=pose.yaw_deg + yaw_offset), world, ground, cfg)
            ref = _refine_camera(cam, pose.path, grid, baseline, world, ground, cfg)
            first = first or ref
            if ref.ok:
                break
        if ref.ok:
            prepared.camera, prepared.correction = cam, ref.correction
            report.status, report.residual_m, report.shift_m, report.inliers = "refined", ref.residual_m, ref.shift_m, ref.inliers
            if yaw_offset:
                report.reason = ("yaw corrected by 180 deg: the pixels are rotated against the recorded gimbal yaw "
                                 "(image rotated or re-saved after capture?)")
            # the frame has moved: its output window moves with it
            corners = np.array([[footprint[0], footprint[1], 1], [footprint[2], footprint[1], 1],
                                [footprint[2], footprint[3], 1], [footprint[0], footprint[3], 1]], float) @ ref.correction.T
            corners = corners[:, :2] / corners[:, 2:]
            moved = out_grid.sub_grid((corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()))
            if moved is None:
                raise FrameSkipped("refined frame footprint is outside the baseline")
            prepared.grid = moved
        else:
            report.shift_m, report.inliers = first.shift_m, first.inliers
            report.reason = f"not refined: {first.reason}"
    report.seconds = time.perf_counter() - start
    return prepared


# --- mosaicking -------------------------------------------------------------------------------

@dataclass
class OrthoResult:
    """What ``buildwatch ortho`` produced."""

    out: Optional[Path]
    frames: list[FrameReport] = field(default_factory=list)
    width: int = 0
    height: int = 0
    seconds: float = 0.0

    @property
    def used(self) -> list[FrameReport]:
        return [f for f in self.frames if f.status != "skipped"]

    @property
    def skipped(self) -> list[FrameReport]:
        return [f for f in self.frames if f.status == "skipped"]


def list_frames(inputs: list[str | Path]) -> list[Path]:
    """Image files given directly or found (non-recursively) in the given folders, sorted.

    Raises
    ------
    InputError
        A path does not exist, or nothing to process.
    """
    frames: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            frames += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.exists():
            frames.append(p)
        else:
            raise InputError(f"{p}: frame or folder not found")
    if not frames:
        raise InputError(f"{', '.join(str(i) for i in inputs)}: no image files (.jpg/.tif/.png) found")
    return frames


def _frame_gains(new_rgb: np.ndarray, new_valid: np.ndarray, old_rgb: np.ndarray, old_valid: np.ndarray) -> np.ndarray:
    both = new_valid & old_valid
    if both.sum() < 500:
        return np.ones(3, np.float32)
    new_mean = new_rgb[both].reshape(-1, 3).astype(np.float64).mean(axis=0)
    old_mean = old_rgb[both].reshape(-1, 3).astype(np.float64).mean(axis=0)
    return np.clip(old_mean / np.maximum(new_mean, 1.0), 0.67, 1.5).astype(np.float32)


def _write_cog(src_path: Path, out: Path, compress: str) -> None:
    """Copy a tiled GeoTIFF to a COG (overviews, internal mask) atomically at ``out``."""
    import rasterio.shutil

    from detector.fileio import atomic_path

    opts = {"compress": compress.upper(), "overview_resampling": "average", "blocksize": 512, "bigtiff": "IF_SAFER"}
    if compress == "jpeg":
        opts["quality"] = 90
    with atomic_path(out, suffix=".tif") as tmp:
        rasterio.shutil.copy(str(src_path), str(tmp), driver="COG", **opts)


def _frame_datetime(path: Path) -> str:
    import rasterio
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                return src.tags().get("EXIF_DateTimeOriginal", "").strip()
    except Exception:  # noqa: BLE001 - a date is optional
        return ""


IN_MEMORY_MOSAIC_PX = 64_000_000  # above this the per-pixel nadir distance lives in a disk-backed array


def orthomosaic(frames: list[str | Path], baseline_path: str | Path, out: str | Path, dem: str | Path | None = None,
                flight_log: str | Path | None = None, cfg: OrthoConfig | None = None, progress: bool = False) -> OrthoResult:
    """Orthorectify raw frames, refine them against the baseline and mosaic them to a COG.

    Parameters
    ----------
    frames : list of paths
        Frames and/or folders of frames.
    baseline_path : path
        The reference orthomosaic; the output uses its CRS and pixel grid alignment.
    out : path
        Output GeoTIFF (COG). Written atomically.
    dem : path, optional
        DEM/DSM GeoTIFF (any CRS); without it the ground is a plane at the take-off height.
    flight_log : path, optional
        CSV flight log; its rows override EXIF/XMP for the frames it names.
    cfg : OrthoConfig, optional

    Returns
    -------
    OrthoResult
        The frames' reports (skipped frames with their reasons); ``out`` is None when no
        frame could be used.

    Raises
    ------
    InputError
        Bad baseline/DEM/flight log, or no usable frame at all.
    """
    import rasterio

    cfg = cfg or OrthoConfig()
    t0 = time.perf_counter()
    out = Path(out)
    if not out.parent.exists():
        raise InputError(f"{out}: output folder does not exist")
    baseline = open_baseline(baseline_path)
    paths = list_frames(list(frames))
    log_entries = read_flight_log(flight_log) if flight_log else {}
    reports: list[FrameReport] = []
    poses: list[FramePose] = []
    for path in paths:
        try:
            entry = log_entries.get(path.name.lower())
            kwargs = dict(sensor_width_mm=cfg.sensor_width_mm, focal_px=cfg.focal_px, default_pitch_deg=cfg.default_pitch_deg)
            poses.append(pose_with_flight_log(path, entry, **kwargs) if entry else read_pose(path, **kwargs))
        except PoseError as exc:
            reports.append(FrameReport(name=path.name, status="skipped", reason=str(exc)))
            log.warning("%s: skipped: %s", path.name, exc)
    if not poses:
        raise InputError(f"no usable frame among {len(paths)}: " + "; ".join(f"{r.name}: {r.reason}" for r in reports[:3]))
    world = WorldFrame(baseline.grid.crs, baseline.is_metric, poses[0].lon, poses[0].lat)
    if dem:
        xy = np.array([world.lonlat_to_world(p.lon, p.lat) for p in poses])
        reach = max(500.0, 3 * max((p.rel_alt_m or cfg.flight_altitude_m or 150.0) for p in poses))
        ground = GroundDEM(dem, world.crs, (xy[:, 0].min() - reach, xy[:, 1].min() - reach, xy[:, 0].max() + reach,
                                            xy[:, 1].max() + reach))
    else:
        ground = GroundPlane(0.0)
    out_grid = baseline.grid if not cfg.gsd_m else baseline.grid.resampled(cfg.gsd_m / baseline.metre_per_unit)
    prepared: list[tuple[PreparedFrame, Optional[np.ndarray]]] = []
    iterator = poses
    if progress:
        from tqdm import tqdm

        iterator = tqdm(poses, desc="georeference", unit="frame")
    for pose in iterator:
        try:
            item = prepare_frame(pose, baseline, out_grid, world, ground, cfg)
        except FrameSkipped as exc:
            reports.append(FrameReport(name=pose.path.name, status="skipped", reason=str(exc)))
            log.warning("%s: skipped: %s", pose.path.name, exc)
            continue
        rep = item.report
        log.info("%s: %s, offset %.2f m, residual %.2f m, %d inliers%s", rep.name, rep.status, rep.shift_m,
                 rep.residual_m, rep.inliers, f" ({rep.reason})" if rep.reason else "")
        prepared.append((item, None))  # pixels are decoded again at output resolution (keeps memory flat)
    if not prepared:
        raise InputError(f"no usable frame among {len(paths)}: " + "; ".join(f"{r.name}: {r.reason}" for r in reports[:3]))
    left = min(p.grid.left for p, _ in prepared)
    top = max(p.grid.top for p, _ in prepared)
    right = max(p.grid.left + p.grid.width * p.grid.res_x for p, _ in prepared)
    bottom = min(p.grid.top - p.grid.height * p.grid.res_y for p, _ in prepared)
    mosaic_grid = out_grid.sub_grid((left, bottom, right, top))
    date = next((d for d in (_frame_datetime(p.pose.path) for p, _ in prepared) if d), "")
    with tempfile.TemporaryDirectory(prefix=".ortho-", dir=out.parent) as tmpdir:
        work = Path(tmpdir) / "mosaic.tif"
        profile = dict(driver="GTiff", width=mosaic_grid.width, height=mosaic_grid.height, count=3, dtype="uint8",
                       crs=mosaic_grid.crs, transform=mosaic_grid.transform, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate", bigtiff="IF_SAFER", photometric="RGB")
        # Distance of each mosaic pixel to the nadir of the frame that painted it. Small mosaics keep it
        # in memory; large ones on disk beside the work file, so memory does not grow with the flight.
        shape = (mosaic_grid.height, mosaic_grid.width)
        if shape[0] * shape[1] <= IN_MEMORY_MOSAIC_PX:
            best = np.full(shape, np.inf, np.float32)
        else:
            best = np.lib.format.open_memmap(Path(tmpdir) / "nadir_distance.npy", mode="w+", dtype=np.float32,
                                             shape=shape)
            for r0 in range(0, shape[0], 1024):
                best[r0 : r0 + 1024] = np.inf
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(work, "w+", **profile) as dst:
            for prep, _ in prepared:
                _paint_frame(dst, prep, mosaic_grid, best, world, ground, cfg)
            dst.update_tags(TIFFTAG_SOFTWARE="buildwatch ortho", buildwatch_ortho_frames=json.dumps(
                [r.report.as_dict() for r, _ in prepared] + [r.as_dict() for r in reports]))
            if date:
                dst.update_tags(TIFFTAG_DATETIME=date)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            _write_cog(work, out, cfg.compress)
    frames_out = [p.report for p, _ in prepared] + reports
    return OrthoResult(out=out, frames=frames_out, width=mosaic_grid.width, height=mosaic_grid.height,
                       seconds=time.perf_counter() - t0)


def _paint_frame(dst, prep: PreparedFrame, mosaic_grid: Grid, best: np.ndarray, world: WorldFrame, ground,
                 cfg: OrthoConfig) -> None:
    """Render one frame at output resolution and write the pixels where it is the nadir-most frame."""
    from rasterio.windows import Window

    t = time.perf_counter()
    grid = mosaic_grid.sub_grid(prep.grid.bounds)
    if grid is None:
        return
    try:
        image = load_frame_pixels(prep.pose.path, prep.reduce)
    except FrameSkipped as exc:  # cannot happen for refined frames (decoded once already), but be safe
        prep.report.status, prep.report.reason = "skipped", str(exc)
        return
    rgb, valid = orthorectify(image, prep.reduce, prep.camera, ground, world, grid, prep.correction, cfg.max_view_angle_deg)
    del image
    row, col = mosaic_grid.window_of(grid)
    window = Window(col, row, grid.width, grid.height)
    bx, by = grid.pixel_centres()
    dist = np.hypot(bx - prep.nadir_xy[0], by - prep.nadir_xy[1]).astype(np.float32)
    region = best[row:row + grid.height, col:col + grid.width]
    wins = valid & (dist < region)
    if not wins.any():
        return
    old = np.moveaxis(dst.read(window=window), 0, -1)
    old_valid = np.isfinite(region)
    if cfg.balance:
        gains = _frame_gains(rgb, valid, old, old_valid)
        if not np.allclose(gains, 1.0):
            rgb = np.clip(rgb.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    merged = np.where(wins[..., None], rgb, old)
    region[wins] = dist[wins]
    dst.write(np.moveaxis(merged, -1, 0), window=window)
    dst.write_mask(np.where(np.isfinite(region), 255, 0).astype(np.uint8), window=window)
    prep.report.seconds += time.perf_counter() - t
