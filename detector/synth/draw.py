"""Painters: ground, ground covers, roofs with their shadows, construction sites, trees and cars.

Each paints one kind of object of the plan onto a :class:`~detector.synth.canvas.Canvas`,
in metres, for one epoch's :class:`~detector.synth.look.EpochLook`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from detector.synth.canvas import Canvas
from detector.synth.geometry import rect_polygon
from detector.synth.look import EpochLook, shadow_offset, veg_colour
from detector.synth.plan import Plan, Structure, Tree

_SURFACES = {
    "asphalt": ((82, 84, 88), 5.0),
    "lane": ((150, 146, 138), 7.0),
    "new_lane": ((178, 176, 170), 4.0),
    "yard": ((158, 150, 136), 9.0),
    "graded": ((196, 176, 138), 6.0),
    "rubble": ((140, 128, 112), 22.0),
}


def _shadow_polygon(poly: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Convex hull of a polygon and its copy moved by ``offset`` (the shadow an upright box casts)."""
    return cv2.convexHull(np.vstack([poly, poly + offset]).astype(np.float32))[:, 0, :].astype(
        np.float64
    )


def paint_ground(canvas: Canvas, look: EpochLook) -> None:
    """Bare/paved ground with noise at several scales, grass patches in season colour.

    Parameters
    ----------
    canvas : Canvas
        Overwritten entirely.
    look : EpochLook
    """
    t = canvas.tex
    green = veg_colour(look, ground=True)
    green_img = t.grass_detail[..., None] + green
    canvas.img[:] = cv2.blendLinear(t.ground, green_img, 1.0 - t.grass, t.grass)


def paint_surface(
    canvas: Canvas, poly: np.ndarray, surface: str, look: EpochLook, seed: int
) -> None:
    """Paint one ground cover (a polygon or a list of them) in its colour and texture.

    Parameters
    ----------
    canvas : Canvas
    poly : numpy.ndarray or list of numpy.ndarray
        Polygon(s) in metres.
    surface : str
        ``"garden"`` or a key of ``_SURFACES`` (asphalt, lane, new_lane, yard, graded, rubble).
    look : EpochLook
    seed : int
        Scene seed (sets the direction of the grading stripes).
    """
    if surface == "garden":
        canvas.paint(poly, veg_colour(look, ground=True) + 8, noise_amp=14)
        return
    colour, amp = _SURFACES[surface]
    if surface == "graded":
        cx, cy = np.vstack(poly).mean(0) if isinstance(poly, list) else poly.mean(0)
        rect = (cx, cy, 1, 1, (seed % 628) / 100.0)
        canvas.paint(poly, colour, amp, pattern=canvas.stripes(rect, 2.6, 0.05))
    else:
        canvas.paint(poly, colour, amp)


def paint_structure(canvas: Canvas, st: Structure, look: EpochLook) -> None:
    """Paint a structure's shadow and roof: ridged steel, hipped terracotta or flat with clutter.

    Parameters
    ----------
    canvas : Canvas
    st : Structure
    look : EpochLook
    """
    poly = rect_polygon(*st.rect)
    if st.kind == "construction_site":
        paint_site(canvas, st)
        return
    off = shadow_offset(look, st.height)
    canvas.darken(_shadow_polygon(poly, off))
    colour = np.asarray(st.colour, np.float32)
    cx, cy, w, l, a = st.rect
    if st.roof in ("blue_steel", "white_steel"):
        canvas.paint(poly, colour, 3.0, pattern=canvas.stripes(st.rect, 0.28, 0.10, across=w < l))
        ridge = (cx, cy, w, 0.25, a) if w >= l else (cx, cy, 0.25, l, a)
        canvas.paint(rect_polygon(*ridge), colour * 0.9, 2.0)
        return
    if st.roof == "terracotta":
        # hip roof: the half facing the sun is lighter
        sun_side = -np.array([math.cos(look.sun_azimuth), math.sin(look.sun_azimuth)])
        nrm = (
            np.array([-math.sin(a), math.cos(a)])
            if w >= l
            else np.array([math.cos(a), math.sin(a)])
        )
        lit = 1.08 if float(nrm @ sun_side) > 0 else 0.86
        if w >= l:
            halves = [
                (cx + nrm[0] * l / 4, cy + nrm[1] * l / 4, w, l / 2, a),
                (cx - nrm[0] * l / 4, cy - nrm[1] * l / 4, w, l / 2, a),
            ]
        else:
            halves = [
                (cx + nrm[0] * w / 4, cy + nrm[1] * w / 4, w / 2, l, a),
                (cx - nrm[0] * w / 4, cy - nrm[1] * w / 4, w / 2, l, a),
            ]
        for rect, factor in zip(halves, (lit, 1.94 - lit)):
            canvas.paint(
                rect_polygon(*rect),
                colour * factor,
                5.0,
                pattern=canvas.stripes(rect, 0.32, 0.07, across=w < l),
            )
        return
    # flat roof with parapet, stains and clutter
    canvas.paint(poly, colour * 0.82, 4.0)
    inset = min(0.35, w / 6, l / 6)
    canvas.paint(rect_polygon(cx, cy, w - 2 * inset, l - 2 * inset, a), colour, 8.0)
    c, s = math.cos(a), math.sin(a)
    for item in st.clutter:
        ix, iy = cx + c * item[1] - s * item[2], cy + s * item[1] + c * item[2]
        small_off = shadow_offset(look, item[-1])
        if item[0] == "tank":
            circle = np.stack(
                [
                    ix + item[3] * np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                    iy + item[3] * np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                ],
                1,
            )
            canvas.darken(_shadow_polygon(circle, small_off))
            tank_colour = ((40, 80, 170), (35, 35, 38), (205, 205, 200), (200, 170, 60))[item[4]]
            canvas.paint(circle, tank_colour, 4.0)
        else:
            box = rect_polygon(ix, iy, item[3], item[4], a)
            canvas.darken(_shadow_polygon(box, small_off))
            canvas.paint(box, colour * 1.07 if item[0] == "stair" else (196, 198, 196), 4.0)


