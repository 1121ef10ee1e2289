"""Copy-paste pair synthesis: labelled (baseline, current) pairs from one real orthophoto.

Real buildings are removed from the *baseline* (OpenCV inpainting, or ground texture
copied from elsewhere in the same image), so they appear as ``new_building`` in the
current epoch. Against learning the removal artefacts instead of buildings, the same
removal is also applied to unlabelled places: decoy blobs of open ground in either epoch
and demolitions (a building removed from the *current* epoch is not a new structure).
Each epoch then gets its own scene-wide photometric change (gamma, colour, "season"),
the current one a small shift/rotation, and both blur, noise and JPEG.

numpy + OpenCV only (runs on a machine without GDAL/shapely).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class PairParams:
    """Knobs of the pair synthesis (defaults follow issue 3)."""

    remove_fraction: tuple[float, float] = (0.3, 0.8)
    no_change_prob: float = 0.1
    block_clear_prob: float = 0.15
    demolition_prob: float = 0.3
    decoys: tuple[int, int] = (1, 4)
    max_shift_px: float = 3.0
    max_rotation_deg: float = 1.0
    min_building_px: float = 60.0  # smaller footprints are never removed (not reliable labels)


@dataclass
class PairExample:
    """A synthetic pair at the chip's pixel grid; change polygons are in the current epoch's pixels."""

    baseline: np.ndarray  # (H, W, 3) uint8 RGB
    current: np.ndarray
    changes: list[np.ndarray] = field(
        default_factory=list
    )  # (N, 2) float polygons, class new_building
    mode: str = "partial"


def polygons_mask(
    shape: tuple[int, int], polygons: list[np.ndarray], dilate_px: int = 0
) -> np.ndarray:
    """uint8 0/255 mask of filled polygons, optionally dilated."""
    mask = np.zeros(shape, np.uint8)
    if polygons:
        cv2.fillPoly(mask, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polygons], 255)
    if dilate_px > 0:
        kernel = cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1)
        )
        mask = cv2.dilate(mask, kernel)
    return mask


def _texture_fill(
    image: np.ndarray, mask: np.ndarray, avoid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Fill mask with a patch of the same image taken where ``avoid`` (buildings) is empty."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return image
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = x1 - x0, y1 - y0
    if bw >= w // 2 or bh >= h // 2:
        return cv2.inpaint(image, mask, 5, cv2.INPAINT_TELEA)
    sub_mask = mask[y0:y1, x0:x1]
    for _ in range(30):
        sx, sy = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        if not np.any(avoid[sy : sy + bh, sx : sx + bw][sub_mask > 0]):
            alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)[
                y0:y1, x0:x1, None
            ]
            out = image.copy()
            patch = image[sy : sy + bh, sx : sx + bw].astype(np.float32)
            out[y0:y1, x0:x1] = (alpha * patch + (1 - alpha) * out[y0:y1, x0:x1]).astype(np.uint8)
            return out
    return cv2.inpaint(image, mask, 5, cv2.INPAINT_TELEA)


def erase_regions(
    image: np.ndarray,
    polygons: list[np.ndarray],
    buildings_mask: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Remove polygons from an image by inpainting or by same-image ground texture (random per polygon)."""
    out = image
    for poly in polygons:
        mask = polygons_mask(image.shape[:2], [poly], dilate_px=int(rng.integers(2, 5)))
        if rng.random() < 0.5:
            out = cv2.inpaint(out, mask, int(rng.integers(3, 8)), cv2.INPAINT_TELEA)
        else:
            out = _texture_fill(out, mask, buildings_mask, rng)
    return out


