"""Geometry measures the registry needs: area in m² in any CRS, WGS84 points, polygon IoU."""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import Geod, Transformer
from shapely.geometry.base import BaseGeometry


def area_m2(geometry: BaseGeometry, crs) -> float:
    """Area in square metres in any CRS (geodesic on the WGS84 ellipsoid for geographic CRSs).

    Parameters
    ----------
    geometry : shapely geometry
    crs : pyproj.CRS
        The geometry's CRS.

    Returns
    -------
    float
    """
    if geometry is None or geometry.is_empty:
        return 0.0
    if crs.is_geographic:
        return abs(Geod(ellps="WGS84").geometry_area_perimeter(geometry)[0])
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(geometry.area * factor * factor)


def lonlat_of(geometries: list[BaseGeometry], crs) -> np.ndarray:
    """WGS84 lon/lat of each geometry's representative point (a point inside the polygon).

    Parameters
    ----------
    geometries : list of shapely geometries
    crs : pyproj.CRS
        Their CRS.

    Returns
    -------
    numpy.ndarray
        (N, 2) lon, lat in degrees.
    """
    if not geometries:
        return np.zeros((0, 2))
    points = np.array([[p.x, p.y] for p in (g.representative_point() for g in geometries)])
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = transformer.transform(points[:, 0], points[:, 1])
    return np.column_stack([lon, lat])


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
