"""Before/after evidence chips: one PNG per case, baseline and current side by side, polygon drawn.

Pixels are read through a :class:`rasterio.vrt.WarpedVRT` whose output grid is exactly the
chip's grid in the registry CRS, so a mosaic in another CRS, a coarser or finer GSD, or a
chip that runs past the mosaic's edge (filled black) all take the same path, and GDAL picks
overviews instead of reading full-resolution pixels only to throw them away.

With the run's DSM pair (:class:`detector.geo.dsm.DsmPair`) a third panel shows the height
difference on the same grid: current − baseline − the chip's vertical offset (the run's, refined
over the chip's flat ground exactly as a tile refines it, :func:`detector.night.height.local_offset`),
white at 0, red for a gain and blue for a loss, full colour at :data:`HEIGHT_RANGE_M`; grey where
a DSM has no height. The DSMs are read by the run's own reader
(:class:`detector.geo.dsm.DsmReader`: nodata, units). A chip whose DSMs cannot be read keeps
its two image panels (logged).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from shapely.geometry.base import BaseGeometry

from detector.errors import InputError
from detector.fileio import atomic_write_bytes
from detector.geo.crs import unit_lengths_m
from detector.geo.grid import map_to_pixel, warp_onto
from detector.geo.location import as_location, is_remote
from detector.geo.raster import apply_stretch, raster_stretch, rgb_bands

if TYPE_CHECKING:  # pragma: no cover
    from detector.geo.dsm import DsmPair

log = logging.getLogger(__name__)

CHIP_PANEL_PX = 256
HEADER_PX = 22
GAP_PX = 4
MIN_CONTEXT_M = 15.0  # at least this much ground around the polygon
BEFORE_COLOUR = (0, 215, 255)  # BGR: amber
AFTER_COLOUR = (40, 40, 255)  # BGR: red
HEIGHT_RANGE_M = 6.0  # the height panel's colours saturate at +-6 m (two storeys)
HEIGHT_OUTLINE = (0, 0, 0)  # BGR: black (red and blue are the gain and the loss)
HEIGHT_NODATA = (160, 160, 160)  # BGR: grey where a DSM has no height


def read_rgb(
    raster_path: Path, crs, bounds: tuple[float, float, float, float], width: int, height: int
) -> np.ndarray:
    """Read a raster resampled onto the grid ``bounds`` x (``width``, ``height``) in ``crs``.

    Parameters
    ----------
    raster_path : Path
        Any GeoTIFF/COG rasterio opens (1, 3 or more bands; uint8 or wider).
    crs : pyproj.CRS or rasterio CRS
        The CRS of ``bounds``.
    bounds : tuple
        (left, bottom, right, top) in ``crs``.
    width, height : int
        Output size in pixels.

    Returns
    -------
    numpy.ndarray
        (height, width, 3) uint8 RGB; nodata and outside-the-mosaic pixels are black.

    Raises
    ------
    InputError
        The raster is missing, unreadable or has no CRS.
    """
    import rasterio
    from rasterio.transform import from_bounds

    raster_path = as_location(raster_path)
    if not is_remote(raster_path) and not raster_path.exists():
        raise InputError(
            f"{raster_path}: orthomosaic not found (needed for evidence chips and the report map)"
        )
    transform = from_bounds(*bounds, width, height)
    try:
        with rasterio.open(raster_path) as src:
            if src.crs is None:
                raise InputError(f"{raster_path}: raster has no CRS; georeference it first")
            indexes = list(rgb_bands(src.colorinterp, src.count) or (1, 1, 1))
            stretch = raster_stretch(raster_path, indexes)
            nodata = src.nodata
            with warp_onto(src, crs, transform, width, height, "bilinear", nodata=nodata) as vrt:
                pixels = vrt.read(indexes)
                valid = vrt.dataset_mask() > 0
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"{raster_path}: cannot read the orthomosaic ({exc}); check the file"
        ) from None
    return _to_uint8_rgb(pixels, valid, stretch)


def _to_uint8_rgb(pixels: np.ndarray, valid: np.ndarray, stretch=None) -> np.ndarray:
    """(3, H, W) -> (H, W, 3) uint8; wider types with the mosaic's stretch (:mod:`detector.geo.raster`)."""
    rgb = np.ascontiguousarray(np.moveaxis(apply_stretch(pixels, stretch), 0, -1))
    rgb[~valid] = 0
    return rgb


def chip_bounds(geometry: BaseGeometry, crs) -> tuple[float, float, float, float]:
    """A square window around a polygon: its size doubled, at least ``MIN_CONTEXT_M`` of context."""
    minx, miny, maxx, maxy = geometry.bounds
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    half = max(maxx - minx, maxy - miny)  # = twice the half-size: one polygon size of context
    east_m, north_m = unit_lengths_m(crs, cx, cy)
    half = max(half, MIN_CONTEXT_M / north_m)
    half_x = (
        half * north_m / max(east_m, 1e-9)
    )  # square on the ground (degrees of longitude are shorter)
    return cx - half_x, cy - half, cx + half_x, cy + half