def clear_block(
    image: np.ndarray, rect: tuple[int, int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """Replace a rectangle with graded bare soil (whole-block clearing: houses and roads together)."""
    x0, y0, x1, y1 = rect
    out = image.copy()
    region = image[y0:y1, x0:x1].astype(np.float32)
    soil = np.array(
        [rng.uniform(120, 190), rng.uniform(100, 160), rng.uniform(70, 130)], np.float32
    )
    soil = 0.6 * soil + 0.4 * np.median(region.reshape(-1, 3), axis=0)
    noise = cv2.GaussianBlur(
        rng.normal(0, 1, region.shape[:2]).astype(np.float32), (0, 0), rng.uniform(2, 6)
    )
    noise = noise / (noise.std() + 1e-6) * rng.uniform(6, 14)
    fill = (
        soil[None, None, :] + noise[..., None] + rng.normal(0, 3, region.shape).astype(np.float32)
    )
    feather = np.zeros(image.shape[:2], np.float32)
    feather[y0:y1, x0:x1] = 1
    feather = cv2.GaussianBlur(feather, (0, 0), 3)[y0:y1, x0:x1, None]
    out[y0:y1, x0:x1] = np.clip(feather * fill + (1 - feather) * region, 0, 255).astype(np.uint8)
    return out


def photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Scene-wide gamma, per-channel gain, contrast and a green/brown 'season' tint."""
    img = image.astype(np.float32) / 255.0
    img = img ** rng.uniform(1 - 0.3 * strength, 1 + 0.4 * strength)
    gains = 1 + rng.uniform(-0.12, 0.12, 3) * strength
    img = img * gains
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength) + mean
    if rng.random() < 0.5 * strength:
        tint = np.array([0.85, 1.1, 0.8]) if rng.random() < 0.5 else np.array([1.12, 1.0, 0.82])
        veg = np.clip((img[..., 1] - img[..., 0]) * 4 + 0.3, 0, 1)[..., None]  # mostly vegetation
        img = img * (1 - veg * 0.6) + img * tint * (veg * 0.6)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, sensor noise and JPEG round trip, each at random."""
    out = image
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    if rng.random() < 0.5:
        out = np.clip(
            out.astype(np.float32) + rng.normal(0, rng.uniform(1, 5), out.shape), 0, 255
        ).astype(np.uint8)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(
            ".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 95))]
        )
        if ok:
            out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    return out


def small_warp(image: np.ndarray, rng: np.random.Generator, max_shift: float, max_rot_deg: float):
    """Shift/rotate an image a little (mis-registration); returns the image and its 2×3 affine."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_rot_deg, max_rot_deg), 1.0)
    matrix[:, 2] += rng.uniform(-max_shift, max_shift, 2)
    warped = cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return warped, matrix


def _apply_affine(polygon: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def _random_blobs(shape, count, avoid, rng) -> list[np.ndarray]:
    """Building-sized random quadrilaterals on open ground (decoys)."""
    h, w = shape
    blobs = []
    for _ in range(count * 5):
        if len(blobs) >= count:
            break
        cx, cy = rng.uniform(20, w - 20), rng.uniform(20, h - 20)
        bw, bh = rng.uniform(12, 50), rng.uniform(12, 50)
        rect = ((cx, cy), (bw, bh), rng.uniform(0, 90))
        poly = cv2.boxPoints(rect)
        if not np.any(polygons_mask(shape, [poly]) & avoid):
            blobs.append(poly)
    return blobs


def synthesize_pair(
    image: np.ndarray,
    footprints: list[np.ndarray],
    rng: np.random.Generator,
    params: PairParams | None = None,
) -> PairExample:
    """Make one labelled pair from a real RGB chip and its building footprints (chip pixels).

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB chip at the working GSD.
    footprints : building polygons, (N, 2) float pixel (x, y) in the chip.
    rng : random generator (the pair is a pure function of the image, footprints and its state).
    params : synthesis knobs.

    Returns
    -------
    PairExample
        Baseline and current images and the polygons of new buildings in the current epoch.
    """
    params = params or PairParams()
    h, w = image.shape[:2]
    usable = [
        p
        for p in footprints
        if cv2.contourArea(np.asarray(p, np.float32)) >= params.min_building_px
    ]
    buildings_mask = polygons_mask((h, w), footprints, dilate_px=3)
    baseline, current = image.copy(), image.copy()
    changes: list[np.ndarray] = []
    roll = rng.random()
    if roll < params.no_change_prob or not usable:
        mode = "no_change"
    elif roll < params.no_change_prob + params.block_clear_prob:
        mode = "block"
        bw, bh = int(w * rng.uniform(0.35, 0.7)), int(h * rng.uniform(0.35, 0.7))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        baseline = clear_block(baseline, (x0, y0, x0 + bw, y0 + bh), rng)
        for poly in footprints:
            inside = polygons_mask((h, w), [poly])[y0 : y0 + bh, x0 : x0 + bw].sum()
            total = polygons_mask((h, w), [poly]).sum()
            if (
                total
                and inside / total >= 0.5
                and cv2.contourArea(np.asarray(poly, np.float32)) >= params.min_building_px
            ):
                changes.append(np.asarray(poly, np.float64))
    else:
        mode = "partial"
        k = max(1, int(round(len(usable) * rng.uniform(*params.remove_fraction))))
        chosen = rng.choice(len(usable), size=min(k, len(usable)), replace=False)
        removed = [np.asarray(usable[i], np.float64) for i in chosen]
        baseline = erase_regions(baseline, removed, buildings_mask, rng)
        changes.extend(removed)
    # unlabelled look-alikes of the removal: decoys in either epoch, demolitions in the current one
    for target in ("baseline", "current"):
        blobs = _random_blobs(
            (h, w),
            int(rng.integers(params.decoys[0], params.decoys[1] + 1)),
            buildings_mask > 0,
            rng,
        )
        if target == "baseline":
            baseline = erase_regions(baseline, blobs, buildings_mask, rng)
        else:
            current = erase_regions(current, blobs, buildings_mask, rng)
    changed_ids = {id(p) for p in changes}
    kept = [
        p for p in usable if not any(np.array_equal(np.asarray(p, np.float64), c) for c in changes)
    ]
    if kept and rng.random() < params.demolition_prob and changed_ids is not None:
        gone = [
            np.asarray(kept[i])
            for i in rng.choice(len(kept), size=min(2, len(kept)), replace=False)
        ]
        current = erase_regions(current, gone, buildings_mask, rng)
    baseline = degrade(photometric(baseline, rng), rng)
    current = photometric(current, rng)
    current, matrix = small_warp(current, rng, params.max_shift_px, params.max_rotation_deg)
    current = degrade(current, rng)
    changes = [_apply_affine(p, matrix) for p in changes]
    return PairExample(baseline, current, changes, mode)
