"""The working grid, window arithmetic (done with :mod:`rasterio.windows` and affine transforms) and
the one grid reader (:func:`warp_onto`).

A *window* is a :class:`rasterio.windows.Window` (col_off, row_off, width, height) on a grid
given by its affine transform. Map bounds become windows with
:func:`rasterio.windows.from_bounds`, windows are clipped with
:meth:`~rasterio.windows.Window.intersection`, map points become pixel positions with the
inverse transform (:func:`map_to_pixel`). No module divides by a pixel size by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from detector.errors import InputError
from detector.geo.crs import working_crs_wkt
from detector.geo.raster import MosaicInfo

SNAP_EPS = 1e-6  # pixel fractions below this are rounding noise, not a partial pixel


@dataclass(frozen=True)
class WorkingGrid:
    """The north-up pixel grid all tiles of a night are cut from.

    Not the same thing as :class:`Grid`, and kept apart on purpose: this one is made by
    :func:`make_grid` (square pixels of the working GSD in the metric working CRS, snapped to a
    world grid of whole pixels so the same ground gets the same pixels every night), carries the
    CRS the night's candidates are written in (the baseline's), and travels in the night's
    context to every tile worker (CRSs as WKT strings: small and picklable for the process pool
    and Dask). A :class:`Grid` is a raster's own grid as it is, in its own CRS object, with
    pixels that may differ along x and y, and the sub-grid and resampling steps the ortho
    baseline needs. Folding them into one class would give each side fields it must not use
    (``output_crs_wkt`` in the ortho, ``res_x != res_y`` in the tile arithmetic, which reads
    ``gsd`` throughout) for no shared code: only ``transform`` is common.
    """

    crs_wkt: str  # working (metric) CRS
    output_crs_wkt: str  # the baseline's CRS: candidates are written in it
    gsd: float  # metres per pixel
    left: float
    top: float
    width: int
    height: int

    @property
    def transform(self):
        from affine import Affine

        return Affine(self.gsd, 0.0, self.left, 0.0, -self.gsd, self.top)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, origin (upper-left corner), pixel size (may differ along x and y), shape.

    The grid of a raster as it is (the ortho baseline and its parts, :mod:`detector.flight`);
    the nightly run's square metric grid is :class:`WorkingGrid`.
    """

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
        return (
            self.left,
            self.top - self.height * self.res_y,
            self.left + self.width * self.res_x,
            self.top,
        )

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        xs = self.left + (np.arange(self.width) + 0.5) * self.res_x
        ys = self.top - (np.arange(self.height) + 0.5) * self.res_y
        return np.meshgrid(xs, ys)

    def window_of(self, other: Grid):
        """The window (:class:`rasterio.windows.Window`) ``other`` (same pixel size, aligned) covers in this grid."""
        from rasterio.windows import Window

        col, row = window_at(self.transform, other.left, other.top)
        return Window(col, row, other.width, other.height)

    def sub_grid(self, bounds: tuple[float, float, float, float]) -> Grid | None:
        """The part of this grid covering ``bounds`` (snapped outwards to pixels), or None if disjoint."""
        win = sub_window(self.transform, self.width, self.height, bounds)
        if win is None:
            return None
        xs, ys = pixel_to_map(self.transform, [win.row_off], [win.col_off])
        return replace(
            self, left=float(xs[0]), top=float(ys[0]), width=int(win.width), height=int(win.height)
        )

    def resampled(self, res: float) -> Grid:
        """The same area on a grid of pixel size ``res`` (anchored at the same corner)."""
        import math

        left, bottom, right, top = self.bounds
        return replace(
            self,
            res_x=res,
            res_y=res,
            width=max(1, int(math.ceil((right - left) / res))),
            height=max(1, int(math.ceil((top - bottom) / res))),
        )


def make_grid(baseline: MosaicInfo, current: MosaicInfo, gsd: float) -> WorkingGrid:
    """The working grid over the baseline's footprint, in the metric working CRS
    (:func:`detector.geo.crs.working_crs`), anchored to a world grid of whole pixels so that
    the same ground gets the same pixels every night.

    Raises
    ------
    InputError
        The two mosaics do not overlap.
    """
    from rasterio.warp import transform_bounds

    work_crs = working_crs_wkt(baseline.crs_wkt, baseline.bounds)
    b = transform_bounds(baseline.crs_wkt, work_crs, *baseline.bounds, densify_pts=21)
    c = transform_bounds(current.crs_wkt, work_crs, *current.bounds, densify_pts=21)
    inter = (max(b[0], c[0]), max(b[1], c[1]), min(b[2], c[2]), min(b[3], c[3]))
    if inter[0] >= inter[2] or inter[1] >= inter[3]:
        raise InputError(
            f"{current.path}: current mosaic does not overlap the baseline {baseline.path}; "
            "check that both cover the same area and carry the right CRS"
        )
    left = math.floor(b[0] / gsd) * gsd
    top = math.ceil(b[3] / gsd) * gsd
    width = int(math.ceil((b[2] - left) / gsd))
    height = int(math.ceil((top - b[1]) / gsd))
    return WorkingGrid(
        crs_wkt=work_crs,
        output_crs_wkt=baseline.crs_wkt,
        gsd=gsd,
        left=left,
        top=top,
        width=width,
        height=height,
    )


