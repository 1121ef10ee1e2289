"""What a synthetic scene is: images of every epoch plus exact footprints and change truth.

All polygons are ``(N, 2)`` float64 pixel arrays of ``(x=column, y=row)`` in the **baseline
(epoch 0) pixel frame**, corner convention (see :mod:`detector.synth.scene`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np


@dataclass
class Footprint:
    """One structure present in an epoch (pixel polygon in the baseline frame)."""

    structure_id: int
    kind: str  # "building" | "extension" | "temporary_structure" | "construction_site"
    polygon: np.ndarray  # (N, 2) float64 (x, y) pixel coords, corner convention


@dataclass
class ChangeTruth:
    """One change between epoch t and t + 1 (pixel polygon in the baseline frame)."""

    cls: str  # one of CHANGE_CLASSES
    polygon: np.ndarray
    structure_id: int


@dataclass
class Scene:
    """A rendered scene: ``epochs[0]`` is the baseline, ``changes[t]`` lead from t to t + 1."""

    seed: int
    size: int
    gsd: float
    epochs: list[np.ndarray]  # T + 1 images, (size, size, 3) uint8 RGB
    footprints: list[list[Footprint]]  # per epoch
    changes: list[list[ChangeTruth]]  # per transition (len T)
    demolished: list[list[Footprint]]  # per transition: structures removed (not cases)
    shifts: list[tuple[float, float]] = field(default_factory=list)  # per epoch, pixels
    sun: list[tuple[float, float]] = field(
        default_factory=list
    )  # per epoch (azimuth deg, elevation deg)
    dates: list[date] = field(default_factory=list)  # per epoch
    dsms: list[np.ndarray] = field(
        default_factory=list
    )  # per epoch (size, size) float32 metres; opt-in (dsm=True)
