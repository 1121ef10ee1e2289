"""The camera and the ground: a pinhole camera in a local metric world frame, and the terrain.

World frame: a local metric CRS (:class:`detector.flight.baseline.WorldFrame`), x east, y north,
z up. Camera frame: OpenCV (x right, y down, z along the view). Angles follow the DJI
convention (:mod:`detector.flight.pose`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import InputError


def camera_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation matrix camera -> world (columns: camera x, y, z axes in world ENU).

    At yaw 0, pitch 0 the camera looks north with the image top up; pitch -90 looks straight
    down with the image top towards the heading; yaw turns clockwise seen from above.
    """
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    level = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: right=E, down=-Up, forward=N
    rot_pitch = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rot_roll = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot_yaw = np.array(
        [[math.cos(-y), -math.sin(-y), 0], [math.sin(-y), math.cos(-y), 0], [0, 0, 1]]
    )
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

    def project(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        d = np.stack(
            [(u - cx) / self.focal_px, (v - cy) / self.focal_px, np.ones_like(u, dtype=float)],
            axis=-1,
        )
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

    def __init__(
        self,
        path: str | Path,
        metric_crs,
        bounds: tuple[float, float, float, float],
        res_m: float = 1.0,
    ):
        import rasterio
        from rasterio.transform import from_origin
        from rasterio.warp import Resampling, reproject

        path = Path(path)
        left, bottom, right, top = bounds
        width, height = (
            max(2, int(math.ceil((right - left) / res_m)) + 2),
            max(2, int(math.ceil((top - bottom) / res_m)) + 2),
        )
        self.transform = from_origin(left - res_m, top + res_m, res_m, res_m)
        self.values = np.full((height, width), np.nan, dtype=np.float32)
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise InputError(
                        f"{path}: DEM has no CRS; assign one (gdal_edit.py -a_srs) and retry"
                    )
                reproject(
                    rasterio.band(src, 1),
                    self.values,
                    dst_transform=self.transform,
                    dst_crs=metric_crs,
                    dst_nodata=np.nan,
                    resampling=Resampling.bilinear,
                )
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(
                f"{path}: DEM is not a readable raster ({str(exc).splitlines()[0][:120]})"
            ) from None
        finite = np.isfinite(self.values)
        if not finite.any():
            raise InputError(
                f"{path}: DEM has no data under the frames; give a DEM covering the flight"
            )
        self.fill = float(np.median(self.values[finite]))
        self.values[~finite] = self.fill

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        import cv2

        inv = ~self.transform
        col = (inv.a * x + inv.b * y + inv.c - 0.5).astype(np.float32)
        row = (inv.d * x + inv.e * y + inv.f - 0.5).astype(np.float32)
        shape = np.shape(x)
        out = cv2.remap(
            self.values,
            col.reshape(-1, 1) if col.ndim == 1 else col,
            row.reshape(-1, 1) if row.ndim == 1 else row,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.fill,
        )
        return out.reshape(shape).astype(np.float64)
