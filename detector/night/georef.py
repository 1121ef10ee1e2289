"""Map polygons -> output geometry, areas, WGS84 centroids, location-derived IDs, and merging of
duplicates from overlapping tiles (tile pixels become map polygons in :mod:`detector.night.tile`)."""

from __future__ import annotations

import hashlib

import numpy as np

from detector.geo.crs import area_m2, lonlat_of
from detector.geo.grid import WorkingGrid

CLASS_CODES = {
    "new_building": "NB",
    "extension": "EX",
    "temporary_structure": "TS",
    "construction_site": "CS",
}


def candidate_id(class_name: str, x: float, y: float, crs_wkt: str) -> str:
    """Location-derived ID: the same structure at the same place gets the same ID on a rerun."""
    key = f"{crs_wkt}|{class_name}|{x:.1f}|{y:.1f}".encode()
    return f"{CLASS_CODES.get(class_name, 'XX')}-{hashlib.sha1(key).hexdigest()[:10]}"


def merge_duplicates(
    geoms: list,
    classes: list[str],
    scores: list[float],
    iou: float,
    ioa: float,
    cross_class_iou: float = 0.6,
) -> list[int]:
    """Greedy merge in map coordinates: keep the most confident of each overlapping group.

    Two polygons of the same class are duplicates when IoU > ``iou`` or intersection over the
    smaller area > ``ioa`` (the same structure seen from two tiles). Polygons of different classes
    are kept apart (an extension touching its parent building is two findings) unless they are
    the same outline, IoU > ``cross_class_iou``: one structure whose class the model hesitated on.
    Returns the indices kept.
    """
    import shapely

    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    if len(order) == 0:
        return []
    arr = np.asarray(geoms, dtype=object)
    tree = shapely.STRtree(arr)
    areas = shapely.area(arr)
    removed = np.zeros(len(arr), dtype=bool)
    kept: list[int] = []
    for i in order:
        if removed[i]:
            continue
        kept.append(int(i))
        for j in tree.query(arr[i], predicate="intersects"):
            if j == i or removed[j]:
                continue
            inter = shapely.area(shapely.intersection(arr[i], arr[j]))
            overlap = inter / max(areas[i] + areas[j] - inter, 1e-9)
            if classes[j] != classes[i]:
                removed[j] = overlap > cross_class_iou
            elif overlap > iou or inter / max(min(areas[i], areas[j]), 1e-9) > ioa:
                removed[j] = True
    return kept


def to_output(geoms_work: list, grid: WorkingGrid):
    """Working-CRS polygons -> (polygons in the baseline CRS, lon array, lat array, area_m2 array)."""
    import shapely
    from pyproj import CRS, Transformer

    arr = np.asarray(geoms_work, dtype=object)
    work = CRS.from_wkt(grid.crs_wkt)
    out = CRS.from_wkt(grid.output_crs_wkt)
    areas = area_m2(arr, work)
    lon, lat = lonlat_of(arr, work, point="centroid").T
    if work == out:
        out_geoms = arr
    else:
        to_out = Transformer.from_crs(work, out, always_xy=True)
        out_geoms = shapely.transform(
            arr, lambda xy: np.column_stack(to_out.transform(xy[:, 0], xy[:, 1]))
        )
    return list(out_geoms), np.asarray(lon), np.asarray(lat), np.asarray(areas)
