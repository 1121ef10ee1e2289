"""The two nightly orthomosaics: opened, validated and read tile by tile at the working GSD.

Both epochs are read through a :class:`rasterio.vrt.WarpedVRT` onto one *working grid*
(:func:`detector.geo.grid.make_grid`): north-up, the model's GSD in metres, in the baseline's
CRS when its unit is a true ground metre, else in the UTM zone of its centre
(:func:`detector.geo.crs.working_crs`). GDAL picks overviews when the working GSD is coarser
than the source, so full-resolution pixels are never read only to be thrown away, and only
one tile's window is in memory at a time. Wider pixel types are mapped to uint8 with the
project's one stretch (:mod:`detector.geo.raster`), estimated once per mosaic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.geo.crs import source_gsd_m as _raster_gsd_m
from detector.geo.grid import WorkingGrid, clip_window, inner_slices, make_grid
from detector.geo.raster import STRETCH_HIGH, STRETCH_LOW, MosaicInfo, estimate_stretch, open_raster

__all__ = ["EpochReader", "MosaicInfo", "WorkingGrid", "choose_overview_level", "make_grid", "open_mosaic",
           "source_gsd_m"]


def open_mosaic(path: Path | str, role: str) -> MosaicInfo:
    """Validate one nightly input (``role`` = ``"baseline"`` / ``"current"``); RGB or panchromatic.

    Raises
    ------
    InputError
        Naming the file and the fix (see :func:`detector.geo.raster.open_raster`).
    """
    return open_raster(path, f"{role} mosaic", allow_pan=True)


def source_gsd_m(info: MosaicInfo) -> float:
    """The mosaic's coarser pixel side on the ground in metres, measured geodesically at its centre."""
    return _raster_gsd_m(info.crs_wkt, info.transform, info.width, info.height)


def choose_overview_level(info: MosaicInfo, gsd: float) -> int | None:
    """Index of the coarsest overview still at least as fine as ``gsd`` (None: full resolution)."""
    import rasterio

    with rasterio.open(info.path) as src:
        factors = src.overviews(1)
    native = source_gsd_m(info)
    best = None
    for level, factor in enumerate(factors):
        if native * factor <= gsd * 1.001:
            best = level
    return best


class EpochReader:
    """Reads windows of one epoch on the working grid (RGB uint8 + validity mask)."""

    def __init__(self, info: MosaicInfo, grid: WorkingGrid, stretch: tuple[np.ndarray, np.ndarray] | None = None):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.info = info
        self.grid = grid
        self.overview_level = choose_overview_level(info, grid.gsd)
        if self.overview_level is None:
            self._src = rasterio.open(info.path)
        else:  # read a pyramid level at or just finer than the working GSD, not the full resolution
            self._src = rasterio.open(info.path, overview_level=self.overview_level)
        self._vrt = WarpedVRT(
            self._src,
            crs=grid.crs_wkt,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.bilinear,
            add_alpha=not info.has_alpha,
            warp_mem_limit=64,
        )
        self._bands = list(info.bands)
        self.stretch = stretch if stretch is not None else (None if info.dtype == "uint8" else self.percentile_stretch())

    def percentile_stretch(self, low: float = STRETCH_LOW, high: float = STRETCH_HIGH):
        """The project's stretch of this mosaic (per band, ``low``–``high`` %), from a decimated read."""
        return estimate_stretch(self._src, self._bands, low, high)

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and (H, W) bool validity for a window of the working grid.

        Windows may extend past the grid; the outside is returned invalid.
        """
        from rasterio.windows import Window

        from detector.geo.raster import apply_stretch

        out = np.zeros((height, width, 3), dtype=np.uint8)
        valid = np.zeros((height, width), dtype=bool)
        wanted = Window(col_off, row_off, width, height)
        win = clip_window(wanted, self.grid.width, self.grid.height)
        if win is None:
            return out, valid
        data = apply_stretch(self._vrt.read(self._bands, window=win), self.stretch)
        mask = self._vrt.dataset_mask(window=win) > 0
        ys, xs = inner_slices(wanted, win)
        out[ys, xs] = np.moveaxis(data, 0, -1)
        valid[ys, xs] = mask
        return out, valid

    def close(self) -> None:
        self._vrt.close()
        self._src.close()
