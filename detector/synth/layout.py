"""Where everything goes: roads, blocks of buildings, gardens, trees and every night's changes.

The :class:`Planner` lays out one scene in metres on a rotated street grid, then decides the
changes of each night (the four :data:`detector.types.CHANGE_CLASSES`, plus demolitions,
which are not cases) and plants trees; :func:`build_plan` returns the result as a
:class:`~detector.synth.plan.Plan`. All random draws come from the one generator passed in,
in a fixed order, so the same seed gives the same plan.
"""

from __future__ import annotations

import math

import numpy as np

from detector.synth.geometry import rect_polygon
from detector.synth.occupancy import FREE, RESERVED, ROAD, STRUCTURE, TREE, Occupancy
from detector.synth.plan import Plan, Structure, Tree
from detector.synth.roofs import (
    ROOF_STYLES,
    ROOF_WEIGHTS,
    contrasting_style,
    make_clutter,
    roof_colour,
)
from detector.types import CHANGE_CLASSES


class Planner:
    """Lays out one scene in metres and decides every night's changes.

    Call :meth:`layout`, :meth:`plan_changes` and :meth:`plant_trees` in that order (they
    share the occupancy grid and the random stream); :func:`build_plan` does exactly that.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's planning generator.
    side_m : float
        Side of the square scene in metres.
    nights : int
        Number of transitions to plan changes for.
    options : dict
        ``block_development`` (bool, default True): allow graded land -> houses + lane.
    """

    def __init__(self, rng: np.random.Generator, side_m: float, nights: int, options: dict):
        self.rng = rng
        self.side = side_m
        self.nights = nights
        self.options = options
        self.occ = Occupancy(side_m)
        self.structures: list[Structure] = []
        self.roads: list = []
        self.surfaces: list = []
        self.trees: list[Tree] = []
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

    def _add(self, **kw) -> Structure:
        st = Structure(sid=self._new_id(), texture_seed=int(self.rng.integers(1 << 31)), **kw)
        self.structures.append(st)
        return st

    # ---- layout
    def layout(self) -> None:
        """Roads on a rotated grid; each block becomes dense housing, a garden or graded land."""
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
                poly = np.array(
                    [self._to_world(u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
                )
                if self._touches_scene(poly):
                    blocks.append((u0, v0, u1, v1, poly))
        order = rng.permutation(len(blocks))
        inside = [
            k
            for k in order
            if self._inside(blocks[k][4], 2.0)
            and blocks[k][2] - blocks[k][0] >= 24
            and blocks[k][3] - blocks[k][1] >= 22
        ]
        graded = (
            inside[0]
            if inside and self.side >= 110 and self.options.get("block_development", True)
            else None
        )
        n_open = max(1, int(round(len(blocks) * 0.12)))
        centred = [
            k
            for k in order
            if k != graded and self._inside(blocks[k][4].mean(0, keepdims=True), 8.0)
        ]
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
        poly = rect_polygon(cx, cy, length, width, ang)
        surface = "asphalt" if width > 5 else "lane"
        self.roads.append((poly, surface))
        self.occ.mark(poly, ROAD)
        if width > 5:
            self.car_lanes.append((a[0], a[1], b[0], b[1], width))

    def _building(
        self,
        cx,
        cy,
        w,
        l,
        angle,
        born=0,
        truth_class=None,
        kind="building",
        style=None,
        height=None,
        base=0.0,
        parent=None,
    ) -> Structure:
        rng = self.rng
        style = style or str(rng.choice(ROOF_STYLES, p=ROOF_WEIGHTS))
        if height is None:
            height = 3.0 * int(
                rng.choice([2, 3, 4, 5, 6, 7], p=[0.2, 0.25, 0.25, 0.15, 0.1, 0.05])
            ) + rng.uniform(0, 1)
        clutter = (
            make_clutter(rng, w, l) if style in ("concrete", "dark") and kind == "building" else []
        )
        return self._add(
            kind=kind,
            rect=(cx, cy, w, l, angle),
            height=height,
            base=base,
            roof=style,
            colour=roof_colour(rng, style),
            born=born,
            parent=parent,
            truth_class=truth_class,
            clutter=clutter,
        )

    def _dense_block(self, u0, v0, u1, v1) -> None:
        rng = self.rng
        v = v0 + rng.uniform(0.3, 1.5)
        while v < v1 - 5:
            depth = min(rng.uniform(8, 14), v1 - v - 0.3)
            if depth < 5.5:
                break
            u = u0 + rng.uniform(0.3, 1.5)
            while u < u1 - 5:
                width = min(
                    rng.uniform(6, 16) if rng.random() > 0.12 else rng.uniform(16, 25), u1 - u - 0.3
                )
                if width < 5.5:
                    break
                jitter = rng.uniform(-0.03, 0.03)
                cx, cy = self._to_world(u + width / 2, v + depth / 2)
                w_b, l_b = width * rng.uniform(0.92, 1.0), depth * rng.uniform(0.92, 1.0)
                poly = rect_polygon(cx, cy, w_b, l_b, self.angle + jitter)
                if self._touches_scene(poly):
                    if rng.random() < 0.14:
                        self.yard_slots.append((cx, cy, width, depth))
                        self.surfaces.append((poly, "yard", 0, None))
                    elif self.occ.is_free(poly, (FREE,)):
                        self._building(cx, cy, w_b, l_b, self.angle + jitter)
                        self.occ.mark(poly, STRUCTURE)
                u += width + rng.uniform(0.3, 1.4)
            v += depth + rng.uniform(0.8, 2.6)

    def _garden_block(self, u0, v0, u1, v1, poly) -> None:
        self.surfaces.append((poly, "garden", 0, None))
        self.gardens.append((u0, v0, u1, v1))
        rng = self.rng
        houses = (
            int(rng.integers(0, 3)) if len(self.gardens) > 1 else 0
        )  # the first garden stays open
        for _ in range(houses):  # a few detached houses
            w, l = rng.uniform(7, 13), rng.uniform(7, 12)
            cu, cv = (
                rng.uniform(u0 + w / 2 + 1, u1 - w / 2 - 1),
                rng.uniform(v0 + l / 2 + 1, v1 - l / 2 - 1),
            )
            cx, cy = self._to_world(cu, cv)
            rect = rect_polygon(cx, cy, w + 2, l + 2, self.angle)
            if self.occ.is_free(rect):
                self._building(cx, cy, w, l, self.angle)
                self.occ.mark(rect, STRUCTURE)

    def _graded_block(self, u0, v0, u1, v1, poly) -> None:
        self.graded_block = (u0, v0, u1, v1)
        self.surfaces.append((poly, "graded", 0, None))
        self.occ.mark(poly, RESERVED)

    # ---- changes
    def plan_changes(self) -> None:
        """Every night: at least one change of each class, more in larger scenes, and demolitions."""
        rng = self.rng
        area = self.side**2
        dev_night = int(rng.integers(1, self.nights + 1)) if self.graded_block else None
        for night in range(1, self.nights + 1):
            extra = int(round(area / 10000 * rng.uniform(0.6, 2.0)))
            classes = list(CHANGE_CLASSES) + list(
                rng.choice(CHANGE_CLASSES, size=extra, p=[0.35, 0.3, 0.2, 0.15])
            )
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

    def _free_rect(
        self,
        w_range,
        l_range,
        tries=250,
        margin=1.0,
        buffer=0.8,
        slots_first=True,
        in_gardens=False,
    ):
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
            poly = rect_polygon(cx, cy, w, l, angle)
            if not self._inside(poly, margin):
                continue
            if self.occ.is_free(rect_polygon(cx, cy, w + 2 * buffer, l + 2 * buffer, angle)):
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
        self.occ.mark(rect_polygon(cx, cy, w, l, a), STRUCTURE)
        return True

    def _place_shed(self, night: int) -> bool:
        rng = self.rng
        style = str(rng.choice(("blue_steel", "white_steel"), p=[0.65, 0.35]))
        if rng.random() < 0.35 and self._place_rooftop(
            night, "temporary_structure", style, (3, 8), 2.8
        ):
            return True
        got = self._free_rect((3, 10), (3, 7), buffer=0.5)
        if got is None:
            return self._place_rooftop(night, "temporary_structure", style, (3, 8), 2.8)
        cx, cy, w, l, a = got
        self._building(
            cx,
            cy,
            w,
            l,
            a,
            born=night,
            truth_class="temporary_structure",
            kind="temporary_structure",
            style=style,
            height=rng.uniform(2.5, 3.5),
        )
        self.occ.mark(rect_polygon(cx, cy, w, l, a), STRUCTURE)
        return True

    def _candidate_parents(self, night: int, min_side: float) -> list:
        return [
            s
            for s in self.structures
            if s.kind == "building"
            and s.born < night
            and s.died is None
            and not s.has_child
            and min(s.rect[2], s.rect[3]) >= min_side
            and self._inside(rect_polygon(*s.rect), 1.0)
        ]

    def _place_rooftop(
        self, night: int, kind: str, style: str | None, size_range, height: float
    ) -> bool:
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
        style = style or contrasting_style(rng, parent)
        self._building(
            cx,
            cy,
            w,
            l,
            pa,
            born=night,
            truth_class=kind if kind != "building" else "extension",
            kind=kind,
            style=style,
            height=height,
            base=parent.top,
            parent=parent.sid,
        )
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
            du, dv = (
                (sign * (across / 2 + depth / 2), offset_along)
                if side < 2
                else (offset_along, sign * (across / 2 + depth / 2))
            )
            w, l = (depth, ext_along) if side < 2 else (ext_along, depth)
            c, s = math.cos(pa), math.sin(pa)
            cx, cy = pcx + c * du - s * dv, pcy + s * du + c * dv
            poly = rect_polygon(cx, cy, w, l, pa)
            # check a slightly pushed-out copy so touching the parent is allowed
            pcx2, pcy2 = (
                cx + c * (0.4 * sign if side < 2 else 0) - s * (0.4 * sign if side >= 2 else 0),
                cy + s * (0.4 * sign if side < 2 else 0) + c * (0.4 * sign if side >= 2 else 0),
            )
            if not self._inside(poly, 1.0) or not self.occ.is_free(
                rect_polygon(pcx2, pcy2, w + 0.4, l + 0.4, pa)
            ):
                continue
            self._building(
                cx,
                cy,
                w,
                l,
                pa,
                born=night,
                truth_class="extension",
                kind="extension",
                style=contrasting_style(rng, parent),
                height=rng.uniform(3, max(3.2, parent.height)),
                parent=parent.sid,
            )
            parent.has_child = True
            self.occ.mark(poly, STRUCTURE)
            return True
        return self._place_rooftop(night, "extension", None, (3, 8), 3.0)

    def _place_site(self, night: int) -> bool:
        got = self._free_rect(
            (10, 30), (10, 24), tries=300, buffer=0.5, slots_first=False, in_gardens=True
        )
        if got is None:
            got = self._free_rect((10, 13), (10, 12), tries=300, buffer=0.3, in_gardens=True)
        if got is None:
            return False
        cx, cy, w, l, a = got
        self._add(
            kind="construction_site",
            rect=(cx, cy, w, l, a),
            height=0.0,
            base=0.0,
            roof="site",
            colour=roof_colour(self.rng, "site"),
            born=night,
            truth_class="construction_site",
        )
        self.occ.mark(rect_polygon(cx, cy, w, l, a), STRUCTURE)
        return True

    def _promote_sites(self, night: int) -> None:
        """In multi-night sequences a site from an earlier night may get its building."""
        for site in [
            s
            for s in self.structures
            if s.kind == "construction_site"
            and s.born < night
            and not s.has_child
            and s.died is None
        ]:
            if self.rng.random() < 0.5:
                cx, cy, w, l, a = site.rect
                self._building(
                    cx,
                    cy,
                    w * 0.7,
                    l * 0.7,
                    a,
                    born=night,
                    truth_class="new_building",
                    style="concrete",
                    parent=site.sid,
                )
                site.has_child = True

    def _develop_block(self, night: int) -> None:
        """Graded land -> a new lane and a row of houses on each side (each a new_building)."""
        rng = self.rng
        u0, v0, u1, v1 = self.graded_block
        vm = (v0 + v1) / 2
        lane_w = rng.uniform(4, 6)
        a, b = self._to_world(u0, vm), self._to_world(u1, vm)
        ang = math.atan2(b[1] - a[1], b[0] - a[0])
        lane = rect_polygon((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, u1 - u0, lane_w, ang)
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
                self._building(
                    cx,
                    cy,
                    width,
                    depth,
                    self.angle,
                    born=night,
                    truth_class="new_building",
                    style=style,
                    height=3.0 * int(rng.integers(2, 5)),
                )
                u += width + rng.uniform(2, 4)

    def _demolish(self, night: int) -> None:
        rng = self.rng
        n = int(rng.random() < min(0.9, self.side**2 / 15000)) + int(
            self.side**2 > 30000 and rng.random() < 0.5
        )
        pool = [
            s
            for s in self.structures
            if s.kind in ("building", "temporary_structure")
            and s.born < night
            and s.died is None
            and not s.has_child
            and s.base == 0
            and self._inside(rect_polygon(*s.rect), 0.5)
        ]
        for k in rng.permutation(len(pool))[:n]:
            pool[k].died = night
            self.surfaces.append((rect_polygon(*pool[k].rect), "rubble", night, None))

    # ---- vegetation
    def plant_trees(self) -> None:
        """Trees on free ground (a quarter of them may stand over roads)."""
        rng = self.rng
        target = int(self.side**2 / 240)
        planted, tries = 0, 0
        while planted < target and tries < target * 12:
            tries += 1
            r = rng.uniform(1.5, 4.0)
            cx, cy = rng.uniform(-r, self.side + r, 2)
            box = rect_polygon(cx, cy, 2.6 * r, 2.6 * r, 0.0)
            allowed = (FREE, ROAD) if rng.random() < 0.25 else (FREE,)  # some street trees
            if not self.occ.is_free(box, allowed):
                continue
            k = int(rng.integers(4, 9))
            ang = rng.uniform(0, 2 * np.pi, k)
            dist = rng.uniform(0.1, 0.55, k)
            lobes = np.stack([np.cos(ang) * dist, np.sin(ang) * dist, rng.uniform(0.4, 0.65, k)], 1)
            self.trees.append(
                Tree(float(cx), float(cy), float(r), float(rng.uniform(5, 12)), lobes)
            )
            self.occ.mark(box, TREE)
            planted += 1


def build_plan(rng: np.random.Generator, side_m: float, nights: int, options: dict) -> Plan:
    """Lay out a scene, plan ``nights`` nights of changes and plant its trees.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's planning generator (consumed in a fixed order).
    side_m : float
        Side of the square scene in metres.
    nights : int
        Number of transitions.
    options : dict
        See :class:`Planner`.

    Returns
    -------
    Plan
    """
    planner = Planner(rng, side_m, nights, options)
    planner.layout()
    planner.plan_changes()
    planner.plant_trees()
    return Plan(
        side_m,
        planner.angle,
        planner.roads,
        planner.surfaces,
        planner.structures,
        planner.trees,
        planner.car_lanes,
    )
