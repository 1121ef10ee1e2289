"""The painting surface: a scene's noise textures and a float image that paints polygons in metres."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def _noise_field(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Smooth noise, unit-ish std, with features about ``scale_px`` pixels wide."""
    if scale_px <= 1.5:
        return rng.standard_normal((size, size)).astype(np.float32)
    n = int(math.ceil(size / scale_px)) + 3
    small = rng.standard_normal((n, n)).astype(np.float32)
    big = cv2.resize(small, (int(n * scale_px), int(n * scale_px)), interpolation=cv2.INTER_CUBIC)
    off = int(scale_px)
    out = big[off : off + size, off : off + size]
    return out / max(float(out.std()), 1e-6)


@dataclass
class Textures:
    """Noise fields of one scene, shared by all its epochs (so texture is not change)."""

    fine: np.ndarray  # ~0.3 m
    mid: np.ndarray  # ~1.5 m
    coarse: np.ndarray  # ~8 m
    huge: np.ndarray  # ~40 m
    ground: np.ndarray  # (H, W, 3) bare ground colour
    grass: np.ndarray  # (H, W) grass cover 0..1
    grass_detail: np.ndarray  # (H, W) grass brightness texture
    detail: np.ndarray  # (H, W) fine + mid noise used to texture painted surfaces


def make_textures(rng: np.random.Generator, size: int, gsd: float) -> Textures:
    """Noise at about 0.3, 1.5, 8 and 40 m, the bare-ground colour and the grass cover.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's texture generator.
    size : int
        Image side in pixels.
    gsd : float
        Metres per pixel (feature sizes are in metres).

    Returns
    -------
    Textures
    """
    fine, mid, coarse, huge = (_noise_field(rng, size, s / gsd) for s in (0.3, 1.5, 8.0, 40.0))
    lum = coarse * 7 + mid * 5 + fine * 5 + huge * 6
    ground = np.empty((size, size, 3), np.float32)
    ground[:] = np.array([146, 138, 122], np.float32)
    ground += lum[..., None]
    grass = np.clip((huge * 0.7 + coarse * 0.5 - 0.6) * 1.4, 0, 1)
    return Textures(
        fine, mid, coarse, huge, ground, grass, mid * 10 + fine * 8, fine * 0.6 + mid * 0.4
    )


class Canvas:
    """A float32 RGB image plus helpers to paint anti-aliased polygons in metres.

    Parameters
    ----------
    image : numpy.ndarray
        ``(size, size, 3)`` float32, painted in place.
    gsd : float
        Metres per pixel.
    tex : Textures
        Noise used to texture painted surfaces.
    """

    def __init__(self, image: np.ndarray, gsd: float, tex: Textures):
        self.img = image
        self.gsd = gsd
        self.size = image.shape[0]
        self.tex = tex

    def mask(self, poly_m, pad: int = 1):
        """Anti-aliased coverage of a polygon, or of the union of a list of them, in metres.

        Parameters
        ----------
        poly_m : numpy.ndarray or list of numpy.ndarray
            ``(N, 2)`` polygon(s) in metres.
        pad : int
            Pixels added around the bounding box.

        Returns
        -------
        tuple or None
            ``((row slice, column slice), float32 alpha 0..1)``, or None outside the image.
        """
        polys = [p / self.gsd for p in (poly_m if isinstance(poly_m, list) else [poly_m])]
        allpts = np.vstack(polys)
        x0, y0 = np.floor(allpts.min(0)).astype(int) - pad
        x1, y1 = np.ceil(allpts.max(0)).astype(int) + pad
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for pts in polys:
            cv2.fillPoly(
                m, [np.round((pts - 0.5 - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4
            )
        return (slice(y0, y1), slice(x0, x1)), m.astype(np.float32) / 255.0

    def paint(
        self, poly_m: np.ndarray, colour, noise_amp: float = 6.0, pattern=None, alpha: float = 1.0
    ) -> None:
        """Blend a textured colour into the image under a polygon.

        Parameters
        ----------
        poly_m : numpy.ndarray or list of numpy.ndarray
            Polygon(s) in metres.
        colour : sequence of float
            RGB, 0..255.
        noise_amp : float
            Amplitude of the shared detail texture added to the colour (0: flat).
        pattern : callable, optional
            ``pattern(roi) -> (h, w) float32`` multiplied into the fill (e.g. :meth:`stripes`).
        alpha : float
            Opacity.
        """
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
        """Multiply the image under a polygon (a shadow) by per-channel ``factors``.

        Parameters
        ----------
        poly_m : numpy.ndarray or list of numpy.ndarray
            Polygon(s) in metres.
        factors : sequence of float
            RGB factors at full coverage (bluish shadows by default).
        """
        got = self.mask(poly_m, pad=2)
        if got is None:
            return
        roi, m = got
        if self.gsd < 0.2:
            m = cv2.GaussianBlur(m, (3, 3), 0)
        f = 1 - m[..., None] * (1 - np.asarray(factors, np.float32))
        self.img[roi] *= f

    def stripes(self, rect, period_m: float, amp: float, across: bool = True):
        """A pattern function: sinusoidal stripes across (or along) a rotated rectangle.

        Parameters
        ----------
        rect : tuple of float
            ``(cx, cy, w, l, angle)`` in metres / radians; only the centre and angle matter.
        period_m : float
            Stripe period in metres (at least 2.6 pixels).
        amp : float
            Relative amplitude.
        across : bool
            Stripes vary along the rectangle's ``w`` axis (True) or its ``l`` axis.

        Returns
        -------
        callable
            ``pattern(roi) -> (h, w) float32`` factors around 1.
        """
        cx, cy, w, l, a = rect
        period = max(period_m / self.gsd, 2.6)
        dx, dy = (math.cos(a), math.sin(a)) if across else (-math.sin(a), math.cos(a))

        def pattern(roi):
            ys = np.arange(roi[0].start, roi[0].stop, dtype=np.float32)[:, None] + 0.5
            xs = np.arange(roi[1].start, roi[1].stop, dtype=np.float32)[None, :] + 0.5
            d = (xs - cx / self.gsd) * dx + (ys - cy / self.gsd) * dy
            return 1 + amp * np.sin(d * (2 * np.pi / period)).astype(np.float32)

        return pattern
