"""The two nightly orthomosaics: opened, validated and read tile by tile at the working GSD.

Both epochs are read through the one grid reader (:func:`detector.geo.grid.warp_onto`, a
:class:`rasterio.vrt.WarpedVRT`) onto one *working grid*
(:func:`detector.geo.grid.make_grid`): north-up, the model's GSD in metres, in the baseline's
CRS when its unit is a true ground metre, else in the UTM zone of its centre
(:func:`detector.geo.crs.working_crs`). GDAL picks overviews when the working GSD is coarser
than the source, so full-resolution pixels are never read only to be thrown away, and only
one tile's window is in memory at a time. Wider pixel types are mapped to uint8 with the
project's one stretch (:mod:`detector.geo.raster`), estimated once per mosaic.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detector.geo.crs import source_gsd_m as _raster_gsd_m
from detector.geo.grid import WorkingGrid, clip_window, inner_slices, make_grid, warp_onto
from detector.geo.raster import (
    STRETCH_HIGH,
    STRETCH_LOW,
    MosaicInfo,
    estimate_stretch,
    open_raster,
    source_window,
)

CV_RESAMPLE_MAX_FACTOR = (
    1.5  # source pixels per working pixel up to which OpenCV resamples a tile (see EpochReader)
)

__all__ = [
    "EpochReader",
    "MosaicInfo",
    "WorkingGrid",
    "choose_overview_level",
    "coverage_of_baseline",
    "make_grid",
    "open_mosaic",
    "overview_mismatch",
    "read_coarse",
    "source_gsd_m",
    "tiles_without_data",
]

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

    def __init__(
        self,
        info: MosaicInfo,
        grid: WorkingGrid,
        stretch: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        import rasterio
        from rasterio.enums import MaskFlags

        self.info = info
        self.grid = grid
        self.overview_level = choose_overview_level(info, grid.gsd)
        if self.overview_level is None:
            self._src = rasterio.open(info.path)
        else:  # read a pyramid level at or just finer than the working GSD, not the full resolution
            self._src = rasterio.open(info.path, overview_level=self.overview_level)
        self._vrt = warp_onto(
            self._src,
            grid.crs_wkt,
            grid.transform,
            grid.width,
            grid.height,
            "bilinear",
            add_alpha=not info.has_alpha,
            warp_mem_limit=64,
        )
        self._bands = list(info.bands)
        self.stretch = (
            stretch
            if stretch is not None
            else (None if info.dtype == "uint8" else self.percentile_stretch())
        )
        # Same CRS and both grids axis-aligned: no warping is needed, only resampling, and GDAL's
        # resampled read of the (overview) dataset costs a third of the warper's per window.
        self.direct = _axis_aligned_same_crs(self._src, grid)
        self._all_valid = all(flags == [MaskFlags.all_valid] for flags in self._src.mask_flag_enums)

    def percentile_stretch(self, low: float = STRETCH_LOW, high: float = STRETCH_HIGH):
        """The project's stretch of this mosaic (per band, ``low``–``high`` %), from a decimated read."""
        return estimate_stretch(self._src, self._bands, low, high)

    def read(
        self, col_off: int, row_off: int, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray]:
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
        if self.direct:
            win, data, mask = self._read_direct(win)
            if win is None:
                return out, valid
        else:
            data = self._vrt.read(self._bands, window=win)
            mask = self._vrt.dataset_mask(window=win) > 0
        ys, xs = inner_slices(wanted, win)
        out[ys, xs] = np.moveaxis(apply_stretch(data, self.stretch), 0, -1)
        valid[ys, xs] = mask
        return out, valid

    def _read_direct(self, win):
        """(window, (3, h, w) pixels, (h, w) validity) of the grid pixels whose centre lies in the
        source (the warper's rule), read without the warper: one resampled read (bilinear, like
        the warp) of the pixels wholly inside; a pixel only partly inside takes its inner neighbour's value."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        src, g = self._src, self.grid
        t = src.transform
        sx, sy = g.gsd / t.a, g.gsd / -t.e  # source pixels per grid pixel
        c0 = (g.left + win.col_off * g.gsd - t.c) / t.a  # the window's upper-left in source pixels
        r0 = (t.f - (g.top - win.row_off * g.gsd)) / -t.e
        cols = _inside(c0, sx, int(win.width), src.width)
        rows = _inside(r0, sy, int(win.height), src.height)
        if cols is None or rows is None:
            return None, None, None
        (ca0, ca1, cb0, cb1), (ra0, ra1, rb0, rb1) = cols, rows
        col, row = max(0.0, c0 + cb0 * sx), max(0.0, r0 + rb0 * sy)
        swin = Window(
            col,
            row,
            min((cb1 - cb0) * sx, src.width - col),
            min((rb1 - rb0) * sy, src.height - row),
        )
        shape = (rb1 - rb0, cb1 - cb0)
        if self._all_valid and max(sx, sy) <= CV_RESAMPLE_MAX_FACTOR:
            data = self._read_cv(c0, r0, sx, sy, cb0, cb1, rb0, rb1)
        else:  # GDAL resamples (its bilinear widens the kernel with the factor: no aliasing)
            data = src.read(
                self._bands, window=swin, out_shape=(3, *shape), resampling=Resampling.bilinear
            )
        if self._all_valid:
            mask = np.ones(shape, dtype=bool)
        else:  # nodata, alpha band or internal mask
            mask = src.dataset_mask(window=swin, out_shape=shape, resampling=Resampling.nearest) > 0
            data[:, ~mask] = 0  # as the warper leaves them
        pad = ((rb0 - ra0, ra1 - rb1), (cb0 - ca0, ca1 - cb1))
        if any(any(p) for p in pad):
            data, mask = np.pad(data, ((0, 0), *pad), mode="edge"), np.pad(mask, pad, mode="edge")
        return Window(win.col_off + ca0, win.row_off + ra0, ca1 - ca0, ra1 - ra0), data, mask

    def _read_cv(
        self, c0: float, r0: float, sx: float, sy: float, cb0: int, cb1: int, rb0: int, rb1: int
    ):
        """Grid pixels ``[cb0, cb1) x [rb0, rb1)`` of a window starting at source pixel (c0, r0):
        the source pixels under them read as they are (decode only), then resampled bilinearly by
        OpenCV at the grid pixel centres. A quarter of the CPU of GDAL's resampled read; used up to
        :data:`CV_RESAMPLE_MAX_FACTOR`, where bilinear sampling needs no anti-aliasing."""
        import cv2
        from rasterio.windows import Window

        src = self._src
        # source pixel-centre coordinates (0 = centre of the first pixel) of the first and last grid pixel centres
        u0, u1 = c0 + (cb0 + 0.5) * sx - 0.5, c0 + (cb1 - 0.5) * sx - 0.5
        v0, v1 = r0 + (rb0 + 0.5) * sy - 0.5, r0 + (rb1 - 0.5) * sy - 0.5
        x0, x1 = max(0, math.floor(u0)), min(src.width, math.floor(u1) + 2)
        y0, y1 = max(0, math.floor(v0)), min(src.height, math.floor(v1) + 2)
        raw = np.ascontiguousarray(
            np.moveaxis(src.read(self._bands, window=Window(x0, y0, x1 - x0, y1 - y0)), 0, -1)
        )
        m = np.array([[sx, 0.0, u0 - x0], [0.0, sy, v0 - y0]])
        out = cv2.warpAffine(
            raw,
            m,
            (cb1 - cb0, rb1 - rb0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return np.moveaxis(out, -1, 0)

    def close(self) -> None:
        self._vrt.close()
        self._src.close()


def read_coarse(
    info: MosaicInfo, grid: WorkingGrid, stretch: tuple | None = None
) -> tuple[np.ndarray, np.ndarray]:
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
        # only the part of the source under the grid: a mosaic whose header declares far more
        # than the baseline (400,000 px on a side) is not read, nor allocated, beyond it
        win = source_window(src, grid_bounds(grid), grid.crs_wkt)
        if win.width < 1 or win.height < 1:
            return (
                np.zeros((grid.height, grid.width, 3), np.uint8),
                np.zeros((grid.height, grid.width), bool),
            )
        factor = max(1.0, grid.gsd / max(source_gsd_m(info), 1e-12))
        h, w = max(1, round(win.height / factor)), max(1, round(win.width / factor))
        data = src.read(
            list(info.bands), window=win, out_shape=(3, h, w), resampling=Resampling.average
        )
        mask = src.dataset_mask(window=win, out_shape=(h, w), resampling=Resampling.nearest)
        transform = src.window_transform(win) @ Affine.scale(win.width / w, win.height / h)
        crs = src.crs
    rgb = np.zeros((3, grid.height, grid.width), dtype=data.dtype)
    valid = np.zeros((grid.height, grid.width), dtype=np.uint8)
    common = dict(
        src_transform=transform, src_crs=crs, dst_transform=grid.transform, dst_crs=grid.crs_wkt
    )
    reproject(data, rgb, resampling=Resampling.bilinear, **common)
    reproject(mask, valid, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0, **common)
    out = np.moveaxis(apply_stretch(rgb, stretch), 0, -1).copy()
    ok = valid > 0
    out[~ok] = 0
    return out, ok


def grid_bounds(grid: WorkingGrid) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a working grid in its CRS."""
    return (
        grid.left,
        grid.top - grid.height * grid.gsd,
        grid.left + grid.width * grid.gsd,
        grid.top,
    )


