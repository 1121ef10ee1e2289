"""What a roof looks like: its style, colour and the clutter on flat roofs."""

from __future__ import annotations

import numpy as np

from detector.synth.plan import Structure

ROOF_STYLES = ("concrete", "terracotta", "dark", "blue_steel", "white_steel")
ROOF_WEIGHTS = np.array([0.52, 0.17, 0.11, 0.10, 0.10])


def roof_colour(rng: np.random.Generator, style: str) -> tuple[float, float, float]:
    """A random RGB colour for a roof style (``"site"``: cleared red-brown soil).

    Parameters
    ----------
    rng : numpy.random.Generator
    style : str
        One of :data:`ROOF_STYLES` or ``"site"``.

    Returns
    -------
    tuple of float
        RGB, 0..255.
    """
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
    return (
        rng.uniform(185, 205),
        rng.uniform(100, 115),
        rng.uniform(52, 66),
    )  # red-brown cleared soil


def contrasting_style(rng: np.random.Generator, parent: Structure) -> str:
    """A roof style that differs clearly from the parent's (rooftop additions stand out).

    Parameters
    ----------
    rng : numpy.random.Generator
    parent : Structure
        The building the addition stands on or against.

    Returns
    -------
    str
    """
    options = [
        s
        for s in ("blue_steel", "white_steel", "terracotta", "concrete", "dark")
        if s != parent.roof
    ]
    if parent.roof in ("concrete", "white_steel"):
        options = [s for s in options if s not in ("concrete", "white_steel")]
    return options[int(rng.integers(len(options)))]


def make_clutter(rng: np.random.Generator, w: float, l: float) -> list:
    """Water tanks, AC units and a stair housing on a flat roof (roof-local metres).

    Parameters
    ----------
    rng : numpy.random.Generator
    w, l : float
        Roof sides in metres; roofs under 5 m get nothing.

    Returns
    -------
    list of tuple
        ``(kind, du, dv, size..., height)`` per item, offsets from the roof centre along its axes.
    """
    items = []
    if w < 5 or l < 5:
        return items
    if rng.random() < 0.7:  # stair housing
        sw, sl = rng.uniform(2.2, 3.2), rng.uniform(2.5, 3.5)
        items.append(
            (
                "stair",
                rng.uniform(-w / 2 + sw / 2 + 0.4, w / 2 - sw / 2 - 0.4),
                rng.uniform(-l / 2 + sl / 2 + 0.4, l / 2 - sl / 2 - 0.4),
                sw,
                sl,
                2.4,
            )
        )
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.45, 0.8)
        items.append(
            (
                "tank",
                rng.uniform(-w / 2 + r + 0.4, w / 2 - r - 0.4),
                rng.uniform(-l / 2 + r + 0.4, l / 2 - r - 0.4),
                r,
                int(rng.integers(4)),
                1.3,
            )
        )
    for _ in range(int(rng.integers(0, 5))):
        items.append(
            (
                "ac",
                rng.uniform(-w / 2 + 0.8, w / 2 - 0.8),
                rng.uniform(-l / 2 + 0.6, l / 2 - 0.6),
                0.9,
                0.6,
                0.6,
            )
        )
    return items
