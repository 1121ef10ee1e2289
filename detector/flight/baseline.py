"""The ortho baseline: its north-up pixel grid (a :class:`detector.geo.grid.Grid`), how to read it,
and the metric world frame.

The output of ``buildwatch ortho`` / ``ingest`` lies on the baseline's pixel grid (its CRS,
pixel size and alignment). The cameras live in a local metric *world frame*: the baseline's
CRS when its unit is a true ground metre, else the UTM zone of the flight
(:func:`detector.geo.crs.working_crs`, the same rule as the nightly run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.geo.crs import as_crs, metres_per_unit, working_crs
from detector.geo.grid import Grid, warp_onto
from detector.geo.raster import Stretch, apply_stretch, open_raster, raster_stretch


@dataclass
class Baseline:
    """The reference orthomosaic: its grid and how to read it."""

    path: Path
    grid: Grid
    metre_per_unit: float  # ground metres per CRS unit at the baseline's centre
    bands: tuple[int, int, int] = (1, 2, 3)
    stretch: Stretch | None = None  # the project's stretch to uint8 (None: uint8 already)

    def read(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (H, W, 3) and a validity mask of the baseline resampled onto ``grid``."""
        import rasterio

        with (
            rasterio.open(self.path) as src,
            warp_onto(src, grid.crs, grid.transform, grid.width, grid.height) as vrt,
        ):
            rgb = apply_stretch(vrt.read(list(self.bands)), self.stretch)
            mask = vrt.read_masks(1) > 0
        return np.ascontiguousarray(np.moveaxis(rgb, 0, -1)), mask


def open_baseline(path: str | Path) -> Baseline:
    """Open and check the baseline GeoTIFF (:func:`detector.geo.raster.open_raster`, north-up).

    Raises
    ------
    InputError
        Missing, unreadable, without CRS, not uint8/uint16, not RGB or panchromatic, or rotated.
    """
    from rasterio.crs import CRS

    info = open_raster(path, "baseline", allow_pan=True, north_up=True)
    t = info.transform
    crs = CRS.from_wkt(info.crs_wkt)
    grid = Grid(
        crs=crs, left=t.c, top=t.f, res_x=t.a, res_y=-t.e, width=info.width, height=info.height
    )
    left, bottom, right, top = grid.bounds
    mpu = metres_per_unit(info.crs_wkt, (left + right) / 2, (bottom + top) / 2)
    stretch = raster_stretch(info.path, info.bands) if info.dtype != "uint8" else None
    return Baseline(
        path=info.path, grid=grid, metre_per_unit=mpu, bands=info.bands, stretch=stretch
    )


class WorldFrame:
    """Converts between the baseline CRS and the local metric world frame of the cameras.

    The world frame is :func:`detector.geo.crs.working_crs` at the flight's position: the
    baseline's CRS when it is true metres there (then conversions are the identity), else UTM.
    """

    def __init__(self, baseline_crs, lon: float, lat: float):
        from pyproj import Transformer

        base = as_crs(baseline_crs)
        self.crs = working_crs(base, lon, lat)
        self.identity = self.crs is base
        self._to_world = Transformer.from_crs(base, self.crs, always_xy=True)
        self._from_world = Transformer.from_crs(self.crs, base, always_xy=True)
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
