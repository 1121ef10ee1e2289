"""Polygon helpers shared by the planner, the painters and the writers.

Polygons are ``(N, 2)`` float64 arrays of ``(x, y)``, in metres while planning and in
pixels (corner convention) once divided by the ground sample distance. Area and orientation
are shapely's (GEOS); the clip to the image stays hand-written (see :func:`clip_to_square`).
"""

from __future__ import annotations

import math

import numpy as np
import shapely


def rect_polygon(cx: float, cy: float, w: float, l: float, angle: float) -> np.ndarray:
    """Corners of a rotated rectangle: ``w`` along the angle's axis, ``l`` across it.

    The same corners, in the same order, as :func:`detector.types.box_corners`, but not computed
    by it on purpose: that one rotates with a matrix product, whose rounding differs in the last
    bit for about 4 in 5 rectangles (up to 2e-13 m, measured on 200,000 random ones). The
    written scene files stay the same, but the scenes' truth polygons change, and they become
    training labels through ``cv2.minAreaRect`` (see :func:`clip_to_square`), so the synthetic
    datasets would no longer be byte-identical.

    Parameters
    ----------
    cx, cy : float
        Centre.
    w, l : float
        Side along the direction ``angle`` and side across it.
    angle : float
        Rotation in radians (x towards y).

    Returns
    -------
    numpy.ndarray
        ``(4, 2)`` float64 corners.
    """
    c, s = math.cos(angle), math.sin(angle)
    u = np.array([c, s]) * (w / 2)
    v = np.array([-s, c]) * (l / 2)
    centre = np.array([cx, cy])
    return np.array(
        [centre - u - v, centre + u - v, centre + u + v, centre - u + v], dtype=np.float64
    )


def is_ccw(ring: np.ndarray) -> bool:
    """Whether a ring runs counter-clockwise in an x-right, y-up frame (``shapely.is_ccw``).

    Parameters
    ----------
    ring : numpy.ndarray
        ``(N, 2)`` vertices, not closed (the first vertex is not repeated).
    """
    return bool(shapely.is_ccw(shapely.linearrings(ring)))


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned area of a polygon, in squared units of its coordinates (``shapely.area``).

    Parameters
    ----------
    poly : numpy.ndarray
        ``(N, 2)`` vertices (N >= 3), not closed.

    Returns
    -------
    float
    """
    return float(shapely.area(shapely.polygons(poly)))


def clip_to_square(poly: np.ndarray, side: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to ``[0, side]^2``.

    Hand-written on purpose, not ``shapely.clip_by_rect``: GEOS computes the edge crossings
    with other arithmetic (last-bit differences) and returns the ring clockwise from another
    vertex. The clipped footprints become training labels through ``cv2.minAreaRect``, which
    then picks another rectangle for about 1 in 125 edge-cut buildings (measured: corners moved
    by up to 43 px), so the datasets would change. Area and orientation are shapely's.

    Parameters
    ----------
    poly : numpy.ndarray
        ``(N, 2)`` vertices of a convex or simple polygon.
    side : float
        Side of the square.

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` float64 vertices of the clipped polygon (``M`` is 0 when nothing is inside).
    """
    out = [tuple(p) for p in poly]
    for axis, limit, keep_below in (
        (0, 0.0, False),
        (0, side, True),
        (1, 0.0, False),
        (1, side, True),
    ):
        src, out = out, []
        if not src:
            break
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cur_in = cur[axis] <= limit if keep_below else cur[axis] >= limit
            prev_in = prev[axis] <= limit if keep_below else prev[axis] >= limit
            if cur_in != prev_in:
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(prev[k] + t * (cur[k] - prev[k]) for k in range(2)))
            if cur_in:
                out.append(cur)
    return np.clip(np.array(out, dtype=np.float64).reshape(-1, 2), 0.0, side)
