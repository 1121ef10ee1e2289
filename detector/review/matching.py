"""Matching one night's candidates to the registry's cases (pure geometry, no storage)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

from detector.review.geometry import iou


@dataclass
class Sighting:
    """A candidate of tonight matched to a case (existing or opened tonight)."""

    candidate_index: int
    iou: float


def match_candidates(
    geometries: list[BaseGeometry],
    confidences: np.ndarray,
    case_shapes: Sequence[tuple[BaseGeometry | None, BaseGeometry | None]],
    match_iou: float,
) -> tuple[dict[int, list[Sighting]], list[list[Sighting]]]:
    """Assign every candidate to an existing case, or group it into a new case.

    Candidates are visited by decreasing confidence; a candidate joins the existing case (or
    the new group opened earlier tonight) with the highest IoU >= ``match_iou``, compared to
    both the case's current geometry and the geometry the run last detected for it.

    Parameters
    ----------
    geometries : list of shapely polygons
        Tonight's candidates, in the registry CRS.
    confidences : numpy.ndarray
        Their confidences.
    case_shapes : sequence of (geometry, detected geometry)
        One pair per existing case (either may be None or empty).
    match_iou : float
        The minimum IoU of a match.

    Returns
    -------
    matches : dict[int, list[Sighting]]
        index into ``case_shapes`` -> sightings.
    groups : list[list[Sighting]]
        one list per new case; the first sighting is its strongest candidate.
    """
    reference_geoms: list[BaseGeometry] = []
    reference_case: list[int] = []
    for index, shapes in enumerate(case_shapes):
        for geom in shapes:
            if geom is not None and not geom.is_empty:
                reference_geoms.append(geom)
                reference_case.append(index)
    tree = STRtree(reference_geoms) if reference_geoms else None

    matches: dict[int, list[Sighting]] = {}
    groups: list[list[Sighting]] = []
    group_geoms: list[BaseGeometry] = []
    for cand in sorted(range(len(geometries)), key=lambda i: -float(confidences[i])):
        geom = geometries[cand]
        best_case, best_iou = None, 0.0
        if tree is not None:
            for ref in tree.query(geom):
                score = iou(geom, reference_geoms[ref])
                if score >= match_iou and score > best_iou:
                    best_case, best_iou = reference_case[ref], score
        best_group, best_group_iou = None, 0.0
        for g_index, g_geom in enumerate(group_geoms):
            score = iou(geom, g_geom)
            if score >= match_iou and score > best_group_iou:
                best_group, best_group_iou = g_index, score
        if best_case is not None and best_iou >= best_group_iou:
            matches.setdefault(best_case, []).append(Sighting(cand, best_iou))
        elif best_group is not None:
            groups[best_group].append(Sighting(cand, best_group_iou))
        else:
            groups.append([Sighting(cand, 1.0)])
            group_geoms.append(geom)
    return matches, groups


def reading_order(geometry: BaseGeometry) -> tuple[float, float]:
    """Sort key for numbering new cases: north to south, then west to east (by centroid).

    Parameters
    ----------
    geometry : shapely geometry

    Returns
    -------
    (float, float)
    """
    point = geometry.centroid
    return (-round(point.y, 6), round(point.x, 6))
