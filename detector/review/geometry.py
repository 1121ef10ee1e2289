"""Polygon IoU for matching cases across nights (areas and WGS84 points: :mod:`detector.geo.crs`)."""

from __future__ import annotations

import shapely
from shapely.geometry.base import BaseGeometry


def iou(a: BaseGeometry, b: BaseGeometry) -> float:
    """Intersection over union of two polygons (0 when either is empty or missing; invalid ones are repaired).

    Parameters
    ----------
    a, b : shapely geometry

    Returns
    -------
    float
    """
    if a is None or b is None or a.is_empty or b.is_empty:
        return 0.0
    a = a if a.is_valid else shapely.make_valid(a)
    b = b if b.is_valid else shapely.make_valid(b)
    inter = a.intersection(b).area
    if inter <= 0:
        return 0.0
    return float(inter / a.union(b).area)
