"""Plain dataclasses passed between pipeline stages.

flight -> ortho -> align -> tiles -> detections -> changes -> cases -> exports

Pixel coordinates are (x=column, y=row) in the *tile's* pixel grid at the model's working
GSD unless a name says otherwise; map coordinates are in the baseline's CRS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Classes of change a 6-channel (pair) model reports; a 3-channel (single-epoch) model
# reports structures, which the change step turns into ``new_building``.
CHANGE_CLASSES = ("new_building", "extension", "temporary_structure", "construction_site")


@dataclass(frozen=True)
class Tile:
    """One cell of the fixed map grid anchored to the baseline (stable across nights)."""

    tile_id: str  # "r{row}_c{col}" in the grid anchored at the baseline's upper-left corner
    row: int
    col: int
    bounds: tuple[float, float, float, float]  # (left, bottom, right, top) in the baseline CRS
    width: int  # pixels at the working GSD
    height: int


@dataclass
class TilePair:
    """Pixels of one tile in both epochs at the working GSD, plus their validity masks."""

    tile: Tile
    baseline: np.ndarray  # (H, W, 3) uint8
    current: np.ndarray  # (H, W, 3) uint8
    valid: np.ndarray  # (H, W) bool, valid in both epochs


@dataclass
class Registration:
    """Residual shift of current vs baseline for one tile (current moved by -shift to align)."""

    dx_px: float
    dy_px: float
    shift_m: float
    quality: float  # 0..1 (phase-correlation response); low = unreliable
    ok: bool  # False: could not be registered -> tile flagged, no change candidates from it
    reason: str = ""
    source: str = "tile"  # "tile": estimated on this tile; "mosaic": the whole-mosaic estimate was used


@dataclass
class Detection:
    """One model detection in tile pixel coordinates (a rotated rectangle)."""

    cx: float
    cy: float
    w: float
    h: float
    angle: float  # radians, counter-clockwise as ultralytics OBB (0 for axis-aligned)
    confidence: float
    class_name: str

    def corners(self) -> np.ndarray:
        """The four corners, (4, 2) float array of (x, y) in tile pixels."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * [self.w / 2, self.h / 2]
        rot = np.array([[c, -s], [s, c]])
        return half @ rot.T + [self.cx, self.cy]


@dataclass
class Candidate:
    """A change candidate in map coordinates, ready for merging and export."""

    geometry: object  # shapely Polygon in the baseline CRS
    class_name: str
    confidence: float
    tile_id: str
    shift_m: float
    registration_ok: bool = True
    tags: list[str] = field(default_factory=list)  # e.g. "known_building", "permitted:P-17"
    evidence: dict = field(default_factory=dict)  # e.g. pixel-change score, baseline score
