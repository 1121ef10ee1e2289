"""Refinement: match an orthorectified frame to the baseline (features + RANSAC) and return the
map-to-map correction, or a rejection with its reason."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detector.flight.config import OrthoConfig
from detector.geo.grid import Grid


@dataclass
class Refinement:
    """Outcome of matching one orthorectified frame to the baseline."""

    ok: bool
    correction: np.ndarray | None = None  # (3, 3) map -> map in the baseline CRS
    shift_m: float = float(
        "nan"
    )  # size of the correction at the frame centre (the offset before refinement)
    rotation_deg: float = float("nan")
    residual_m: float = float("nan")  # RMS of the inliers after the correction
    inliers: int = 0
    matches: int = 0
    reason: str = ""


def _detector(kind: str):
    import cv2

    if kind == "sift":
        return cv2.SIFT_create(nfeatures=3000), cv2.NORM_L2
    return cv2.ORB_create(
        nfeatures=5000, fastThreshold=10, edgeThreshold=15, patchSize=31
    ), cv2.NORM_HAMMING


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)


def match_to_baseline(
    frame_rgb: np.ndarray,
    frame_valid: np.ndarray,
    base_rgb: np.ndarray,
    base_valid: np.ndarray,
    grid: Grid,
    cfg: OrthoConfig,
    metre_per_unit: float = 1.0,
) -> Refinement:
    """Fit the transform that moves the orthorectified frame onto the baseline (same ``grid``).

    Returns a rejected :class:`Refinement` (``ok=False`` with a reason) when there are too
    few inliers, the residual is high, or the correction is implausibly large.
    """
    import cv2

    detector, norm = _detector(cfg.features)
    # small windows (a coarse baseline) give too few features: match on upsampled copies
    up = int(
        min(4, max(1, math.ceil(cfg.min_match_side_px / max(1, min(grid.width, grid.height)))))
    )
    erode = np.ones((5, 5), np.uint8)
    images = []
    for rgb, valid in ((frame_rgb, frame_valid), (base_rgb, base_valid)):
        gray, mask = _gray(rgb), cv2.erode(valid.astype(np.uint8) * 255, erode)
        if up > 1:
            gray = cv2.resize(gray, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
            mask = cv2.resize(mask, None, fx=up, fy=up, interpolation=cv2.INTER_NEAREST)
        images.append((gray, mask))
    kf, df = detector.detectAndCompute(*images[0])
    kb, db = detector.detectAndCompute(*images[1])
    if df is None or db is None or len(kf) < cfg.min_inliers or len(kb) < cfg.min_inliers:
        return Refinement(
            ok=False, reason=f"too few features (frame {len(kf)}, baseline {len(kb)})"
        )
    matcher = cv2.BFMatcher(norm)
    pairs = matcher.knnMatch(df, db, k=2)
    res_m = grid.res_x * metre_per_unit
    max_shift_px = cfg.max_correction_m / res_m + 0.5 * math.hypot(
        grid.width, grid.height
    ) * math.sin(math.radians(cfg.max_rotation_deg))
    src, dst = [], []
    for pair in pairs:
        if len(pair) < 2 or pair[0].distance > 0.85 * pair[1].distance:
            continue
        p, q = kf[pair[0].queryIdx].pt, kb[pair[0].trainIdx].pt
        p, q = (
            ((p[0] + 0.5) / up - 0.5, (p[1] + 0.5) / up - 0.5),
            ((q[0] + 0.5) / up - 0.5, (q[1] + 0.5) / up - 0.5),
        )
        if math.hypot(q[0] - p[0], q[1] - p[1]) <= max_shift_px:
            src.append(p)
            dst.append(q)
    n = len(src)
    if n < cfg.min_inliers:
        return Refinement(
            ok=False, matches=n, reason=f"too few feature matches ({n} < {cfg.min_inliers})"
        )
    src_a, dst_a = np.float32(src), np.float32(dst)
    thresh = max(2.0, 1.5 * cfg.max_residual_px)
    if cfg.refine_model == "homography":
        h, inl = cv2.findHomography(
            src_a, dst_a, cv2.RANSAC, thresh, maxIters=5000, confidence=0.999
        )
        pix = h
    else:
        fit = (
            cv2.estimateAffinePartial2D
            if cfg.refine_model == "similarity"
            else cv2.estimateAffine2D
        )
        a, inl = fit(
            src_a,
            dst_a,
            method=cv2.RANSAC,
            ransacReprojThreshold=thresh,
            maxIters=5000,
            confidence=0.999,
            refineIters=20,
        )
        pix = None if a is None else np.vstack([a, [0, 0, 1]])
    if pix is None or inl is None:
        return Refinement(
            ok=False, matches=n, reason="no consistent transform between frame and baseline"
        )
    inl = inl.ravel().astype(bool)
    k = int(inl.sum())
    proj = cv2.perspectiveTransform(src_a[inl].reshape(-1, 1, 2), pix).reshape(-1, 2)
    residual_px = (
        float(np.sqrt(np.mean(np.sum((proj - dst_a[inl]) ** 2, axis=1)))) if k else float("inf")
    )
    t = np.array(grid.transform).reshape(3, 3)
    correction = t @ pix @ np.linalg.inv(t)
    centre = np.array([grid.width / 2, grid.height / 2, 1.0])
    moved = pix @ centre
    shift_m = float(
        math.hypot(moved[0] / moved[2] - centre[0], moved[1] / moved[2] - centre[1]) * res_m
    )
    rotation = float(math.degrees(math.atan2(pix[1, 0], pix[0, 0])))
    scale = float(math.sqrt(abs(np.linalg.det(pix[:2, :2]))))
    result = Refinement(
        ok=False,
        correction=correction,
        shift_m=shift_m,
        rotation_deg=rotation,
        residual_m=residual_px * res_m,
        inliers=k,
        matches=n,
    )
    if k < cfg.min_inliers:
        result.reason = f"too few RANSAC inliers ({k} < {cfg.min_inliers})"
    elif residual_px > cfg.max_residual_px:
        result.reason = (
            f"residual {residual_px * res_m:.2f} m too high (> {cfg.max_residual_px} px)"
        )
    elif shift_m > cfg.max_correction_m:
        result.reason = (
            f"correction {shift_m:.1f} m larger than max_correction_m {cfg.max_correction_m}"
        )
    elif abs(rotation) > cfg.max_rotation_deg or not 0.85 < scale < 1.15:
        result.reason = f"implausible correction (rotation {rotation:.1f} deg, scale {scale:.3f})"
    else:
        result.ok = True
    return result
