"""Render one epoch: paint the plan in layer order, then apply the camera's look."""

from __future__ import annotations

import cv2
import numpy as np

from detector.synth.canvas import Canvas, Textures
from detector.synth.draw import (
    paint_cars,
    paint_ground,
    paint_site,
    paint_structure,
    paint_surface,
    paint_tree,
)
from detector.synth.look import EpochLook
from detector.synth.plan import Plan, present


def render_epoch(
    plan: Plan, epoch: int, look: EpochLook, tex: Textures, size: int, gsd: float, seed: int
) -> np.ndarray:
    """Paint one epoch of a plan and pass it through the camera.

    Ground covers first, then construction sites and cars, then structures and trees from
    the lowest top to the highest (so taller objects and their shadows cover lower ones).

    Parameters
    ----------
    plan : Plan
    epoch : int
        0 = baseline; structures not present in this epoch are left out.
    look : EpochLook
        This epoch's look.
    tex : Textures
        The scene's textures (shared by all epochs).
    size : int
        Image side in pixels.
    gsd : float
        Metres per pixel.
    seed : int
        Scene seed (the epoch's car and sensor-noise generators derive from it).

    Returns
    -------
    numpy.ndarray
        ``(size, size, 3)`` uint8 RGB.
    """
    canvas = Canvas(np.empty((size, size, 3), np.float32), gsd, tex)
    paint_ground(canvas, look)
    layers: dict[str, list] = {}
    for poly, surface, born, died in plan.surfaces:
        if born <= epoch and (died is None or died > epoch):
            layers.setdefault(surface, []).append(poly)
    for poly, surface in plan.roads:
        layers.setdefault(surface, []).append(poly)
    for surface in ("garden", "yard", "graded", "lane", "asphalt", "new_lane", "rubble"):
        for poly in (
            layers.get(surface, []) if surface in ("graded", "rubble") else [layers.get(surface)]
        ):
            if poly is not None and len(poly):
                paint_surface(canvas, poly, surface, look, seed)
    for st in plan.structures:
        if st.kind == "construction_site" and present(st, epoch):
            paint_site(canvas, st)
    paint_cars(canvas, plan, np.random.default_rng([seed, 11, epoch]), look)
    drawables = [
        (st.top, 0, k)
        for k, st in enumerate(plan.structures)
        if st.kind != "construction_site" and present(st, epoch)
    ]
    drawables += [(tree.height, 1, k) for k, tree in enumerate(plan.trees)]
    for _, is_tree, k in sorted(drawables):
        if is_tree:
            paint_tree(canvas, plan.trees[k], look)
        else:
            paint_structure(canvas, plan.structures[k], look)
    return _finish(canvas.img, look, np.random.default_rng([seed, 13, epoch]))


def _finish(img: np.ndarray, look: EpochLook, rng: np.random.Generator) -> np.ndarray:
    """The camera: illumination (gamma, gains, offset), misregistration, sensor noise and JPEG artefacts."""
    out = np.empty(img.shape, np.uint8)
    np.clip(img + 0.5, 0, 255, out=img)
    out[:] = img
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack([np.power(levels, look.gamma) * g * 255.0 + look.offset for g in look.gains], 1)
    out = cv2.LUT(out, np.clip(lut + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3))
    dx, dy = look.shift
    if dx or dy:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out = cv2.warpAffine(
            out,
            m,
            (out.shape[1], out.shape[0]),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
    noise = (rng.standard_normal(out.shape[:2], dtype=np.float32) * look.noise_sigma).astype(
        np.int16
    )
    out = np.clip(out.astype(np.int16) + noise[..., None], 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality]
    )
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