def coarse_grid(grid: WorkingGrid, max_side: int) -> tuple[WorkingGrid, float]:
    """``grid`` decimated to at most ``max_side`` pixels on its longer side, and the factor used."""
    from dataclasses import replace

    factor = max(1.0, max(grid.width, grid.height) / max_side)
    coarse = replace(
        grid,
        gsd=grid.gsd * factor,
        width=max(1, int(grid.width / factor)),
        height=max(1, int(grid.height / factor)),
    )
    return coarse, factor


def coarse_validity(info: MosaicInfo, grid: WorkingGrid) -> np.ndarray:
    """(H, W) bool on a coarse ``grid``: True where the epoch may hold a valid pixel.

    Conservative: a coarse pixel is valid when any source pixel under it is (the mask read
    decimated with ``average``, any non-zero kept, then warped with ``max``), so a region it
    calls empty has no data. One decimated read of the mask only (none when the source has no
    nodata, alpha or mask), over the grid's part of the source (flat memory).
    """
    import rasterio
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.transform import Affine
    from rasterio.warp import reproject

    out = np.zeros((grid.height, grid.width), dtype=np.uint8)
    with rasterio.open(info.path) as src:
        win = source_window(src, grid_bounds(grid), grid.crs_wkt)
        if win.width < 1 or win.height < 1:
            return out > 0
        factor = max(1.0, grid.gsd / max(source_gsd_m(info), 1e-12))
        h, w = max(1, round(win.height / factor)), max(1, round(win.width / factor))
        if all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums):
            mask = np.ones((h, w), np.uint8)  # no nodata, alpha or mask: valid wherever it covers
        else:
            mask = src.dataset_mask(window=win, out_shape=(h, w), resampling=Resampling.average)
        transform = src.window_transform(win) @ Affine.scale(win.width / w, win.height / h)
        crs = src.crs
    reproject(
        (mask > 0).astype(np.uint8),
        out,
        src_transform=transform,
        src_crs=crs,
        dst_transform=grid.transform,
        dst_crs=grid.crs_wkt,
        resampling=Resampling.max,
        src_nodata=None,
        dst_nodata=None,
    )
    return out > 0


