"""Synthetic bi-temporal drone scenes of an urban village, with exact change truth.

A scene is planned once in metres (roads, dense buildings, gardens, trees, a graded block,
and the changes of every night), then rendered per epoch at any ground sample distance.
Changes (``truth``) are the four :data:`detector.types.CHANGE_CLASSES`; distractors that
are *not* changes are rendered too: illumination / season shift, a different sun (shadow
direction and length), moved cars, vegetation growth, global misregistration, sensor noise
and JPEG artefacts, and demolished buildings (listed in ``Scene.demolished``).

Coordinates
    Pixel polygons are ``(N, 2)`` float64 arrays of ``(x=column, y=row)``; ``(0, 0)`` is
    the top-left *corner* of pixel ``(0, 0)``. All polygons of all epochs are given in the
    **baseline (epoch 0) pixel frame**. Epoch ``e >= 1`` is rendered in that frame and then
    shifted by ``Scene.shifts[e] = (dx, dy)`` pixels (content at baseline pixel ``p``
    appears at ``p + (dx, dy)``), so the misregistration is a residual error an aligner must
    find, exactly as with two real orthomosaics sharing one georeference.

Only numpy, cv2 and the standard library are imported at module level (the training
machine has no GDAL); the GeoTIFF / GeoJSON writers import rasterio and pyproj lazily.
Same seed => same bytes (every random draw comes from seeded ``numpy`` generators).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import cv2
import numpy as np

from detector.fileio import atomic_path, atomic_write_bytes

CHANGE_CLASSES = ("new_building", "extension", "temporary_structure", "construction_site")
BASELINE_DATE = date(2026, 5, 1)  # epoch e is dated BASELINE_DATE + e days
EPOCH_TIME = "10:00:00"  # local time written into TIFFTAG_DATETIME
DEFAULT_CRS = "EPSG:4547"
DEFAULT_CENTER_LONLAT = (114.25, 22.72)

_GRID_CELL_M = 0.5  # occupancy grid used while planning
_FREE, _ROAD, _STRUCTURE, _RESERVED, _TREE = 0, 1, 2, 3, 4


# --------------------------------------------------------------------------- public types
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
    sun: list[tuple[float, float]] = field(default_factory=list)  # per epoch (azimuth deg, elevation deg)
    dates: list[date] = field(default_factory=list)  # per epoch


# --------------------------------------------------------------------------- plan (metres)
@dataclass
class _Structure:
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
        return self.base + self.height


@dataclass
class _Tree:
    cx: float
    cy: float
    radius: float
    height: float
    lobes: np.ndarray  # (K, 3) dx, dy, r relative to radius


@dataclass
class _Plan:
    side_m: float
    grid_angle: float
    roads: list  # (polygon_m, surface)
    surfaces: list  # (polygon_m, surface, born, died)  ground covers
    structures: list
    trees: list
    car_lanes: list  # (x0, y0, x1, y1, width) metres


def _rect_polygon(cx: float, cy: float, w: float, l: float, angle: float) -> np.ndarray:
    """Corners of a rotated rectangle: ``w`` along the angle's axis, ``l`` across it."""
    c, s = math.cos(angle), math.sin(angle)
    u = np.array([c, s]) * (w / 2)
    v = np.array([-s, c]) * (l / 2)
    centre = np.array([cx, cy])
    return np.array([centre - u - v, centre + u - v, centre + u + v, centre - u + v], dtype=np.float64)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _clip_to_square(poly: np.ndarray, side: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to ``[0, side]^2``."""
    out = [tuple(p) for p in poly]
    for axis, limit, keep_below in ((0, 0.0, False), (0, side, True), (1, 0.0, False), (1, side, True)):
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


class _Occupancy:
    """Coarse raster of what is where, used to place objects without overlaps."""

    def __init__(self, side_m: float):
        self.n = int(math.ceil(side_m / _GRID_CELL_M))
        self.side = side_m
        self.grid = np.zeros((self.n, self.n), np.uint8)

    def _mask(self, poly_m: np.ndarray):
        pts = poly_m / _GRID_CELL_M - 0.5
        x0, y0 = np.floor(pts.min(0)).astype(int) - 1
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
        x0c, y0c, x1c, y1c = max(x0, 0), max(y0, 0), min(x1, self.n), min(y1, self.n)
        if x0c >= x1c or y0c >= y1c:
            return None
        mask = np.zeros((y1c - y0c, x1c - x0c), np.uint8)
        cv2.fillPoly(mask, [np.round((pts - [x0c, y0c]) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        return (slice(y0c, y1c), slice(x0c, x1c)), mask.astype(bool)

    def is_free(self, poly_m: np.ndarray, allowed: tuple = (_FREE,)) -> bool:
        got = self._mask(poly_m)
        if got is None:
            return False
        roi, mask = got
        return bool(np.isin(self.grid[roi][mask], allowed).all())

    def mark(self, poly_m: np.ndarray, value: int) -> None:
        got = self._mask(poly_m)
        if got is not None:
            roi, mask = got
            self.grid[roi][mask] = value


_ROOF_STYLES = ("concrete", "terracotta", "dark", "blue_steel", "white_steel")
_ROOF_WEIGHTS = np.array([0.52, 0.17, 0.11, 0.10, 0.10])


def _roof_colour(rng: np.random.Generator, style: str) -> tuple[float, float, float]:
    if style == "concrete":
        g = rng.uniform(120, 185)
        warm = rng.uniform(-6, 10)
        return (g + warm, g + warm / 3, g - warm / 2)
    if style == "terracotta":
        return (rng.uniform(150, 195), rng.uniform(70, 100), rng.uniform(50, 70))
    if style == "dark":
        g = rng.uniform(55, 85)
        return (g, g + 2, g + 6)
    if style == "blue_steel":
        return (rng.uniform(30, 60), rng.uniform(90, 125), rng.uniform(165, 205))
    if style == "white_steel":
        g = rng.uniform(205, 232)
        return (g, g + 2, g + 4)
    return (rng.uniform(185, 205), rng.uniform(100, 115), rng.uniform(52, 66))  # red-brown cleared soil


def _contrasting_style(rng: np.random.Generator, parent: _Structure) -> str:
    """A roof style that differs clearly from the parent's (rooftop additions stand out)."""
    options = [s for s in ("blue_steel", "white_steel", "terracotta", "concrete", "dark") if s != parent.roof]
    if parent.roof in ("concrete", "white_steel"):
        options = [s for s in options if s not in ("concrete", "white_steel")]
    return options[int(rng.integers(len(options)))]


def _make_clutter(rng: np.random.Generator, w: float, l: float) -> list:
    """Water tanks, AC units and a stair housing on a flat roof (roof-local metres)."""
    items = []
    if w < 5 or l < 5:
        return items
    if rng.random() < 0.7:  # stair housing
        sw, sl = rng.uniform(2.2, 3.2), rng.uniform(2.5, 3.5)
        items.append(("stair", rng.uniform(-w / 2 + sw / 2 + 0.4, w / 2 - sw / 2 - 0.4),
                      rng.uniform(-l / 2 + sl / 2 + 0.4, l / 2 - sl / 2 - 0.4), sw, sl, 2.4))
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.45, 0.8)
        items.append(("tank", rng.uniform(-w / 2 + r + 0.4, w / 2 - r - 0.4),
                      rng.uniform(-l / 2 + r + 0.4, l / 2 - r - 0.4), r, int(rng.integers(4)), 1.3))
    for _ in range(int(rng.integers(0, 5))):
        items.append(("ac", rng.uniform(-w / 2 + 0.8, w / 2 - 0.8), rng.uniform(-l / 2 + 0.6, l / 2 - 0.6),
                      0.9, 0.6, 0.6))
    return items


