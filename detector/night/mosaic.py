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

__all__ = ["EpochReader", "MosaicInfo", "WorkingGrid", "choose_overview_level", "coverage_of_baseline",
           "make_grid", "open_mosaic", "read_coarse", "source_gsd_m"]

COVERAGE_MAX_SIDE = 512  # longest side (pixels) of the coarse read that measures coverage


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


def read_coarse(info: MosaicInfo, grid: WorkingGrid, stretch: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole epoch on a coarse ``grid``: (H, W, 3) uint8 RGB and (H, W) bool validity.

    Memory is flat in the mosaic's extent, with or without overviews: the source is read once,
    decimated by GDAL (``out_shape``; from the overviews when there are, else block by block
    through the block cache) to about the grid's resolution, and that small array is then warped
    onto ``grid`` in memory. (A :class:`~rasterio.vrt.WarpedVRT` onto a grid hundreds of times
    coarser than a source without overviews makes GDAL's warper hold source windows that grow
    with the extent.)

    Parameters
    ----------
    info : MosaicInfo
    grid : WorkingGrid
        A coarse grid (a few thousand pixels on a side at most).
    stretch : tuple, optional
        The epoch's stretch (uint16 sources); None for uint8.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.warp import reproject

    from detector.geo.raster import apply_stretch

    with rasterio.open(info.path) as src:
        factor = max(1.0, grid.gsd / max(source_gsd_m(info), 1e-12))
        h, w = max(1, round(src.height / factor)), max(1, round(src.width / factor))
        data = src.read(list(info.bands), out_shape=(3, h, w), resampling=Resampling.average)
        mask = src.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest)
        transform = src.transform @ Affine.scale(src.width / w, src.height / h)
        crs = src.crs
    rgb = np.zeros((3, grid.height, grid.width), dtype=data.dtype)
    valid = np.zeros((grid.height, grid.width), dtype=np.uint8)
    common = dict(src_transform=transform, src_crs=crs, dst_transform=grid.transform, dst_crs=grid.crs_wkt)
    reproject(data, rgb, resampling=Resampling.bilinear, **common)
    reproject(mask, valid, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0, **common)
    out = np.moveaxis(apply_stretch(rgb, stretch), 0, -1).copy()
    ok = valid > 0
    out[~ok] = 0
    return out, ok


def coarse_grid(grid: WorkingGrid, max_side: int) -> tuple[WorkingGrid, float]:
    """``grid`` decimated to at most ``max_side`` pixels on its longer side, and the factor used."""
    from dataclasses import replace

    factor = max(1.0, max(grid.width, grid.height) / max_side)
    coarse = replace(grid, gsd=grid.gsd * factor, width=max(1, int(grid.width / factor)),
                     height=max(1, int(grid.height / factor)))
    return coarse, factor


def coverage_of_baseline(baseline: MosaicInfo, current: MosaicInfo, grid: WorkingGrid,
                         stretches: tuple = (None, None), max_side: int = COVERAGE_MAX_SIDE) -> float:
    """Share of the baseline's valid ground that tonight's mosaic holds imagery for (0..1).

    A current pixel counts when it is valid (nodata, alpha and mask respected) and not pure
    black in every band, so an all-nodata, all-black or alpha-0 export -- a flight that was not
    processed -- covers 0 %. Measured on a coarse read (:func:`read_coarse`; flat memory).
    """
    coarse, _ = coarse_grid(grid, max_side)
    b, vb = read_coarse(baseline, coarse, stretches[0])
    c, vc = read_coarse(current, coarse, stretches[1])
    seen = vc & (c.max(axis=2) > 0)
    base = vb & (b.max(axis=2) > 0)
    if not base.any():
        base = vb
    n = int(base.sum())
    return float((seen & base).sum()) / n if n else 0.0
