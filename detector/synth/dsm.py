"""A DSM per epoch of a synthetic scene, as photogrammetry would make it from that flight.

The plan knows every structure's height, so the DSM has exact truth: ground (a gentle tilt
and undulation), every standing structure's roof at ``base + height``, tree crowns as domes
that grow with the epoch's vegetation growth (radius *and* height). Then what makes a real
drone DSM imperfect: edges smeared over :data:`EDGE_SMEAR_M` (image matching blurs height
steps), noise of :data:`NOISE_M` everywhere and :data:`VEG_NOISE_M` on vegetation, a vertical
offset per survey (epoch 0: none; later epochs up to ±:data:`MAX_OFFSET_M`) and the epoch's
misregistration (the same shift as its image). Heights are metres above an arbitrary datum
(:data:`GROUND_M` on average).

Opt-in (``generate_scene(..., dsm=True)``, ``buildwatch synth --dsm``): existing scenes and
their bytes are unchanged, and the DSM's random draws come from their own generators.
"""

from __future__ import annotations

import cv2
import numpy as np

from detector.synth.geometry import rect_polygon
from detector.synth.look import EpochLook
from detector.synth.plan import Plan, present

GROUND_M = 20.0
EDGE_SMEAR_M = 0.3  # Gaussian sigma of the smear of height steps
NOISE_M = 0.08
VEG_NOISE_M = 0.5
MAX_OFFSET_M = 1.0


def _fill(dsm: np.ndarray, poly_m: np.ndarray, gsd: float, height) -> None:
    """Raise ``dsm`` to ``height`` (scalar or array) inside a metre polygon (pixel-corner convention)."""
    mask = np.zeros(dsm.shape, np.uint8)
    pts = np.round((poly_m / gsd - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    m = mask.astype(bool)
    dsm[m] = np.maximum(dsm[m], height[m] if isinstance(height, np.ndarray) else height)


def survey_offset(seed: int, epoch: int) -> float:
    """The vertical offset of an epoch's survey (0 for the baseline), metres."""
    if epoch == 0:
        return 0.0
    return float(np.random.default_rng([int(seed), 21, epoch]).uniform(-MAX_OFFSET_M, MAX_OFFSET_M))


def render_dsm(
    plan: Plan, epoch: int, look: EpochLook, size: int, gsd: float, seed: int
) -> np.ndarray:
    """The DSM of one epoch.

    Parameters
    ----------
    plan : Plan
    epoch : int
    look : EpochLook
        The epoch's look (vegetation growth and misregistration shift).
    size : int
        Side in pixels.
    gsd : float
        Metres per pixel.
    seed : int
        Scene seed (the DSM's own generators derive from it).

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32 heights in metres.
    """
    rng = np.random.default_rng([int(seed), 22])  # the ground is the same in every epoch
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * gsd
    tilt = rng.uniform(-0.01, 0.01, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)
    wave = 200.0
    ground = (
        GROUND_M
        + tilt[0] * xx
        + tilt[1] * yy
        + 0.5 * np.sin(2 * np.pi * xx / wave + phase[0]) * np.cos(2 * np.pi * yy / wave + phase[1])
    )
    dsm = ground.astype(np.float32)
    for st in sorted(
        (s for s in plan.structures if present(s, epoch) and s.kind != "construction_site"),
        key=lambda s: s.top,
    ):
        _fill(dsm, rect_polygon(*st.rect), gsd, ground + st.top)
    veg = np.zeros((size, size), bool)
    for tree in plan.trees:
        r = tree.radius * look.veg_growth
        top = tree.height * look.veg_growth
        for dx, dy, lr in tree.lobes:
            cx, cy, rr = tree.cx + dx * r, tree.cy + dy * r, lr * r
            x0, x1 = max(0, int((cx - rr) / gsd)), min(size, int((cx + rr) / gsd) + 2)
            y0, y1 = max(0, int((cy - rr) / gsd)), min(size, int((cy + rr) / gsd) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            px, py = xx[y0:y1, x0:x1] + gsd / 2, yy[y0:y1, x0:x1] + gsd / 2
            q = 1 - ((px - cx) ** 2 + (py - cy) ** 2) / (rr * rr)
            inside = q > 0
            dome = ground[y0:y1, x0:x1] + top * (0.6 + 0.4 * np.sqrt(np.clip(q, 0, 1)))
            win = dsm[y0:y1, x0:x1]
            win[inside] = np.maximum(win[inside], dome[inside])
            veg[y0:y1, x0:x1] |= inside
    dsm = cv2.GaussianBlur(dsm, (0, 0), EDGE_SMEAR_M / gsd)
    noise_rng = np.random.default_rng([int(seed), 23, epoch])
    noise = noise_rng.standard_normal((size, size)).astype(np.float32)
    dsm += noise * np.where(veg, VEG_NOISE_M, NOISE_M).astype(np.float32) + survey_offset(
        seed, epoch
    )
    dx, dy = look.shift
    if dx or dy:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        dsm = cv2.warpAffine(
            dsm, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
    return dsm.astype(np.float32)