def window_at(transform, left: float, top: float) -> tuple[int, int]:
    """(col_off, row_off) of the pixel whose upper-left corner is the map point (left, top)
    (rounded; may be negative or past the grid)."""
    rows, cols = map_to_pixel(transform, [left], [top])
    return int(round(float(cols[0]))), int(round(float(rows[0])))


def bounds_window(transform, bounds: tuple[float, float, float, float]):
    """The window (float offsets and sizes) covering map ``bounds`` on the grid of ``transform``."""
    from rasterio.windows import from_bounds

    return from_bounds(*bounds, transform=transform)


def snap_outwards(window):
    """The smallest whole-pixel window containing ``window`` (noise below :data:`SNAP_EPS` ignored)."""
    from rasterio.windows import Window

    c0 = math.floor(window.col_off + SNAP_EPS)
    r0 = math.floor(window.row_off + SNAP_EPS)
    c1 = math.ceil(window.col_off + window.width - SNAP_EPS)
    r1 = math.ceil(window.row_off + window.height - SNAP_EPS)
    return Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))


def clip_window(window, width: int, height: int):
    """``window`` clipped to a ``width`` x ``height`` grid, or None when they do not overlap."""
    from rasterio.errors import WindowError
    from rasterio.windows import Window

    try:
        inter = window.intersection(Window(0, 0, width, height))
    except WindowError:
        return None
    return inter if inter.width > 0 and inter.height > 0 else None


def inner_slices(outer, inner) -> tuple[slice, slice]:
    """(rows, cols) slices that place window ``inner`` inside an array covering window ``outer``."""
    r0, c0 = int(inner.row_off - outer.row_off), int(inner.col_off - outer.col_off)
    return slice(r0, r0 + int(inner.height)), slice(c0, c0 + int(inner.width))


def map_to_pixel(transform, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) as floats of map points on the grid of ``transform`` (0, 0 = the upper-left
    corner of the first pixel; pixel centres are at +0.5)."""
    from rasterio.transform import rowcol

    rows, cols = rowcol(
        transform, np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), op=float
    )
    return np.asarray(rows, dtype=float), np.asarray(cols, dtype=float)


def pixel_to_map(transform, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) map coordinates of pixel positions (rows, cols as floats; 0, 0 = the upper-left
    corner of the first pixel) on the grid of ``transform``."""
    from rasterio.transform import xy

    xs, ys = xy(
        transform, np.asarray(rows, dtype=float), np.asarray(cols, dtype=float), offset="ul"
    )
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def grid_for_bounds(bounds: tuple[float, float, float, float], width: int):
    """(transform, height) of a north-up grid ``width`` pixels wide over ``bounds`` with square pixels."""
    from rasterio.transform import from_origin

    left, bottom, right, top = bounds
    res = (right - left) / width
    height = max(1, int(round((top - bottom) / res)))
    return from_origin(left, top, res, res), height


def sub_window(
    transform, width: int, height: int, bounds: tuple[float, float, float, float]
) -> object | None:
    """The whole-pixel part of a ``width`` x ``height`` grid covering map ``bounds`` (snapped
    outwards), or None when disjoint."""
    return clip_window(snap_outwards(bounds_window(transform, bounds)), width, height)


def warp_onto(
    src, crs, transform, width: int, height: int, resampling: str = "bilinear", **options
):
    """The one grid reader: an open raster seen on a north-up grid, as a :class:`rasterio.vrt.WarpedVRT`.

    Every reader of a raster onto a grid of the project goes through here: the nightly epochs
    (:class:`detector.night.mosaic.EpochReader`), the DSMs (:class:`detector.geo.dsm.DsmReader`), the
    evidence chips, ``buildwatch ingest`` and the ortho baseline. GDAL's warper reprojects and
    resamples in one pass and picks overviews of ``src`` itself.

    Parameters
    ----------
    src : rasterio dataset
        Open for reading (the caller keeps and closes it).
    crs : str, rasterio CRS or pyproj CRS
        The grid's CRS.
    transform : affine.Affine
        The grid's north-up transform.
    width, height : int
        The grid's size in pixels.
    resampling : str
        A :class:`rasterio.enums.Resampling` name (``"bilinear"``, ``"average"``, ...).
    **options
        Further :class:`~rasterio.vrt.WarpedVRT` options (``nodata``, ``src_nodata``, ``dtype``,
        ``add_alpha``, ``warp_mem_limit``).

    Returns
    -------
    rasterio.vrt.WarpedVRT
        Use it as a context manager, or close it when done.
    """
    from rasterio.crs import CRS as RioCRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if not isinstance(crs, (str, RioCRS)):  # a pyproj CRS
        crs = RioCRS.from_user_input(crs.to_wkt())
    return WarpedVRT(
        src,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        resampling=Resampling[resampling],
        **options,
    )
