"""Before/after evidence chips: one PNG per case, baseline and current side by side, polygon drawn.

Pixels are read through a :class:`rasterio.vrt.WarpedVRT` whose output grid is exactly the
chip's grid in the registry CRS, so a mosaic in another CRS, a coarser or finer GSD, or a
chip that runs past the mosaic's edge (filled black) all take the same path, and GDAL picks
overviews instead of reading full-resolution pixels only to throw them away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from shapely.geometry.base import BaseGeometry

from detector.errors import InputError
from detector.fileio import atomic_write_bytes
from detector.geo.crs import unit_lengths_m
from detector.geo.grid import map_to_pixel
from detector.geo.raster import apply_stretch, raster_stretch, rgb_bands

CHIP_PANEL_PX = 256
HEADER_PX = 22
GAP_PX = 4
MIN_CONTEXT_M = 15.0  # at least this much ground around the polygon
BEFORE_COLOUR = (0, 215, 255)  # BGR: amber
AFTER_COLOUR = (40, 40, 255)  # BGR: red


def read_rgb(raster_path: Path, crs, bounds: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
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
    from rasterio.crs import CRS as RioCRS
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.vrt import WarpedVRT

    raster_path = Path(raster_path)
    if not raster_path.exists():
        raise InputError(f"{raster_path}: orthomosaic not found (needed for evidence chips and the report map)")
    target_crs = RioCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    transform = from_bounds(*bounds, width, height)
    try:
        with rasterio.open(raster_path) as src:
            if src.crs is None:
                raise InputError(f"{raster_path}: raster has no CRS; georeference it first")
            indexes = list(rgb_bands(src.colorinterp, src.count) or (1, 1, 1))
            stretch = raster_stretch(raster_path, indexes)
            nodata = src.nodata
            with WarpedVRT(src, crs=target_crs, transform=transform, width=width, height=height,
                           resampling=Resampling.bilinear, nodata=nodata) as vrt:
                pixels = vrt.read(indexes)
                valid = vrt.dataset_mask() > 0
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"{raster_path}: cannot read the orthomosaic ({exc}); check the file") from None
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
    half_x = half * north_m / max(east_m, 1e-9)  # square on the ground (degrees of longitude are shorter)
    return cx - half_x, cy - half, cx + half_x, cy + half


def draw_outline(image: np.ndarray, geometry: BaseGeometry, bounds, colour: tuple[int, int, int], thickness: int = 2) -> None:
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
            cv2.polylines(image, [points], isClosed=True, color=colour, thickness=thickness, lineType=cv2.LINE_AA)


def render_chip(geometry: BaseGeometry, crs, baseline_path: Path, current_path: Path, *, title: str = "") -> np.ndarray:
    """The evidence image: a title strip over 'before' (baseline) and 'after' (current) panels, BGR uint8."""
    import cv2

    bounds = chip_bounds(geometry, crs)
    panels = []
    for label, path, colour in (("before", baseline_path, BEFORE_COLOUR), ("after", current_path, AFTER_COLOUR)):
        rgb = read_rgb(path, crs, bounds, CHIP_PANEL_PX, CHIP_PANEL_PX)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        draw_outline(bgr, geometry, bounds, colour)
        cv2.putText(bgr, label, (6, CHIP_PANEL_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bgr, label, (6, CHIP_PANEL_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(bgr)
    width = 2 * CHIP_PANEL_PX + GAP_PX
    canvas = np.full((HEADER_PX + CHIP_PANEL_PX, width, 3), 255, dtype=np.uint8)
    canvas[HEADER_PX:, :CHIP_PANEL_PX] = panels[0]
    canvas[HEADER_PX:, CHIP_PANEL_PX + GAP_PX:] = panels[1]
    if title:
        cv2.putText(canvas, title[:70], (6, HEADER_PX - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_png_atomic(path: Path, image_bgr: np.ndarray) -> Path:
    """Encode a BGR image as PNG and write it atomically (temp file in the same folder + rename)."""
    import cv2

    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, encoded.tobytes())


def write_evidence_chip(
    path: Path, geometry: BaseGeometry, crs, baseline_path: Path, current_path: Path, *, title: str = ""
) -> Path:
    """Render and write one case's before/after chip.

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

    Returns
    -------
    Path
    """
    return write_png_atomic(Path(path), render_chip(geometry, crs, baseline_path, current_path, title=title))
