"""The look of each epoch: sun and shadows, vegetation season, radiometry, noise and shift.

These are the distractors that are *not* changes; they vary between epochs of one scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class EpochLook:
    """How one epoch looks: sun, season, radiometry, sensor noise, JPEG and misregistration."""

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


def shadow_offset(look: EpochLook, height: float) -> np.ndarray:
    """Where the shadow of a point ``height`` metres up falls, relative to its foot.

    Parameters
    ----------
    look : EpochLook
    height : float
        Metres above the ground.

    Returns
    -------
    numpy.ndarray
        ``(dx, dy)`` in metres.
    """
    length = height / math.tan(look.sun_elevation)
    return np.array([math.cos(look.sun_azimuth), math.sin(look.sun_azimuth)]) * length


def veg_colour(look: EpochLook, ground: bool = False) -> np.ndarray:
    """The season's vegetation colour (green .. brown).

    Parameters
    ----------
    look : EpochLook
    ground : bool
        Grass (True) or tree crowns (False).

    Returns
    -------
    numpy.ndarray
        RGB float32.
    """
    green = np.array([72, 108, 50] if ground else [50, 88, 42], np.float32)
    brown = np.array([122, 118, 74] if ground else [88, 98, 52], np.float32)
    return green * (1 - look.veg_season) + brown * look.veg_season


def epoch_looks(rng: np.random.Generator, epochs: int, max_shift_px: float) -> list[EpochLook]:
    """Draw the look of every epoch; epoch 0 is not shifted, later ones by up to ``max_shift_px``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's look generator.
    epochs : int
        Number of epochs (nights + 1).
    max_shift_px : float
        Largest misregistration of epochs >= 1, in pixels.

    Returns
    -------
    list of EpochLook
    """
    looks = []
    azimuth = rng.uniform(0, 2 * np.pi)
    for e in range(epochs):
        if e:
            azimuth += rng.uniform(0.35, 1.6) * rng.choice([-1, 1])
            r, th = rng.uniform(0.3, 1.0) * max_shift_px, rng.uniform(0, 2 * np.pi)
            shift = (float(r * math.cos(th)), float(r * math.sin(th)))
        else:
            shift = (0.0, 0.0)
        looks.append(
            EpochLook(
                sun_azimuth=float(azimuth),
                sun_elevation=float(np.radians(rng.uniform(58, 80))),
                veg_season=float(rng.uniform(0, 0.8)),
                veg_growth=float(1 + 0.03 * e + rng.uniform(0, 0.03)),
                gamma=float(rng.uniform(0.85, 1.15)),
                gains=tuple(float(g) for g in rng.uniform(0.93, 1.07, 3)),
                offset=float(rng.uniform(-8, 8)),
                noise_sigma=float(rng.uniform(1.5, 3.0)),
                jpeg_quality=int(rng.integers(80, 93)),
                shift=shift,
            )
        )
    return looks