def draw_outline(
    image: np.ndarray,
    geometry: BaseGeometry,
    bounds,
    colour: tuple[int, int, int],
    thickness: int = 2,
) -> None:
    """Draw a polygon's rings (map coordinates inside ``bounds``) onto an (H, W, 3) image in place."""
    import cv2
    from rasterio.transform import from_bounds

    height, width = image.shape[:2]
    transform = from_bounds(*bounds, width, height)
    polygons = getattr(geometry, "geoms", [geometry])
    for polygon in polygons:
        if polygon.is_empty or not hasattr(polygon, "exterior"):
            continue
        for ring in [polygon.exterior, *polygon.interiors]:
            xy = np.asarray(ring.coords)[:, :2]
            rows, cols = map_to_pixel(transform, xy[:, 0], xy[:, 1])
            points = np.round(np.column_stack([cols, rows])).astype(np.int32)
            cv2.polylines(
                image,
                [points],
                isClosed=True,
                color=colour,
                thickness=thickness,
                lineType=cv2.LINE_AA,
            )


def height_colours(diff: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR uint8 of a height difference: white at 0, red for a gain, blue for a loss.

    Full red (0, 0, 255) or blue (255, 0, 0) at ``+-HEIGHT_RANGE_M``; a gain ``d`` between has
    blue and green ``round(255 (1 - d / HEIGHT_RANGE_M))``; invalid pixels are :data:`HEIGHT_NODATA`.
    """
    t = np.clip(np.abs(diff) / HEIGHT_RANGE_M, 0.0, 1.0)
    fade = np.round(255.0 * (1.0 - t)).astype(np.uint8)
    full = np.full(diff.shape, 255, np.uint8)
    gain = diff >= 0
    bgr = np.stack([np.where(gain, fade, full), fade, np.where(gain, full, fade)], axis=-1)
    bgr[~valid] = HEIGHT_NODATA
    return bgr


def read_height_difference(
    dsm: DsmPair, crs, bounds: tuple[float, float, float, float], width: int, height: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Current − baseline height (metres) on a chip's grid, the chip's vertical offset removed.

    Parameters
    ----------
    dsm : detector.geo.dsm.DsmPair
        The run's validated DSM pair (paths, units, offset).
    crs : pyproj.CRS
        The CRS of ``bounds``.
    bounds : tuple
        (left, bottom, right, top).
    width, height : int
        Pixels.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, float)
        (H, W) float32 difference (0 where invalid), (H, W) bool validity, the offset removed.

    Raises
    ------
    InputError
        A DSM cannot be read.
    """
    import rasterio
    from rasterio.transform import from_bounds

    from detector.geo.dsm import DsmReader
    from detector.night.height import local_offset

    transform = from_bounds(*bounds, width, height)
    east_m, north_m = unit_lengths_m(crs, (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)
    gsd = (bounds[2] - bounds[0]) * east_m / width
    heights = []
    for info, scale in ((dsm.baseline, dsm.baseline_scale), (dsm.current, dsm.current_scale)):
        try:
            reader = DsmReader(info, crs.to_wkt(), transform, width, height, scale)
            try:
                heights.append(reader.read(0, 0, width, height))
            finally:
                reader.close()
        except (rasterio.errors.RasterioError, OSError) as exc:
            raise InputError(
                f"{info.path}: cannot read the DSM for the evidence chip ({exc})"
            ) from None
    (hb, vb), (hc, vc) = heights
    valid = vb & vc
    offset, _ = (
        local_offset(hb, hc, valid, gsd, dsm) if valid.any() else (dsm.offset_m, dsm.noise_m)
    )
    diff = np.where(valid, hc - hb - offset, 0.0).astype(np.float32)
    return diff, valid, float(offset)


def _label(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.55) -> None:
    import cv2

    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(
        image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )


def _height_panel(geometry: BaseGeometry, crs, bounds, dsm: DsmPair) -> np.ndarray:
    diff, valid, _ = read_height_difference(dsm, crs, bounds, CHIP_PANEL_PX, CHIP_PANEL_PX)
    panel = height_colours(diff, valid)
    draw_outline(panel, geometry, bounds, HEIGHT_OUTLINE)
    _label(panel, "height", (6, CHIP_PANEL_PX - 8))
    _label(panel, f"red +{HEIGHT_RANGE_M:g} m, blue -{HEIGHT_RANGE_M:g} m", (6, 16), 0.4)
    return panel


def render_chip(
    geometry: BaseGeometry,
    crs,
    baseline_path: Path,
    current_path: Path,
    *,
    title: str = "",
    dsm: DsmPair | None = None,
) -> np.ndarray:
    """The evidence image: a title strip over 'before' (baseline) and 'after' (current) panels, BGR uint8.

    With ``dsm`` a third panel, the height difference (module docstring): the image is
    ``HEADER_PX + CHIP_PANEL_PX`` high and ``n * CHIP_PANEL_PX + (n - 1) * GAP_PX`` wide for
    ``n`` = 2 or 3 panels.
    """
    import cv2

    bounds = chip_bounds(geometry, crs)
    panels = []
    for label, path, colour in (
        ("before", baseline_path, BEFORE_COLOUR),
        ("after", current_path, AFTER_COLOUR),
    ):
        rgb = read_rgb(path, crs, bounds, CHIP_PANEL_PX, CHIP_PANEL_PX)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        draw_outline(bgr, geometry, bounds, colour)
        _label(bgr, label, (6, CHIP_PANEL_PX - 8))
        panels.append(bgr)
    if dsm is not None:
        try:
            panels.append(_height_panel(geometry, crs, bounds, dsm))
        except InputError as exc:
            log.warning("evidence chip without its height panel: %s", exc)
    width = len(panels) * CHIP_PANEL_PX + (len(panels) - 1) * GAP_PX
    canvas = np.full((HEADER_PX + CHIP_PANEL_PX, width, 3), 255, dtype=np.uint8)
    for index, panel in enumerate(panels):
        left = index * (CHIP_PANEL_PX + GAP_PX)
        canvas[HEADER_PX:, left : left + CHIP_PANEL_PX] = panel
    if title:
        cv2.putText(
            canvas,
            title,
            (6, HEADER_PX - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            title_scale(title, width - 12),
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas


TITLE_SCALE = 0.45  # the title's font scale when it fits


def title_scale(title: str, width_px: int) -> float:
    """The font scale at which ``title`` fits ``width_px`` (:data:`TITLE_SCALE` or smaller): never cut.

    Parameters
    ----------
    title : str
    width_px : int

    Returns
    -------
    float
    """
    import cv2

    scale = TITLE_SCALE
    while scale > 0.1:  # Hershey text does not scale exactly linearly: shrink until it fits
        (text_px, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if text_px <= width_px:
            break
        scale = min(scale - 0.005, scale * width_px / text_px)
    return scale


def write_png_atomic(path: Path, image_bgr: np.ndarray) -> Path:
    """Encode a BGR image as PNG and write it atomically (temp file in the same folder + rename)."""
    import cv2

    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, encoded.tobytes())


def write_evidence_chip(
    path: Path,
    geometry: BaseGeometry,
    crs,
    baseline_path: Path,
    current_path: Path,
    *,
    title: str = "",
    dsm: DsmPair | None = None,
    within: Path | None = None,
) -> Path:
    """Render and write one case's before/after chip; never outside ``within``.

    Parameters
    ----------
    path : Path
        Target PNG (``evidence/<case_id>.png`` next to the registry).
    geometry : shapely Polygon
        The case polygon in ``crs``.
    crs : pyproj.CRS
        The registry CRS.
    baseline_path, current_path : Path
        The two orthomosaics (any CRS; reprojected on the fly).
    title : str
        Text for the strip above the panels (case ID, date).
    dsm : detector.geo.dsm.DsmPair, optional
        The run's DSM pair: adds the height-difference panel.
    within : Path, optional
        The folder the chip must stay in (the registry's); default: the folder ``path`` names
        before any ``..``.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        ``path`` resolves outside ``within`` (a case ID or ``evidence`` value holding ``../`` or
        an absolute path): nothing is rendered or written.
    """
    path = contained_path(Path(path), within)
    return write_png_atomic(
        path, render_chip(geometry, crs, baseline_path, current_path, title=title, dsm=dsm)
    )


def contained_path(path: Path, within: Path | None = None) -> Path:
    """``path`` if it resolves (``..``, symlinks) inside ``within``, else :class:`InputError`.

    Defence in depth: the config allows no path characters in the strings that make a chip's
    name (:data:`detector.config.FILE_NAME_PART`), and this refuses whatever else would escape
    (an ``evidence`` value edited in the registry). ``within`` None: the folder ``path`` names
    before its first ``..`` (its own folder when it has none).
    """
    from detector.fileio import is_inside

    if within is None:
        parts = path.parts
        within = Path(*parts[: parts.index("..")]) if ".." in parts else path.parent
    if not is_inside(path, within) or Path(os.path.realpath(path)) == Path(
        os.path.realpath(within)
    ):
        raise InputError(
            f"{path}: evidence chip path leads outside {within}; a case ID or the registry's "
            "'evidence' value holds a path: fix it (letters, digits, '_' and '-' only)"
        )
    return path
