"""The plan of a scene in metres: structures with their lifetimes, trees, roads, ground covers.

:mod:`detector.synth.layout` fills it once per scene; :mod:`detector.synth.render` paints
every epoch from it and :mod:`detector.synth.scene` reads the truth polygons off it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Structure:
    """A building, extension, shed or construction site, present from ``born`` until ``died``."""

    sid: int
    kind: str  # building | extension | temporary_structure | construction_site
    rect: tuple[float, float, float, float, float]  # cx, cy, w, l (metres), angle (rad)
    height: float  # own height above its base, metres
    base: float  # height of what it stands on (0 = ground, parent's height for rooftop)
    roof: str  # concrete | terracotta | dark | blue_steel | white_steel | site
    colour: tuple[float, float, float]
    born: int  # first epoch in which it is present
    died: int | None = None  # first epoch in which it is gone (demolished)
    parent: int | None = None
    truth_class: str | None = None  # class of the change that created it (None = pre-existing)
    clutter: list = field(default_factory=list)
    has_child: bool = False
    texture_seed: int = 0

    @property
    def top(self) -> float:
        """Height of the roof above the ground, metres."""
        return self.base + self.height


@dataclass
class Tree:
    """A tree crown made of overlapping round lobes (metres)."""

    cx: float
    cy: float
    radius: float
    height: float
    lobes: np.ndarray  # (K, 3) dx, dy, r relative to radius


@dataclass
class Plan:
    """Everything that is where, for all epochs of one scene (metres)."""

    side_m: float
    grid_angle: float
    roads: list  # (polygon_m, surface)
    surfaces: list  # (polygon_m, surface, born, died)  ground covers
    structures: list
    trees: list
    car_lanes: list  # (x0, y0, x1, y1, width) metres


def present(st: Structure, epoch: int) -> bool:
    """Whether a structure stands in an epoch.

    Parameters
    ----------
    st : Structure
    epoch : int

    Returns
    -------
    bool
        ``born <= epoch`` and not yet demolished.
    """
    return st.born <= epoch and (st.died is None or st.died > epoch)