def tiles_without_data(
    baseline: MosaicInfo, current: MosaicInfo, grid: WorkingGrid, tiles: list, max_side: int = 4096
) -> set[str]:
    """IDs of the ``tiles`` where the two epochs have no valid pixel in common, judged from one
    coarse read of each epoch's mask (:func:`coarse_validity`) instead of reading every tile.

    A baseline whose extent is 100,000 px on a side but holds imagery in one corner makes
    thousands of tiles that would each be opened, read and found empty ("nodata"); these are
    known empty from the coarse read. The coarse grid has about four pixels per tile side (at
    most ``max_side`` on its longer side) and its valid area is widened by one pixel, so a tile
    touching data is always read.
    """
    import cv2

    if not tiles:
        return set()
    t0 = tiles[0]
    tile_side = (t0.bounds[2] - t0.bounds[0]) / grid.gsd
    coarse, factor = coarse_grid(
        grid, min(max_side, max(64, int(4 * max(grid.width, grid.height) / tile_side)))
    )
    both = coarse_validity(baseline, coarse) & coarse_validity(current, coarse)
    both = cv2.dilate(both.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    empty = set()
    for t in tiles:
        c0 = math.floor((t.bounds[0] - coarse.left) / coarse.gsd)
        c1 = math.ceil((t.bounds[2] - coarse.left) / coarse.gsd)
        r0 = math.floor((coarse.top - t.bounds[3]) / coarse.gsd)
        r1 = math.ceil((coarse.top - t.bounds[1]) / coarse.gsd)
        c0, r0 = max(0, c0), max(0, r0)
        c1, r1 = min(coarse.width, c1), min(coarse.height, r1)
        if c1 <= c0 or r1 <= r0:  # past the coarse grid's edge (its last partial pixel): read it
            continue
        if not both[r0:r1, c0:c1].any():
            empty.add(t.tile_id)
    return empty


#: Cell-mean difference (grey levels, 0-255) between a raster's full resolution and its own
#: first overview above which a region is reported as damaged (see :func:`overview_mismatch`).
OVERVIEW_MISMATCH_LEVELS = 24.0
OVERVIEW_CELL_PX = 16  # side, in overview pixels, of the cells whose means are compared


def overview_mismatch(
    info: MosaicInfo, bounds: tuple[float, float, float, float], crs_wkt: str
) -> tuple[float, float, float] | None:
    """Whether a raster's full-resolution pixels under ``bounds`` agree with its own overview.

    A block whose bytes were damaged after the overviews were built (a bit flip in storage or
    in transit) may still decode without error, and then shows as a "change". Its overview,
    stored elsewhere in the file, still holds the true picture: the mean of every cell of
    :data:`OVERVIEW_CELL_PX` overview pixels is compared with the mean of the full-resolution
    pixels under it (uint8 scale).

    Returns
    -------
    (difference, x, y) or None
        The largest cell difference in grey levels and the cell's centre in ``crs_wkt``, when it
        exceeds :data:`OVERVIEW_MISMATCH_LEVELS`; None when they agree, or when the raster has
        no overviews (nothing to compare with).
    """
    import rasterio

    from detector.geo.raster import apply_stretch, raster_stretch

    with rasterio.open(info.path) as src:
        factors = src.overviews(1)
        if not factors:
            return None
        f = int(factors[0])
        win = source_window(src, bounds, crs_wkt)
        cell = OVERVIEW_CELL_PX * f
        c0, r0 = (int(win.col_off) // cell) * cell, (int(win.row_off) // cell) * cell
        c1 = min(src.width, int(win.col_off + win.width)) // cell * cell
        r1 = min(src.height, int(win.row_off + win.height)) // cell * cell
        if c1 <= c0 or r1 <= r0:
            return None
        from rasterio.windows import Window

        full = src.read(list(info.bands), window=Window(c0, r0, c1 - c0, r1 - r0))
        transform, src_crs = src.transform, src.crs
    with rasterio.open(info.path, overview_level=0) as ovr:
        over = ovr.read(
            list(info.bands), window=Window(c0 // f, r0 // f, (c1 - c0) // f, (r1 - r0) // f)
        )
    stretch = raster_stretch(info.path, info.bands)
    full, over = apply_stretch(full, stretch), apply_stretch(over, stretch)
    n, h, w = full.shape
    rows, cols = h // cell, w // cell
    if over.shape[1] < rows * OVERVIEW_CELL_PX or over.shape[2] < cols * OVERVIEW_CELL_PX:
        return None
    mean_full = full.reshape(n, rows, cell, cols, cell).astype(np.float32).mean(axis=(2, 4))
    o = over[:, : rows * OVERVIEW_CELL_PX, : cols * OVERVIEW_CELL_PX].astype(np.float32)
    mean_over = o.reshape(n, rows, OVERVIEW_CELL_PX, cols, OVERVIEW_CELL_PX).mean(axis=(2, 4))
    diff = np.abs(mean_full - mean_over).max(axis=0)
    worst = float(diff.max())
    if worst <= OVERVIEW_MISMATCH_LEVELS:
        return None
    r, c = np.unravel_index(int(diff.argmax()), diff.shape)
    x, y = transform @ (c0 + (c + 0.5) * cell, r0 + (r + 0.5) * cell)
    if src_crs.to_wkt() != crs_wkt:
        from pyproj import Transformer

        from detector.geo.crs import as_crs

        x, y = Transformer.from_crs(as_crs(src.crs), as_crs(crs_wkt), always_xy=True).transform(
            x, y
        )
    return worst, float(x), float(y)


def coverage_of_baseline(
    baseline: MosaicInfo,
    current: MosaicInfo,
    grid: WorkingGrid,
    stretches: tuple = (None, None),
    max_side: int = COVERAGE_MAX_SIDE,
) -> float:
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


def _inside(offset: float, step: float, n: int, size: int) -> tuple[int, int, int, int] | None:
    """Along one axis, grid pixels ``[0, n)`` starting at source pixel ``offset``, ``step`` source
    pixels each: ``(a0, a1, b0, b1)``, the range whose centres lie in ``[0, size)`` and the range
    wholly inside it; None when no pixel is wholly inside."""
    eps = 1e-6
    a0 = max(0, math.ceil(-offset / step - 0.5 - eps))
    a1 = min(n, math.ceil((size - offset) / step - 0.5 - eps))
    b0 = max(0, math.ceil(-offset / step - eps))
    b1 = min(n, math.floor((size - offset) / step + eps))
    if b1 <= b0:
        return None
    return min(a0, b0), max(a1, b1), b0, b1


def _axis_aligned_same_crs(src, grid: WorkingGrid) -> bool:
    """Whether ``src`` is in the working grid's CRS with north-up, unrotated pixels."""
    from rasterio.crs import CRS

    t = src.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or src.crs is None:
        return False
    try:
        return src.crs == CRS.from_wkt(grid.crs_wkt)
    except Exception:  # an exotic CRS rasterio cannot compare: warp, as always
        return False