class _Planner:
    """Lays out one scene in metres and decides every night's changes."""

    def __init__(self, rng: np.random.Generator, side_m: float, nights: int, options: dict):
        self.rng = rng
        self.side = side_m
        self.nights = nights
        self.options = options
        self.occ = _Occupancy(side_m)
        self.structures: list[_Structure] = []
        self.roads: list = []
        self.surfaces: list = []
        self.trees: list[_Tree] = []
        self.car_lanes: list = []
        self.yard_slots: list = []  # rects left empty in dense blocks
        self.graded_block = None
        self.gardens: list = []  # (u0, v0, u1, v1) of garden blocks; construction sites clear them
        self.angle = float(rng.choice([0.0, rng.uniform(-0.35, 0.35)]))

    # ---- helpers
    def _to_world(self, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        h = self.side / 2
        return (h + c * u - s * v, h + s * u + c * v)

    def _inside(self, poly: np.ndarray, margin: float = 0.0) -> bool:
        return bool((poly >= margin).all() and (poly <= self.side - margin).all())

    def _touches_scene(self, poly: np.ndarray) -> bool:
        return bool((poly.max(0) > 0).all() and (poly.min(0) < self.side).all())

    def _new_id(self) -> int:
        return len(self.structures) + 1

    def _add(self, **kw) -> _Structure:
        st = _Structure(sid=self._new_id(), texture_seed=int(self.rng.integers(1 << 31)), **kw)
        self.structures.append(st)
        return st

    # ---- layout
    def layout(self) -> None:
        rng = self.rng
        half = self.side * 0.75 + 20
        us = self._road_positions(-half, half, 34, 58)
        vs = self._road_positions(-half, half, 30, 50)
        widths_u = [rng.choice([rng.uniform(6, 9), rng.uniform(3, 4.5)], p=[0.4, 0.6]) for _ in us]
        widths_v = [rng.choice([rng.uniform(6, 9), rng.uniform(3, 4.5)], p=[0.4, 0.6]) for _ in vs]
        for u, w in zip(us, widths_u):
            self._add_road(u, None, w, half)
        for v, w in zip(vs, widths_v):
            self._add_road(None, v, w, half)
        blocks = []
        for i in range(len(us) - 1):
            for j in range(len(vs) - 1):
                u0, u1 = us[i] + widths_u[i] / 2, us[i + 1] - widths_u[i + 1] / 2
                v0, v1 = vs[j] + widths_v[j] / 2, vs[j + 1] - widths_v[j + 1] / 2
                poly = np.array([self._to_world(u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))])
                if self._touches_scene(poly):
                    blocks.append((u0, v0, u1, v1, poly))
        order = rng.permutation(len(blocks))
        inside = [k for k in order if self._inside(blocks[k][4], 2.0)
                  and blocks[k][2] - blocks[k][0] >= 24 and blocks[k][3] - blocks[k][1] >= 22]
        graded = inside[0] if inside and self.side >= 110 and self.options.get("block_development", True) else None
        n_open = max(1, int(round(len(blocks) * 0.12)))
        centred = [k for k in order if k != graded and self._inside(blocks[k][4].mean(0, keepdims=True), 8.0)]
        open_blocks = (centred + [k for k in order if k != graded and k not in centred])[:n_open]
        for k, (u0, v0, u1, v1, poly) in enumerate(blocks):
            if k == graded:
                self._graded_block(u0, v0, u1, v1, poly)
            elif k in open_blocks:
                self._garden_block(u0, v0, u1, v1, poly)
            else:
                self._dense_block(u0, v0, u1, v1)

    def _road_positions(self, lo: float, hi: float, step_lo: float, step_hi: float) -> list:
        pos, x = [], lo + self.rng.uniform(0, step_hi)
        while x < hi:
            pos.append(x)
            x += self.rng.uniform(step_lo, step_hi)
        return pos

    def _add_road(self, u, v, width: float, half: float) -> None:
        if u is not None:
            a, b = self._to_world(u, -half), self._to_world(u, half)
        else:
            a, b = self._to_world(-half, v), self._to_world(half, v)
        length = 2 * half
        cx, cy = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        ang = math.atan2(b[1] - a[1], b[0] - a[0])
        poly = _rect_polygon(cx, cy, length, width, ang)
        surface = "asphalt" if width > 5 else "lane"
        self.roads.append((poly, surface))
        self.occ.mark(poly, _ROAD)
        if width > 5:
            self.car_lanes.append((a[0], a[1], b[0], b[1], width))

    def _building(self, cx, cy, w, l, angle, born=0, truth_class=None, kind="building", style=None,
                  height=None, base=0.0, parent=None) -> _Structure:
        rng = self.rng
        style = style or str(rng.choice(_ROOF_STYLES, p=_ROOF_WEIGHTS))
        if height is None:
            height = 3.0 * int(rng.choice([2, 3, 4, 5, 6, 7], p=[0.2, 0.25, 0.25, 0.15, 0.1, 0.05])) + rng.uniform(0, 1)
        clutter = _make_clutter(rng, w, l) if style in ("concrete", "dark") and kind == "building" else []
        return self._add(kind=kind, rect=(cx, cy, w, l, angle), height=height, base=base, roof=style,
                         colour=_roof_colour(rng, style), born=born, parent=parent,
                         truth_class=truth_class, clutter=clutter)

    def _dense_block(self, u0, v0, u1, v1) -> None:
        rng = self.rng
        v = v0 + rng.uniform(0.3, 1.5)
        while v < v1 - 5:
            depth = min(rng.uniform(8, 14), v1 - v - 0.3)
            if depth < 5.5:
                break
            u = u0 + rng.uniform(0.3, 1.5)
            while u < u1 - 5:
                width = min(rng.uniform(6, 16) if rng.random() > 0.12 else rng.uniform(16, 25), u1 - u - 0.3)
                if width < 5.5:
                    break
                jitter = rng.uniform(-0.03, 0.03)
                cx, cy = self._to_world(u + width / 2, v + depth / 2)
                w_b, l_b = width * rng.uniform(0.92, 1.0), depth * rng.uniform(0.92, 1.0)
                poly = _rect_polygon(cx, cy, w_b, l_b, self.angle + jitter)
                if self._touches_scene(poly):
                    if rng.random() < 0.14:
                        self.yard_slots.append((cx, cy, width, depth))
                        self.surfaces.append((poly, "yard", 0, None))
                    elif self.occ.is_free(poly, (_FREE,)):
                        self._building(cx, cy, w_b, l_b, self.angle + jitter)
                        self.occ.mark(poly, _STRUCTURE)
                u += width + rng.uniform(0.3, 1.4)
            v += depth + rng.uniform(0.8, 2.6)

    def _garden_block(self, u0, v0, u1, v1, poly) -> None:
        self.surfaces.append((poly, "garden", 0, None))
        self.gardens.append((u0, v0, u1, v1))
        rng = self.rng
        houses = int(rng.integers(0, 3)) if len(self.gardens) > 1 else 0  # the first garden stays open
        for _ in range(houses):  # a few detached houses
            w, l = rng.uniform(7, 13), rng.uniform(7, 12)
            cu, cv = rng.uniform(u0 + w / 2 + 1, u1 - w / 2 - 1), rng.uniform(v0 + l / 2 + 1, v1 - l / 2 - 1)
            cx, cy = self._to_world(cu, cv)
            rect = _rect_polygon(cx, cy, w + 2, l + 2, self.angle)
            if self.occ.is_free(rect):
                self._building(cx, cy, w, l, self.angle)
                self.occ.mark(rect, _STRUCTURE)

    def _graded_block(self, u0, v0, u1, v1, poly) -> None:
        self.graded_block = (u0, v0, u1, v1)
        self.surfaces.append((poly, "graded", 0, None))
        self.occ.mark(poly, _RESERVED)

    # ---- changes
    def plan_changes(self) -> None:
        rng = self.rng
        area = self.side ** 2
        dev_night = int(rng.integers(1, self.nights + 1)) if self.graded_block else None
        for night in range(1, self.nights + 1):
            extra = int(round(area / 10000 * rng.uniform(0.6, 2.0)))
            classes = list(CHANGE_CLASSES) + list(rng.choice(CHANGE_CLASSES, size=extra, p=[0.35, 0.3, 0.2, 0.15]))
            if night == dev_night:
                self._develop_block(night)
            for cls in classes:
                placed = {
                    "new_building": self._place_new_building,
                    "extension": self._place_extension,
                    "temporary_structure": self._place_shed,
                    "construction_site": self._place_site,
                }[cls](night)
                if not placed and cls == "construction_site":
                    self._place_new_building(night)
            self._promote_sites(night)
            self._demolish(night)

    def _free_rect(self, w_range, l_range, tries=250, margin=1.0, buffer=0.8, slots_first=True, in_gardens=False):
        rng = self.rng
        for k in range(tries):
            w, l = rng.uniform(*w_range), rng.uniform(*l_range)
            if in_gardens and self.gardens and k < tries // 2:
                u0, v0, u1, v1 = self.gardens[int(rng.integers(len(self.gardens)))]
                cx, cy = self._to_world(rng.uniform(u0, u1), rng.uniform(v0, v1))
            elif slots_first and self.yard_slots and k < 40:
                sx, sy, sw, sl = self.yard_slots[int(rng.integers(len(self.yard_slots)))]
                cx, cy = sx + rng.normal(0, 1.5), sy + rng.normal(0, 1.5)
            else:
                cx, cy = rng.uniform(margin, self.side - margin, 2)
            angle = self.angle + rng.uniform(-0.06, 0.06)
            poly = _rect_polygon(cx, cy, w, l, angle)
            if not self._inside(poly, margin):
                continue
            if self.occ.is_free(_rect_polygon(cx, cy, w + 2 * buffer, l + 2 * buffer, angle)):
                return cx, cy, w, l, angle
        return None

    def _place_new_building(self, night: int) -> bool:
        got = self._free_rect((6, 16), (6, 14))
        if got is None:
            got = self._free_rect((6, 8), (6, 8), slots_first=False)
        if got is None:
            return False
        cx, cy, w, l, a = got
        style = str(self.rng.choice(("concrete", "terracotta", "dark", "white_steel")))
        st = self._building(cx, cy, w, l, a, born=night, truth_class="new_building", style=style)
        if style == "concrete":  # a fresh concrete roof is brighter than the yard it replaces
            g = self.rng.uniform(188, 210)
            st.colour = (g, g, g - 3)
        self.occ.mark(_rect_polygon(cx, cy, w, l, a), _STRUCTURE)
        return True

    def _place_shed(self, night: int) -> bool:
        rng = self.rng
        style = str(rng.choice(("blue_steel", "white_steel"), p=[0.65, 0.35]))
        if rng.random() < 0.35 and self._place_rooftop(night, "temporary_structure", style, (3, 8), 2.8):
            return True
        got = self._free_rect((3, 10), (3, 7), buffer=0.5)
        if got is None:
            return self._place_rooftop(night, "temporary_structure", style, (3, 8), 2.8)
        cx, cy, w, l, a = got
        self._building(cx, cy, w, l, a, born=night, truth_class="temporary_structure",
                       kind="temporary_structure", style=style, height=rng.uniform(2.5, 3.5))
        self.occ.mark(_rect_polygon(cx, cy, w, l, a), _STRUCTURE)
        return True

    def _candidate_parents(self, night: int, min_side: float) -> list:
        return [s for s in self.structures
                if s.kind == "building" and s.born < night and s.died is None and not s.has_child
                and min(s.rect[2], s.rect[3]) >= min_side and self._inside(_rect_polygon(*s.rect), 1.0)]

    def _place_rooftop(self, night: int, kind: str, style: str | None, size_range, height: float) -> bool:
        rng = self.rng
        parents = self._candidate_parents(night, size_range[0] + 2.0)
        if not parents:
            return False
        parent = parents[int(rng.integers(len(parents)))]
        pcx, pcy, pw, pl, pa = parent.rect
        w = rng.uniform(size_range[0], min(size_range[1], pw - 1.2))
        l = rng.uniform(size_range[0], min(size_range[1], pl - 1.2))
        du = rng.uniform(-(pw - w) / 2 + 0.5, (pw - w) / 2 - 0.5)
        dv = rng.uniform(-(pl - l) / 2 + 0.5, (pl - l) / 2 - 0.5)
        c, s = math.cos(pa), math.sin(pa)
        cx, cy = pcx + c * du - s * dv, pcy + s * du + c * dv
        style = style or _contrasting_style(rng, parent)
        self._building(cx, cy, w, l, pa, born=night, truth_class=kind if kind != "building" else "extension",
                       kind=kind, style=style, height=height, base=parent.top, parent=parent.sid)
        parent.has_child = True
        return True

    def _place_extension(self, night: int) -> bool:
        rng = self.rng
        if rng.random() < 0.5 and self._place_rooftop(night, "extension", None, (3, 8), 3.0):
            return True
        for parent in rng.permutation(np.array(self._candidate_parents(night, 5.0), dtype=object)):
            pcx, pcy, pw, pl, pa = parent.rect
            side = int(rng.integers(4))
            along, across = (pl, pw) if side < 2 else (pw, pl)
            ext_along = rng.uniform(3, min(8, along))
            depth = rng.uniform(3, 8)
            offset_along = rng.uniform(-(along - ext_along) / 2, (along - ext_along) / 2)
            sign = 1 if side % 2 == 0 else -1
            du, dv = (sign * (across / 2 + depth / 2), offset_along) if side < 2 else (offset_along, sign * (across / 2 + depth / 2))
            w, l = (depth, ext_along) if side < 2 else (ext_along, depth)
            c, s = math.cos(pa), math.sin(pa)
            cx, cy = pcx + c * du - s * dv, pcy + s * du + c * dv
            poly = _rect_polygon(cx, cy, w, l, pa)
            # check a slightly pushed-out copy so touching the parent is allowed
            pcx2, pcy2 = cx + c * (0.4 * sign if side < 2 else 0) - s * (0.4 * sign if side >= 2 else 0), \
                cy + s * (0.4 * sign if side < 2 else 0) + c * (0.4 * sign if side >= 2 else 0)
            if not self._inside(poly, 1.0) or not self.occ.is_free(_rect_polygon(pcx2, pcy2, w + 0.4, l + 0.4, pa)):
                continue
            self._building(cx, cy, w, l, pa, born=night, truth_class="extension", kind="extension",
                           style=_contrasting_style(rng, parent), height=rng.uniform(3, max(3.2, parent.height)),
                           parent=parent.sid)
            parent.has_child = True
            self.occ.mark(poly, _STRUCTURE)
            return True
        return self._place_rooftop(night, "extension", None, (3, 8), 3.0)

    def _place_site(self, night: int) -> bool:
        got = self._free_rect((10, 30), (10, 24), tries=300, buffer=0.5, slots_first=False, in_gardens=True)
        if got is None:
            got = self._free_rect((10, 13), (10, 12), tries=300, buffer=0.3, in_gardens=True)
        if got is None:
            return False
        cx, cy, w, l, a = got
        self._add(kind="construction_site", rect=(cx, cy, w, l, a), height=0.0, base=0.0, roof="site",
                  colour=_roof_colour(self.rng, "site"), born=night, truth_class="construction_site")
        self.occ.mark(_rect_polygon(cx, cy, w, l, a), _STRUCTURE)
        return True

    def _promote_sites(self, night: int) -> None:
        """In multi-night sequences a site from an earlier night may get its building."""
        for site in [s for s in self.structures if s.kind == "construction_site" and s.born < night
                     and not s.has_child and s.died is None]:
            if self.rng.random() < 0.5:
                cx, cy, w, l, a = site.rect
                self._building(cx, cy, w * 0.7, l * 0.7, a, born=night, truth_class="new_building",
                               style="concrete", parent=site.sid)
                site.has_child = True

    def _develop_block(self, night: int) -> None:
        """Graded land -> a new lane and a row of houses on each side (each a new_building)."""
        rng = self.rng
        u0, v0, u1, v1 = self.graded_block
        vm = (v0 + v1) / 2
        lane_w = rng.uniform(4, 6)
        a, b = self._to_world(u0, vm), self._to_world(u1, vm)
        ang = math.atan2(b[1] - a[1], b[0] - a[0])
        lane = _rect_polygon((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, u1 - u0, lane_w, ang)
        self.surfaces.append((lane, "new_lane", night, None))
        style = str(rng.choice(("concrete", "terracotta", "white_steel")))
        for v_lo, v_hi in ((v0 + 1.0, vm - lane_w / 2 - 1.0), (vm + lane_w / 2 + 1.0, v1 - 1.0)):
            depth = min(v_hi - v_lo, rng.uniform(8, 13))
            if depth < 6:
                continue
            vc = v_lo + depth / 2 if rng.random() < 0.5 else v_hi - depth / 2
            u = u0 + rng.uniform(1, 3)
            while True:
                width = rng.uniform(7, 12)
                if u + width > u1 - 1:
                    break
                cx, cy = self._to_world(u + width / 2, vc)
                self._building(cx, cy, width, depth, self.angle, born=night, truth_class="new_building",
                               style=style, height=3.0 * int(rng.integers(2, 5)))
                u += width + rng.uniform(2, 4)

    def _demolish(self, night: int) -> None:
        rng = self.rng
        n = int(rng.random() < min(0.9, self.side ** 2 / 15000)) + int(self.side ** 2 > 30000 and rng.random() < 0.5)
        pool = [s for s in self.structures if s.kind in ("building", "temporary_structure") and s.born < night
                and s.died is None and not s.has_child and s.base == 0
                and self._inside(_rect_polygon(*s.rect), 0.5)]
        for k in rng.permutation(len(pool))[:n]:
            pool[k].died = night
            self.surfaces.append((_rect_polygon(*pool[k].rect), "rubble", night, None))

    # ---- vegetation
    def plant_trees(self) -> None:
        rng = self.rng
        target = int(self.side ** 2 / 240)
        planted, tries = 0, 0
        while planted < target and tries < target * 12:
            tries += 1
            r = rng.uniform(1.5, 4.0)
            cx, cy = rng.uniform(-r, self.side + r, 2)
            box = _rect_polygon(cx, cy, 2.6 * r, 2.6 * r, 0.0)
            allowed = (_FREE, _ROAD) if rng.random() < 0.25 else (_FREE,)  # some street trees
            if not self.occ.is_free(box, allowed):
                continue
            k = int(rng.integers(4, 9))
            ang = rng.uniform(0, 2 * np.pi, k)
            dist = rng.uniform(0.1, 0.55, k)
            lobes = np.stack([np.cos(ang) * dist, np.sin(ang) * dist, rng.uniform(0.4, 0.65, k)], 1)
            self.trees.append(_Tree(float(cx), float(cy), float(r), float(rng.uniform(5, 12)), lobes))
            self.occ.mark(box, _TREE)
            planted += 1


# --------------------------------------------------------------------------- rendering
def _noise_field(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Smooth noise, unit-ish std, with features about ``scale_px`` pixels wide."""
    if scale_px <= 1.5:
        return rng.standard_normal((size, size)).astype(np.float32)
    n = int(math.ceil(size / scale_px)) + 3
    small = rng.standard_normal((n, n)).astype(np.float32)
    big = cv2.resize(small, (int(n * scale_px), int(n * scale_px)), interpolation=cv2.INTER_CUBIC)
    off = int(scale_px)
    out = big[off:off + size, off:off + size]
    return out / max(float(out.std()), 1e-6)


@dataclass
class _Textures:
    fine: np.ndarray  # ~0.3 m
    mid: np.ndarray  # ~1.5 m
    coarse: np.ndarray  # ~8 m
    huge: np.ndarray  # ~40 m
    ground: np.ndarray  # (H, W, 3) bare ground colour
    grass: np.ndarray  # (H, W) grass cover 0..1
    grass_detail: np.ndarray  # (H, W) grass brightness texture
    detail: np.ndarray  # (H, W) fine + mid noise used to texture painted surfaces


def _make_textures(rng: np.random.Generator, size: int, gsd: float) -> _Textures:
    fine, mid, coarse, huge = (_noise_field(rng, size, s / gsd) for s in (0.3, 1.5, 8.0, 40.0))
    lum = coarse * 7 + mid * 5 + fine * 5 + huge * 6
    ground = np.empty((size, size, 3), np.float32)
    ground[:] = np.array([146, 138, 122], np.float32)
    ground += lum[..., None]
    grass = np.clip((huge * 0.7 + coarse * 0.5 - 0.6) * 1.4, 0, 1)
    return _Textures(fine, mid, coarse, huge, ground, grass, mid * 10 + fine * 8, fine * 0.6 + mid * 0.4)


class _Canvas:
    """A float32 RGB image plus helpers to paint anti-aliased polygons in metres."""

    def __init__(self, image: np.ndarray, gsd: float, tex: _Textures):
        self.img = image
        self.gsd = gsd
        self.size = image.shape[0]
        self.tex = tex

    def mask(self, poly_m, pad: int = 1):
        """(roi slices, float32 alpha mask) of a polygon (or the union of a list of them)
        given in metres, or None if outside the image."""
        polys = [p / self.gsd for p in (poly_m if isinstance(poly_m, list) else [poly_m])]
        allpts = np.vstack(polys)
        x0, y0 = np.floor(allpts.min(0)).astype(int) - pad
        x1, y1 = np.ceil(allpts.max(0)).astype(int) + pad
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for pts in polys:
            cv2.fillPoly(m, [np.round((pts - 0.5 - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        return (slice(y0, y1), slice(x0, x1)), m.astype(np.float32) / 255.0

    def paint(self, poly_m: np.ndarray, colour, noise_amp: float = 6.0, pattern=None, alpha: float = 1.0) -> None:
        got = self.mask(poly_m)
        if got is None:
            return
        roi, m = got
        if noise_amp:
            fill = (self.tex.detail[roi] * noise_amp)[..., None] + np.asarray(colour, np.float32)
        else:
            fill = np.broadcast_to(np.asarray(colour, np.float32), m.shape + (3,))
        if pattern is not None:
            fill = fill * pattern(roi)[..., None]
        if alpha != 1.0:
            m *= alpha
        target = self.img[roi]
        fill = np.ascontiguousarray(fill, np.float32)
        target[:] = cv2.blendLinear(np.ascontiguousarray(target), fill, 1.0 - m, m)

    def darken(self, poly_m: np.ndarray, factors=(0.48, 0.53, 0.64)) -> None:
        got = self.mask(poly_m, pad=2)
        if got is None:
            return
        roi, m = got
        if self.gsd < 0.2:
            m = cv2.GaussianBlur(m, (3, 3), 0)
        f = 1 - m[..., None] * (1 - np.asarray(factors, np.float32))
        self.img[roi] *= f

    def stripes(self, rect, period_m: float, amp: float, across: bool = True):
        """A pattern function: sinusoidal stripes across (or along) a rotated rectangle."""
        cx, cy, w, l, a = rect
        period = max(period_m / self.gsd, 2.6)
        dx, dy = (math.cos(a), math.sin(a)) if across else (-math.sin(a), math.cos(a))

        def pattern(roi):
            ys = np.arange(roi[0].start, roi[0].stop, dtype=np.float32)[:, None] + 0.5
            xs = np.arange(roi[1].start, roi[1].stop, dtype=np.float32)[None, :] + 0.5
            d = (xs - cx / self.gsd) * dx + (ys - cy / self.gsd) * dy
            return 1 + amp * np.sin(d * (2 * np.pi / period)).astype(np.float32)

        return pattern


@dataclass
class _EpochLook:
    sun_azimuth: float  # radians, direction shadows fall (image frame, x right, y down)
    sun_elevation: float
    veg_season: float  # 0 green .. 1 brown
    veg_growth: float
    gamma: float
    gains: tuple
    offset: float
    noise_sigma: float
    jpeg_quality: int
    shift: tuple


def _shadow_offset(look: _EpochLook, height: float) -> np.ndarray:
    length = height / math.tan(look.sun_elevation)
    return np.array([math.cos(look.sun_azimuth), math.sin(look.sun_azimuth)]) * length


_SURFACES = {
    "asphalt": ((82, 84, 88), 5.0),
    "lane": ((150, 146, 138), 7.0),
    "new_lane": ((178, 176, 170), 4.0),
    "yard": ((158, 150, 136), 9.0),
    "graded": ((196, 176, 138), 6.0),
    "rubble": ((140, 128, 112), 22.0),
}


def _paint_ground(canvas: _Canvas, look: _EpochLook) -> None:
    """Bare/paved ground with noise at several scales, grass patches in season colour."""
    t = canvas.tex
    green = _veg_colour(look, ground=True)
    green_img = t.grass_detail[..., None] + green
    canvas.img[:] = cv2.blendLinear(t.ground, green_img, 1.0 - t.grass, t.grass)


def _veg_colour(look: _EpochLook, ground: bool = False) -> np.ndarray:
    green = np.array([72, 108, 50] if ground else [50, 88, 42], np.float32)
    brown = np.array([122, 118, 74] if ground else [88, 98, 52], np.float32)
    return green * (1 - look.veg_season) + brown * look.veg_season


def _paint_surface(canvas: _Canvas, poly: np.ndarray, surface: str, look: _EpochLook, seed: int) -> None:
    if surface == "garden":
        canvas.paint(poly, _veg_colour(look, ground=True) + 8, noise_amp=14)
        return
    colour, amp = _SURFACES[surface]
    if surface == "graded":
        cx, cy = np.vstack(poly).mean(0) if isinstance(poly, list) else poly.mean(0)
        rect = (cx, cy, 1, 1, (seed % 628) / 100.0)
        canvas.paint(poly, colour, amp, pattern=canvas.stripes(rect, 2.6, 0.05))
    elif surface == "rubble":
        canvas.paint(poly, colour, amp)
    else:
        canvas.paint(poly, colour, amp)


def _paint_structure(canvas: _Canvas, st: _Structure, look: _EpochLook) -> None:
    poly = _rect_polygon(*st.rect)
    if st.kind == "construction_site":
        _paint_site(canvas, st)
        return
    off = _shadow_offset(look, st.height)
    canvas.darken(cv2.convexHull(np.vstack([poly, poly + off]).astype(np.float32))[:, 0, :].astype(np.float64))
    colour = np.asarray(st.colour, np.float32)
    cx, cy, w, l, a = st.rect
    if st.roof in ("blue_steel", "white_steel"):
        canvas.paint(poly, colour, 3.0, pattern=canvas.stripes(st.rect, 0.28, 0.10, across=w < l))
        ridge = (cx, cy, w, 0.25, a) if w >= l else (cx, cy, 0.25, l, a)
        canvas.paint(_rect_polygon(*ridge), colour * 0.9, 2.0)
        return
    if st.roof == "terracotta":
        # hip roof: the half facing the sun is lighter
        sun_side = -np.array([math.cos(look.sun_azimuth), math.sin(look.sun_azimuth)])
        nrm = np.array([-math.sin(a), math.cos(a)]) if w >= l else np.array([math.cos(a), math.sin(a)])
        lit = 1.08 if float(nrm @ sun_side) > 0 else 0.86
        if w >= l:
            halves = [(cx + nrm[0] * l / 4, cy + nrm[1] * l / 4, w, l / 2, a), (cx - nrm[0] * l / 4, cy - nrm[1] * l / 4, w, l / 2, a)]
        else:
            halves = [(cx + nrm[0] * w / 4, cy + nrm[1] * w / 4, w / 2, l, a), (cx - nrm[0] * w / 4, cy - nrm[1] * w / 4, w / 2, l, a)]
        for rect, factor in zip(halves, (lit, 1.94 - lit)):
            canvas.paint(_rect_polygon(*rect), colour * factor, 5.0, pattern=canvas.stripes(rect, 0.32, 0.07, across=w < l))
        return
    # flat roof with parapet, stains and clutter
    canvas.paint(poly, colour * 0.82, 4.0)
    inset = min(0.35, w / 6, l / 6)
    canvas.paint(_rect_polygon(cx, cy, w - 2 * inset, l - 2 * inset, a), colour, 8.0)
    c, s = math.cos(a), math.sin(a)
    for item in st.clutter:
        ix, iy = cx + c * item[1] - s * item[2], cy + s * item[1] + c * item[2]
        small_off = _shadow_offset(look, item[-1])
        if item[0] == "tank":
            circle = np.stack([ix + item[3] * np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                               iy + item[3] * np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], 1)
            canvas.darken(cv2.convexHull(np.vstack([circle, circle + small_off]).astype(np.float32))[:, 0, :].astype(np.float64))
            tank_colour = ((40, 80, 170), (35, 35, 38), (205, 205, 200), (200, 170, 60))[item[4]]
            canvas.paint(circle, tank_colour, 4.0)
        else:
            box = _rect_polygon(ix, iy, item[3], item[4], a)
            canvas.darken(cv2.convexHull(np.vstack([box, box + small_off]).astype(np.float32))[:, 0, :].astype(np.float64))
            canvas.paint(box, colour * 1.07 if item[0] == "stair" else (196, 198, 196), 4.0)


def _paint_site(canvas: _Canvas, st: _Structure) -> None:
    """Cleared red-brown ground, tyre tracks, a concrete foundation and a scaffold grid."""
    cx, cy, w, l, a = st.rect
    poly = _rect_polygon(*st.rect)
    canvas.paint(poly, st.colour, 12.0, pattern=canvas.stripes((cx, cy, w, l, a + 0.5), 1.1, 0.05))
    rng = np.random.default_rng(st.texture_seed)
    fw, fl = w * rng.uniform(0.5, 0.72), l * rng.uniform(0.5, 0.72)
    du, dv = rng.uniform(-(w - fw) / 2 + 1, (w - fw) / 2 - 1), rng.uniform(-(l - fl) / 2 + 1, (l - fl) / 2 - 1)
    c, s = math.cos(a), math.sin(a)
    fx, fy = cx + c * du - s * dv, cy + s * du + c * dv
    canvas.paint(_rect_polygon(fx, fy, fw, fl, a), (104, 102, 98), 6.0)  # wet concrete slab
    # rebar / formwork grid inside the foundation, scaffold mesh band along two sides
    step = 1.5
    for t in np.arange(-fw / 2 + step, fw / 2, step):
        canvas.paint(_rect_polygon(fx + c * t, fy + s * t, max(0.08, canvas.gsd * 0.9), fl, a), (150, 120, 95), 0.0)
    for t in np.arange(-fl / 2 + step, fl / 2, step):
        canvas.paint(_rect_polygon(fx - s * t, fy + c * t, fw, max(0.08, canvas.gsd * 0.9), a), (150, 120, 95), 0.0)
    band = 1.3
    for du2, dv2, bw, bl in ((0, -fl / 2 - band / 2, fw + 2 * band, band), (-fw / 2 - band / 2, 0, band, fl)):
        bx, by = fx + c * du2 - s * dv2, fy + s * du2 + c * dv2
        rect = (bx, by, bw, bl, a)
        canvas.paint(_rect_polygon(*rect), (52, 110, 70), 5.0,
                     pattern=lambda roi, r=rect: canvas.stripes(r, 0.5, 0.25)(roi) * canvas.stripes(r, 0.5, 0.25, False)(roi))


def _paint_tree(canvas: _Canvas, tree: _Tree, look: _EpochLook) -> None:
    r = tree.radius * look.veg_growth
    colour = _veg_colour(look)
    off = _shadow_offset(look, tree.height)
    lobes = [(tree.cx + dx * r, tree.cy + dy * r, lr * r) for dx, dy, lr in tree.lobes]
    angles = np.linspace(0, 2 * np.pi, 18, endpoint=False)
    circles = [np.stack([x + rr * np.cos(angles), y + rr * np.sin(angles)], 1) for x, y, rr in lobes]
    canvas.darken([circ + off for circ in circles], (0.5, 0.55, 0.62))
    sun_dir = -np.array([math.cos(look.sun_azimuth), math.sin(look.sun_azimuth)])
    canvas.paint(circles, colour * 0.8, 10.0)
    highlights = [np.stack([x + sun_dir[0] * rr * 0.25 + rr * 0.6 * np.cos(angles),
                            y + sun_dir[1] * rr * 0.25 + rr * 0.6 * np.sin(angles)], 1) for x, y, rr in lobes]
    canvas.paint(highlights, colour * 1.2, 12.0, alpha=0.7)


def _paint_cars(canvas: _Canvas, plan: _Plan, rng: np.random.Generator, look: _EpochLook) -> None:
    palette = ((225, 225, 228), (190, 192, 196), (30, 30, 34), (150, 30, 30), (40, 60, 120), (120, 120, 125))
    for x0, y0, x1, y1, width in plan.car_lanes:
        length = math.hypot(x1 - x0, y1 - y0)
        ang = math.atan2(y1 - y0, x1 - x0)
        n = int(rng.poisson(length / 25))
        for t in rng.uniform(0, 1, n):
            side = rng.choice([-1, 1]) * (width / 2 - 1.3)
            cx = x0 + (x1 - x0) * t - math.sin(ang) * side
            cy = y0 + (y1 - y0) * t + math.cos(ang) * side
            if not (0 < cx < plan.side_m and 0 < cy < plan.side_m):
                continue
            car = _rect_polygon(cx, cy, 4.4, 1.8, ang)
            canvas.darken(car + _shadow_offset(look, 1.4), (0.55, 0.58, 0.65))
            colour = np.asarray(palette[int(rng.integers(len(palette)))], np.float32)
            canvas.paint(car, colour, 4.0)
            canvas.paint(_rect_polygon(cx, cy, 1.6, 1.5, ang), colour * 0.55, 2.0)  # windscreen band


def _present(st: _Structure, epoch: int) -> bool:
    return st.born <= epoch and (st.died is None or st.died > epoch)


def _render_epoch(plan: _Plan, epoch: int, look: _EpochLook, tex: _Textures, size: int, gsd: float,
                  seed: int) -> np.ndarray:
    canvas = _Canvas(np.empty((size, size, 3), np.float32), gsd, tex)
    _paint_ground(canvas, look)
    layers: dict[str, list] = {}
    for poly, surface, born, died in plan.surfaces:
        if born <= epoch and (died is None or died > epoch):
            layers.setdefault(surface, []).append(poly)
    for poly, surface in plan.roads:
        layers.setdefault(surface, []).append(poly)
    for surface in ("garden", "yard", "graded", "lane", "asphalt", "new_lane", "rubble"):
        for poly in (layers.get(surface, []) if surface in ("graded", "rubble") else [layers.get(surface)]):
            if poly is not None and len(poly):
                _paint_surface(canvas, poly, surface, look, seed)
    for st in plan.structures:
        if st.kind == "construction_site" and _present(st, epoch):
            _paint_site(canvas, st)
    _paint_cars(canvas, plan, np.random.default_rng([seed, 11, epoch]), look)
    drawables = [(st.top, 0, k) for k, st in enumerate(plan.structures)
                 if st.kind != "construction_site" and _present(st, epoch)]
    drawables += [(tree.height, 1, k) for k, tree in enumerate(plan.trees)]
    for _, is_tree, k in sorted(drawables):
        if is_tree:
            _paint_tree(canvas, plan.trees[k], look)
        else:
            _paint_structure(canvas, plan.structures[k], look)
    return _finish(canvas.img, look, np.random.default_rng([seed, 13, epoch]))


def _finish(img: np.ndarray, look: _EpochLook, rng: np.random.Generator) -> np.ndarray:
    """Illumination, misregistration, sensor noise and JPEG artefacts."""
    out = np.empty(img.shape, np.uint8)
    np.clip(img + 0.5, 0, 255, out=img)
    out[:] = img
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack([np.power(levels, look.gamma) * g * 255.0 + look.offset for g in look.gains], 1)
    out = cv2.LUT(out, np.clip(lut + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3))
    dx, dy = look.shift
    if dx or dy:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out = cv2.warpAffine(out, m, (out.shape[1], out.shape[0]), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
    noise = (rng.standard_normal(out.shape[:2], dtype=np.float32) * look.noise_sigma).astype(np.int16)
    out = np.clip(out.astype(np.int16) + noise[..., None], 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _epoch_looks(rng: np.random.Generator, epochs: int, max_shift_px: float) -> list[_EpochLook]:
    looks = []
    azimuth = rng.uniform(0, 2 * np.pi)
    for e in range(epochs):
        if e:
            azimuth += rng.uniform(0.35, 1.6) * rng.choice([-1, 1])
            r, th = rng.uniform(0.3, 1.0) * max_shift_px, rng.uniform(0, 2 * np.pi)
            shift = (float(r * math.cos(th)), float(r * math.sin(th)))
        else:
            shift = (0.0, 0.0)
        looks.append(_EpochLook(
            sun_azimuth=float(azimuth), sun_elevation=float(np.radians(rng.uniform(58, 80))),
            veg_season=float(rng.uniform(0, 0.8)), veg_growth=float(1 + 0.03 * e + rng.uniform(0, 0.03)),
            gamma=float(rng.uniform(0.85, 1.15)), gains=tuple(float(g) for g in rng.uniform(0.93, 1.07, 3)),
            offset=float(rng.uniform(-8, 8)), noise_sigma=float(rng.uniform(1.5, 3.0)),
            jpeg_quality=int(rng.integers(80, 93)), shift=shift))
    return looks


# --------------------------------------------------------------------------- public API
def derive_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` in a run started with ``seed`` (stable across processes)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def generate_scene(seed: int, size: int = 1024, gsd: float = 0.1, nights: int = 1, **options) -> Scene:
    """Plan and render one synthetic scene of ``nights + 1`` epochs.

    Parameters
    ----------
    seed : int
        Random seed; the same seed (and arguments) gives the same pixels and polygons.
    size : int
        Image side in pixels (square).
    gsd : float
        Ground sample distance in metres per pixel; object sizes are defined in metres.
    nights : int
        Number of transitions T; the scene has T + 1 epochs.
    **options
        ``max_shift_px`` (float, default 3.0): largest misregistration of epochs >= 1;
        ``block_development`` (bool, default True): allow graded land -> houses + lane.

    Returns
    -------
    Scene
        Images, per-epoch footprints, per-transition changes and demolitions, all polygons
        in the baseline pixel frame (see the module docstring).
    """
    if size < 64 or gsd <= 0 or nights < 1:
        raise ValueError(f"generate_scene: need size >= 64, gsd > 0, nights >= 1 (got {size}, {gsd}, {nights})")
    unknown = set(options) - {"max_shift_px", "block_development"}
    if unknown:
        raise ValueError(f"generate_scene: unknown options {sorted(unknown)}")
    rng = np.random.default_rng([int(seed), 1])
    side_m = size * gsd
    planner = _Planner(rng, side_m, nights, options)
    planner.layout()
    planner.plan_changes()
    planner.plant_trees()
    plan = _Plan(side_m, planner.angle, planner.roads, planner.surfaces, planner.structures, planner.trees,
                 planner.car_lanes)
    looks = _epoch_looks(np.random.default_rng([int(seed), 2]), nights + 1, float(options.get("max_shift_px", 3.0)))
    tex = _make_textures(np.random.default_rng([int(seed), 3]), size, gsd)
    epochs = [_render_epoch(plan, e, looks[e], tex, size, gsd, int(seed)) for e in range(nights + 1)]
    footprints = [_footprints(plan, e, size, gsd) for e in range(nights + 1)]
    changes, demolished = [], []
    for night in range(1, nights + 1):
        changes.append([ChangeTruth(st.truth_class, _rect_polygon(*st.rect) / gsd, st.sid)
                        for st in plan.structures if st.born == night and st.truth_class])
        demolished.append([Footprint(st.sid, st.kind, _rect_polygon(*st.rect) / gsd)
                           for st in plan.structures if st.died == night])
    return Scene(seed=int(seed), size=size, gsd=gsd, epochs=epochs, footprints=footprints, changes=changes,
                 demolished=demolished, shifts=[lk.shift for lk in looks],
                 sun=[(math.degrees(lk.sun_azimuth) % 360, math.degrees(lk.sun_elevation)) for lk in looks],
                 dates=[BASELINE_DATE + timedelta(days=e) for e in range(nights + 1)])


def _footprints(plan: _Plan, epoch: int, size: int, gsd: float) -> list[Footprint]:
    out = []
    for st in plan.structures:
        if not _present(st, epoch):
            continue
        poly = _clip_to_square(_rect_polygon(*st.rect) / gsd, float(size))
        if len(poly) >= 3 and _polygon_area(poly) * gsd * gsd >= 1.0:
            out.append(Footprint(st.sid, st.kind, poly))
    return out


# --------------------------------------------------------------------------- writers


def scene_transform(size: int, gsd: float, crs: str = DEFAULT_CRS, center_lonlat=DEFAULT_CENTER_LONLAT):
    """The affine geotransform of a scene centred on ``center_lonlat`` in ``crs``.

    Projected CRS: square pixels of ``gsd`` grid units (metres). Geographic CRS (e.g.
    EPSG:4326): pixel width / height in degrees chosen so that the ground size at the centre
    latitude is ``gsd`` metres; axes are (lon, lat).

    Returns
    -------
    rasterio.Affine
    """
    from pyproj import CRS, Geod, Transformer
    from rasterio.transform import Affine

    from detector.errors import InputError

    try:
        crs_obj = CRS.from_user_input(crs)
    except Exception:  # noqa: BLE001 - pyproj raises several types
        raise InputError(f"--crs {crs}: unknown coordinate reference system; use e.g. EPSG:4547") from None
    lon, lat = center_lonlat
    half = size * gsd / 2
    if crs_obj.is_geographic:
        geod = Geod(ellps="WGS84")
        m_per_deg_lon = geod.inv(lon - 0.005, lat, lon + 0.005, lat)[2] / 0.01
        m_per_deg_lat = geod.inv(lon, lat - 0.005, lon, lat + 0.005)[2] / 0.01
        dlon, dlat = gsd / m_per_deg_lon, gsd / m_per_deg_lat
        return Affine(dlon, 0, lon - size * dlon / 2, 0, -dlat, lat + size * dlat / 2)
    unit = crs_obj.axis_info[0].unit_name if crs_obj.axis_info else ""
    if unit not in ("metre", "meter"):
        raise InputError(f"--crs {crs}: axis unit is '{unit}', need a metric projected CRS or EPSG:4326")
    x, y = Transformer.from_crs("EPSG:4326", crs_obj, always_xy=True).transform(lon, lat)
    return Affine(gsd, 0, x - half, 0, -gsd, y + half)


def _write_geotiff(path: Path, image: np.ndarray, transform, crs: str, when: date) -> None:
    import rasterio
    from rasterio.enums import Resampling

    profile = dict(driver="GTiff", width=image.shape[1], height=image.shape[0], count=3, dtype="uint8",
                   crs=crs, transform=transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="JPEG", photometric="YCBCR", jpeg_quality=90, interleave="pixel")
    with atomic_path(path, suffix=".tif") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.moveaxis(image, 2, 0))
            dst.update_tags(TIFFTAG_DATETIME=f"{when:%Y:%m:%d} {EPOCH_TIME}", TIFFTAG_SOFTWARE="buildwatch synth")
            factors = [f for f in (2, 4, 8, 16) if image.shape[0] // f >= 128]
            if factors:
                dst.build_overviews(factors, Resampling.average)


def _geojson_bytes(features: list[tuple[np.ndarray, dict]], transform, crs: str, gsd: float) -> bytes:
    from pyproj import CRS

    crs_obj = CRS.from_user_input(crs)
    geographic = crs_obj.is_geographic
    ndigits = 9 if geographic else 3
    out = []
    for poly, props in features:
        xs = transform.a * poly[:, 0] + transform.b * poly[:, 1] + transform.c
        ys = transform.d * poly[:, 0] + transform.e * poly[:, 1] + transform.f
        ring = [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in zip(xs, ys)]
        if _signed_area(np.array(ring)) < 0:  # RFC 7946: exterior ring counter-clockwise
            ring = ring[::-1]
        ring.append(ring[0])
        props = dict(props, area_m2=round(_polygon_area(poly) * gsd * gsd, 2))
        out.append({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    epsg = crs_obj.to_epsg()
    name = "urn:ogc:def:crs:OGC:1.3:CRS84" if geographic and epsg == 4326 else f"urn:ogc:def:crs:EPSG::{epsg}"
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": name}}, "features": out}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def write_scene(scene: Scene, outdir: Path, crs: str = DEFAULT_CRS, center_lonlat=DEFAULT_CENTER_LONLAT) -> dict:
    """Write a scene as GeoTIFFs + GeoJSON into ``outdir`` (created if needed).

    Files: ``baseline.tif`` / ``current.tif`` (epochs 0 / 1), ``truth.geojson`` (changes
    0 -> 1; properties ``class``, ``structure_id``, ``area_m2``), ``footprints_baseline.geojson``,
    ``footprints_current.geojson`` and ``scene.json`` (seed, shifts, sun, dates). With more than
    one night also ``epoch_00.tif`` ..., ``truth_01.geojson`` ... (t-1 -> t) and
    ``footprints_00.geojson`` .... Every epoch shares the baseline's georeference; its
    ``TIFFTAG_DATETIME`` is ``2026:05:01 10:00:00`` + epoch days.

    Returns
    -------
    dict
        Name (e.g. ``"baseline"``, ``"truth_01"``) -> written Path.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    transform = scene_transform(scene.size, scene.gsd, crs, center_lonlat)
    paths: dict[str, Path] = {}
    nights = len(scene.changes)

    def tif(name: str, e: int) -> None:
        paths[name] = outdir / f"{name}.tif"
        _write_geotiff(paths[name], scene.epochs[e], transform, crs, scene.dates[e])

    def vec(name: str, features) -> None:
        paths[name] = outdir / f"{name}.geojson"
        atomic_write_bytes(paths[name], _geojson_bytes(features, transform, crs, scene.gsd))

    def truth_features(t: int):
        return [(c.polygon, {"class": c.cls, "structure_id": c.structure_id}) for c in scene.changes[t]]

    def footprint_features(e: int):
        return [(f.polygon, {"kind": f.kind, "structure_id": f.structure_id}) for f in scene.footprints[e]]

    tif("baseline", 0)
    tif("current", 1)
    vec("truth", truth_features(0))
    vec("footprints_baseline", footprint_features(0))
    vec("footprints_current", footprint_features(1))
    if nights >= 2:
        for e in range(nights + 1):
            tif(f"epoch_{e:02d}", e)
            vec(f"footprints_{e:02d}", footprint_features(e))
            if e:
                vec(f"truth_{e:02d}", truth_features(e - 1))
    meta = {
        "seed": scene.seed, "size": scene.size, "gsd": scene.gsd, "crs": crs, "center_lonlat": list(center_lonlat),
        "nights": nights, "dates": [d.isoformat() for d in scene.dates],
        "shifts_px": [[round(dx, 4), round(dy, 4)] for dx, dy in scene.shifts],
        "sun_azimuth_elevation_deg": [[round(a, 2), round(b, 2)] for a, b in scene.sun],
        "changes_per_night": [len(c) for c in scene.changes],
        "demolished_structure_ids": [[f.structure_id for f in d] for d in scene.demolished],
        "frame": "all polygons in the baseline (epoch 0) pixel frame; epoch e content is shifted by shifts_px[e]",
    }
    paths["scene"] = outdir / "scene.json"
    atomic_write_bytes(paths["scene"], (json.dumps(meta, indent=1) + "\n").encode())
    return paths


def generate(outdir, seed: int, scenes: int = 1, size: int = 1024, gsd: float = 0.1, crs: str = DEFAULT_CRS,
             nights: int = 1) -> list[Path]:
    """Generate and write ``scenes`` scenes into ``outdir/scene_000`` ... (what the CLI calls).

    Scene ``k`` uses ``derive_seed(seed, k)``, so adding scenes never changes earlier ones.

    Returns
    -------
    list of Path
        The scene folders, in order.
    """
    outdir = Path(outdir)
    folders = []
    for k in range(scenes):
        scene = generate_scene(derive_seed(seed, k), size=size, gsd=gsd, nights=nights)
        folder = outdir / f"scene_{k:03d}"
        write_scene(scene, folder, crs=crs)
        folders.append(folder)
    return folders
