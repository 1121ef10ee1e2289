"""Per-tile co-registration: the residual shift of the current epoch against the baseline.

Phase correlation on gradient magnitude (robust to illumination and season shifts between
epochs), windowed to suppress edge effects. A tile whose shift is larger than allowed or whose
correlation peak is weak is *flagged* rather than turned into false changes.
"""

from __future__ import annotations

import cv2
import numpy as np

from detector.types import Registration

MIN_SIDE_PX = 48  # smallest valid extent (pixels) on which a shift is still estimated


def _gradient(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray = cv2.GaussianBlur(gray, (0, 0), 1.0)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def estimate_shift(baseline: np.ndarray, current: np.ndarray, valid: np.ndarray, gsd: float,
                   max_shift_m: float = 3.0, min_quality: float = 0.05) -> Registration:
    """Estimate how far ``current`` is displaced from ``baseline`` (pixels and metres).

    Parameters
    ----------
    baseline, current : (H, W, 3) uint8 arrays on the same grid.
    valid : (H, W) bool, pixels valid in both epochs.
    gsd : metres per pixel.
    max_shift_m : shifts larger than this are not corrected; the tile is flagged.
    min_quality : minimum phase-correlation peak response (0..1).

    Returns
    -------
    Registration
        ``dx_px, dy_px``: the current image content sits at (x + dx, y + dy) of the baseline's (x, y).
    """
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size < MIN_SIDE_PX or cols.size < MIN_SIDE_PX or valid.sum() < MIN_SIDE_PX**2:
        return Registration(0.0, 0.0, 0.0, 0.0, False, "too little valid overlap to register")
    # correlate on the valid bounding box only: tiles at the mosaic edge are mostly empty
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = _gradient(baseline[box])
    b = _gradient(current[box])
    a[~valid[box]] = 0
    b[~valid[box]] = 0
    window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    shift_m = float(np.hypot(dx, dy) * gsd)
    if not np.isfinite(response) or response < min_quality:
        return Registration(dx, dy, shift_m, float(response), False, f"weak correlation ({response:.3f})")
    if shift_m > max_shift_m:
        return Registration(dx, dy, shift_m, float(response), False,
                            f"shift {shift_m:.2f} m exceeds the {max_shift_m:.1f} m maximum")
    return Registration(float(dx), float(dy), shift_m, float(response), True)


def apply_shift(image: np.ndarray, valid: np.ndarray, reg: Registration) -> tuple[np.ndarray, np.ndarray]:
    """Move ``image`` by (-dx, -dy) so that it lines up with the baseline; returns image and validity."""
    if not reg.ok or (abs(reg.dx_px) < 0.05 and abs(reg.dy_px) < 0.05):
        return image, valid
    m = np.float32([[1, 0, -reg.dx_px], [0, 1, -reg.dy_px]])
    h, w = valid.shape
    moved = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    moved_valid = cv2.warpAffine(valid.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return moved, moved_valid


COARSE_MAX_SIDE = 2048  # pixels of the coarse whole-mosaic read used for the fallback shift


def estimate_mosaic_shift(baseline_info, current_info, grid, stretches=(None, None),
                          max_shift_m: float = 3.0, min_quality: float = 0.05) -> Registration:
    """One shift for the whole pair, from a coarse read of both mosaics (bounded memory).

    Tiles whose own correlation is weak — typically because most of the tile changed, as in a
    whole-block development — fall back to this estimate instead of being dropped. The shift is
    returned in pixels of the *working* grid.
    """
    from dataclasses import replace

    from detector.night.mosaic import EpochReader

    factor = max(1.0, max(grid.width, grid.height) / COARSE_MAX_SIDE)
    coarse = replace(grid, gsd=grid.gsd * factor, width=max(1, int(grid.width / factor)),
                     height=max(1, int(grid.height / factor)))
    readers = [EpochReader(baseline_info, coarse, stretches[0]), EpochReader(current_info, coarse, stretches[1])]
    try:
        (b, vb), (c, vc) = (r.read(0, 0, coarse.width, coarse.height) for r in readers)
    finally:
        for r in readers:
            r.close()
    reg = estimate_shift(b, c, vb & vc, coarse.gsd, max_shift_m, min_quality)
    return Registration(reg.dx_px * factor, reg.dy_px * factor, reg.shift_m, reg.quality, reg.ok, reg.reason,
                        source="mosaic")
