"""Plain dataclasses passed between pipeline stages.

flight -> ortho -> align -> tiles -> detections -> changes -> cases -> exports

Pixel coordinates are (x=column, y=row) in the *tile's* pixel grid at the model's working
GSD unless a name says otherwise; map coordinates are in the baseline's CRS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import numpy as np

# Classes of change a 6-channel (pair) model reports; a 3-channel (single-epoch) model
# reports structures, which the change step turns into ``new_building``.
CHANGE_CLASSES = ("new_building", "extension", "temporary_structure", "construction_site")


@dataclass(frozen=True)
class Tile:
    """One tile of the fixed grid anchored at the map origin of the working CRS (stable across
    nights; see :mod:`detector.night.tiles`)."""

    tile_id: str  # "c{col}_r{row}": world cell indices from the working CRS's origin (rows count southwards)
    row: int
    col: int
    bounds: tuple[
        float, float, float, float
    ]  # (left, bottom, right, top) in the working CRS, incl. the overlap
    width: int  # pixels at the working GSD
    height: int


@dataclass
class Registration:
    """How one tile's current epoch lines up with the baseline (see :mod:`detector.night.align`).

    The current epoch's content at baseline tile pixel (x, y) sits at ``matrix @ (x, y, 1)``;
    ``dx_px, dy_px`` is that displacement at the tile centre.
    """

    dx_px: float
    dy_px: float
    shift_m: float
    quality: float  # 0..1: distinctiveness of the tile's own correlation peak; low = unreliable
    ok: bool  # False: could not be registered -> tile flagged, no change candidates from it
    reason: str = ""
    # "tile": the tile's own estimate (checked against the mosaic model); "mosaic": the mosaic
    # model; "georef": nothing usable, the georeferencing is trusted (align.on_failure: georef);
    # "none": alignment disabled
    source: str = "tile"
    matrix: tuple | None = None  # 2x3 affine in tile pixels; None = pure shift (dx_px, dy_px)
    residual_m: float = 0.0  # the tile's own estimate minus the mosaic model, at the tile centre
    inliers: int = 0  # blocks that agree with the mosaic model (0: no model)


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
        """The four corners, (4, 2) float array of (x, y) in tile pixels (:func:`box_corners`)."""
        return box_corners([[self.cx, self.cy, self.w, self.h, self.angle]])[0]


def box_corners(boxes) -> np.ndarray:
    """The one rotated-box geometry: (N, 5+) cx, cy, w, h, angle -> (N, 4, 2) corners (x, y).

    The angle is in radians, counter-clockwise as ultralytics OBB; corners go (-w/2, -h/2),
    (+w/2, -h/2), (+w/2, +h/2), (-w/2, +h/2) about the centre, rotated. Used for detections
    (:meth:`Detection.corners`), rotated NMS and overlaps (:mod:`detector.night.detect`).
    """
    boxes = np.asarray(boxes, dtype=float)
    cx, cy, w, h, angle = boxes.reshape(-1, boxes.shape[-1])[
        :, :5
    ].T  # further columns (score, class) ignored
    c, s = np.cos(angle), np.sin(angle)
    half = (
        np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)[None]
        * np.stack([w / 2, h / 2], -1)[:, None, :]
    )
    rot_t = np.stack(
        [np.stack([c, s], -1), np.stack([-s, c], -1)], 1
    )  # each box's rotation, transposed
    return half @ rot_t + np.stack([cx, cy], -1)[:, None, :]


@dataclass(kw_only=True)
class Candidate:
    """A change candidate: one row of the ``candidates`` layer of ``candidates.gpkg``.

    The one candidate schema: the fields, in order, are the layer's columns
    (:data:`CANDIDATE_COLUMNS`; ``class_name`` is written as ``class``), plus the geometry.
    A tile worker fills the detection fields (``geometry`` in the working CRS, ``class_name``,
    ``confidence``, ``pixel_change``, ``baseline_iou``, ``tile_id``); the run fills the rest
    when it turns the merged candidates into output rows (``geometry`` then in the baseline CRS).

    Attributes
    ----------
    candidate_id : str
        Derived from class and location: the same structure gets the same ID on a rerun.
    class_name : str
        One of :data:`CHANGE_CLASSES`; column ``class``.
    confidence : float
        Model confidence, rounded to 4 decimals.
    area_m2, lon, lat : float
        Footprint area and WGS84 centroid.
    tile_id : str
        The tile that owns the detection's centre.
    baseline_date, current_date : str
        ISO dates of the epochs, ``""`` when unknown.
    shift_m : float
        Registration shift applied to the tile.
    model_name, model_sha256, run_id : str
        Provenance.
    model_version : str
        The model registry version that found it (``""``: a model given by path, or the shipped one).
    status : str
        ``"new"``.
    tags : str
        Comma-separated, e.g. ``"permitted:P-17,known_building"`` (set by exclusion layers).
    pixel_change : float
        Share of the footprint whose pixels changed.
    baseline_iou : float
        Single-epoch models and the second view: best overlap with a baseline structure.
    structure_conf : float
        With a second view (``detect.second_view``): the building model's confidence that tonight's
        image shows a structure there (0: none); None (NULL) without a second view.
    height_gain_m, baseline_height_m, current_height_m : float
        With a DSM pair (:mod:`detector.night.height`): median height gain over the footprint,
        and its height above the ground before and now, metres; None (NULL) without DSMs or
        where they do not cover the candidate.
    geometry : object
        shapely Polygon (not a column: the layer's geometry).
    """

    candidate_id: str = ""
    class_name: str = field(metadata={"column": "class"})
    confidence: float
    area_m2: float = 0.0
    lon: float = 0.0
    lat: float = 0.0
    tile_id: str = ""
    baseline_date: str = ""
    current_date: str = ""
    shift_m: float = 0.0
    model_name: str = ""
    model_sha256: str = ""
    run_id: str = ""
    status: str = "new"
    tags: str = ""
    pixel_change: float = 0.0
    baseline_iou: float = 0.0
    structure_conf: float | None = None
    height_gain_m: float | None = None
    baseline_height_m: float | None = None
    current_height_m: float | None = None
    model_version: str = ""
    geometry: object = field(default=None, metadata={"column": None})

    def row(self) -> dict:
        """Attributes keyed by column name, in column order (no geometry)."""
        return {col: getattr(self, name) for name, col in _CANDIDATE_COLUMN_OF.items()}

    @classmethod
    def from_row(cls, row: dict, geometry=None) -> Candidate:
        """Inverse of :meth:`row`; columns absent from ``row`` keep their defaults."""
        return cls(
            geometry=geometry,
            **{name: row[col] for name, col in _CANDIDATE_COLUMN_OF.items() if col in row},
        )


# field name -> column name, in column order
_CANDIDATE_COLUMN_OF = {
    f.name: f.metadata.get("column", f.name)
    for f in fields(Candidate)
    if f.metadata.get("column", f.name) is not None
}

#: Columns of the ``candidates`` layer, in order (derived from :class:`Candidate`).
CANDIDATE_COLUMNS: tuple[str, ...] = tuple(_CANDIDATE_COLUMN_OF.values())

#: Real-valued columns that may be NULL (written as REAL even when every row is NULL).
NULLABLE_REAL_COLUMNS: tuple[str, ...] = (
    "structure_conf",
    "height_gain_m",
    "baseline_height_m",
    "current_height_m",
)


@dataclass
class TileResult:
    """What processing one tile gives: its status, registration and candidates (working CRS)."""

    tile_id: str
    status: str  # "done" | "nodata" | "unregistered"
    valid_fraction: float
    covered_m2: float
    dx_m: float = 0.0
    dy_m: float = 0.0
    shift_m: float = 0.0
    quality: float = 0.0
    reason: str = ""
    candidates: list[Candidate] = field(
        default_factory=list
    )  # detection fields filled, geometry in the working CRS
    seconds: float = 0.0
    registration: str = (
        "tile"  # Registration.source: "tile" | "mosaic" | "georef" | "none" (alignment disabled)
    )
    residual_m: float = 0.0  # the tile's own estimate minus the mosaic model
    inliers: int = 0  # blocks agreeing with the mosaic model (0: no model)
    move_m: float | None = (
        None  # the night's move at the tile: the mosaic model's shift there (None: none found)
    )

    def to_json(self) -> str:
        """The per-tile work file: attributes, candidates as their rows plus ``wkt``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["candidates"] = [{"wkt": c.geometry.wkt, **c.row()} for c in self.candidates]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> TileResult:
        """Inverse of :meth:`to_json`."""
        import shapely

        data = json.loads(text)
        data["candidates"] = [
            Candidate.from_row({"tile_id": data["tile_id"], **row}, shapely.from_wkt(row["wkt"]))
            for row in data.get("candidates", [])
        ]
        return cls(**data)