def paint_site(canvas: Canvas, st: Structure) -> None:
    """Cleared red-brown ground, tyre tracks, a concrete foundation and a scaffold grid.

    Parameters
    ----------
    canvas : Canvas
    st : Structure
        A ``construction_site``; its ``texture_seed`` places the foundation.
    """
    cx, cy, w, l, a = st.rect
    poly = rect_polygon(*st.rect)
    canvas.paint(poly, st.colour, 12.0, pattern=canvas.stripes((cx, cy, w, l, a + 0.5), 1.1, 0.05))
    rng = np.random.default_rng(st.texture_seed)
    fw, fl = w * rng.uniform(0.5, 0.72), l * rng.uniform(0.5, 0.72)
    du, dv = (
        rng.uniform(-(w - fw) / 2 + 1, (w - fw) / 2 - 1),
        rng.uniform(-(l - fl) / 2 + 1, (l - fl) / 2 - 1),
    )
    c, s = math.cos(a), math.sin(a)
    fx, fy = cx + c * du - s * dv, cy + s * du + c * dv
    canvas.paint(rect_polygon(fx, fy, fw, fl, a), (104, 102, 98), 6.0)  # wet concrete slab
    # rebar / formwork grid inside the foundation, scaffold mesh band along two sides
    step = 1.5
    for t in np.arange(-fw / 2 + step, fw / 2, step):
        canvas.paint(
            rect_polygon(fx + c * t, fy + s * t, max(0.08, canvas.gsd * 0.9), fl, a),
            (150, 120, 95),
            0.0,
        )
    for t in np.arange(-fl / 2 + step, fl / 2, step):
        canvas.paint(
            rect_polygon(fx - s * t, fy + c * t, fw, max(0.08, canvas.gsd * 0.9), a),
            (150, 120, 95),
            0.0,
        )
    band = 1.3
    for du2, dv2, bw, bl in (
        (0, -fl / 2 - band / 2, fw + 2 * band, band),
        (-fw / 2 - band / 2, 0, band, fl),
    ):
        bx, by = fx + c * du2 - s * dv2, fy + s * du2 + c * dv2
        rect = (bx, by, bw, bl, a)
        canvas.paint(
            rect_polygon(*rect),
            (52, 110, 70),
            5.0,
            pattern=lambda roi, r=rect: (
                canvas.stripes(r, 0.5, 0.25)(roi) * canvas.stripes(r, 0.5, 0.25, False)(roi)
            ),
        )


def paint_tree(canvas: Canvas, tree: Tree, look: EpochLook) -> None:
    """Paint a tree's shadow and its lobed crown, lit on the sun's side, grown by the epoch's growth.

    Parameters
    ----------
    canvas : Canvas
    tree : Tree
    look : EpochLook
    """
    r = tree.radius * look.veg_growth
    colour = veg_colour(look)
    off = shadow_offset(look, tree.height)
    lobes = [(tree.cx + dx * r, tree.cy + dy * r, lr * r) for dx, dy, lr in tree.lobes]
    angles = np.linspace(0, 2 * np.pi, 18, endpoint=False)
    circles = [
        np.stack([x + rr * np.cos(angles), y + rr * np.sin(angles)], 1) for x, y, rr in lobes
    ]
    canvas.darken([circ + off for circ in circles], (0.5, 0.55, 0.62))
    sun_dir = -np.array([math.cos(look.sun_azimuth), math.sin(look.sun_azimuth)])
    canvas.paint(circles, colour * 0.8, 10.0)
    highlights = [
        np.stack(
            [
                x + sun_dir[0] * rr * 0.25 + rr * 0.6 * np.cos(angles),
                y + sun_dir[1] * rr * 0.25 + rr * 0.6 * np.sin(angles),
            ],
            1,
        )
        for x, y, rr in lobes
    ]
    canvas.paint(highlights, colour * 1.2, 12.0, alpha=0.7)


def paint_cars(canvas: Canvas, plan: Plan, rng: np.random.Generator, look: EpochLook) -> None:
    """Park random cars along the wide roads (they move between epochs: not changes).

    Parameters
    ----------
    canvas : Canvas
    plan : Plan
    rng : numpy.random.Generator
        The epoch's car generator.
    look : EpochLook
    """
    palette = (
        (225, 225, 228),
        (190, 192, 196),
        (30, 30, 34),
        (150, 30, 30),
        (40, 60, 120),
        (120, 120, 125),
    )
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
            car = rect_polygon(cx, cy, 4.4, 1.8, ang)
            canvas.darken(car + shadow_offset(look, 1.4), (0.55, 0.58, 0.65))
            colour = np.asarray(palette[int(rng.integers(len(palette)))], np.float32)
            canvas.paint(car, colour, 4.0)
            canvas.paint(rect_polygon(cx, cy, 1.6, 1.5, ang), colour * 0.55, 2.0)  # windscreen band
