"""Turn detections into change candidates: thresholds, nodata/edge artefacts, the pixel-change
check, the baseline comparison for single-epoch models, and exclusion layers."""

from __future__ import annotations

import logging
from datetime import date

import cv2
import numpy as np

from detector.types import Detection

log = logging.getLogger(__name__)

CHANGE_THRESHOLD = 30  # grey levels of normalised per-pixel difference that count as "changed"


def polygon_mask(shape: tuple[int, int], corners: np.ndarray) -> np.ndarray:
    """Boolean raster mask of a polygon given in pixel-corner coordinates."""
    mask = np.zeros(shape, dtype=np.uint8)
    pts = np.round((corners - 0.5) * 16).astype(
        np.int32
    )  # pixel centres at +0.5; 4 fractional bits
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def difference_image(baseline: np.ndarray, current: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel change magnitude after matching the current epoch's per-band mean/std to the baseline.

    Scene-wide illumination or season shifts cancel out; what remains is local change.
    """
    b = cv2.GaussianBlur(baseline, (0, 0), 1.0).astype(np.float32)
    c = cv2.GaussianBlur(current, (0, 0), 1.0).astype(np.float32)
    if valid.any():  # per band: (c - mean_c) * std_b / std_c + mean_b over the valid pixels (OpenCV: half the time)
        mask = np.ascontiguousarray(valid).view(np.uint8)
        b_mean, b_std = cv2.meanStdDev(b, mask=mask)
        c_mean, c_std = cv2.meanStdDev(c, mask=mask)
        scale = b_std.ravel() / np.maximum(c_std.ravel(), 1e-3)
        shift = b_mean.ravel() - c_mean.ravel() * scale
        c = cv2.add(cv2.multiply(c, (*scale, 0.0)), (*shift, 0.0))
    bands = cv2.split(cv2.absdiff(b, c))
    diff = cv2.max(cv2.max(bands[0], bands[1]), bands[2])
    diff[~valid] = 0
    return diff


def change_fraction(diff: np.ndarray, valid: np.ndarray, corners: np.ndarray) -> float:
    """Fraction of the polygon's valid pixels whose normalised difference exceeds the threshold."""
    inside = polygon_mask(diff.shape, corners) & valid
    n = int(inside.sum())
    if n == 0:
        return 0.0
    return float((diff[inside] > CHANGE_THRESHOLD).mean())


def invalid_fraction(valid: np.ndarray, corners: np.ndarray) -> float:
    """Fraction of the polygon's pixels that are nodata (1.0 for a polygon covering no pixel centre)."""
    inside = polygon_mask(valid.shape, corners)
    n = int(inside.sum())
    return 1.0 if n == 0 else float((~valid[inside]).mean())


MAX_INVALID_IN_BOX = (
    0.10  # detections with more nodata than this inside their box are edge artefacts
)


def owns_centre(d: Detection, margin: int, stride: int) -> bool:
    """Whether the tile reports ``d``: its centre lies in the tile's core cell.

    Tiles overlap; each owns the core ``[margin, margin + stride)`` in both axes (pixels), and the
    cores partition the map, so a structure seen by several tiles is reported by exactly one.
    """
    return margin <= d.cx < margin + stride and margin <= d.cy < margin + stride


def keep_detection(
    d: Detection, diff: np.ndarray, valid: np.ndarray, gsd: float, rules, margin: int, stride: int
) -> float | None:
    """Apply the change rules to one detection of a co-registered tile.

    Parameters
    ----------
    d : Detection
        In tile pixels.
    diff : numpy.ndarray
        (H, W) per-pixel change magnitude (:func:`difference_image`).
    valid : numpy.ndarray
        (H, W) bool, valid in both epochs.
    gsd : float
        Metres per pixel.
    rules : detector.config.ChangeConfig
        ``min_area_m2``, ``max_area_m2``, ``min_pixel_change``.
    margin, stride : int
        The tile's core cell (:func:`owns_centre`).

    Returns
    -------
    float or None
        The share of the box's valid pixels that changed, or None when a rule rejects it:
        centre outside the core, area outside ``[min_area_m2, max_area_m2]``, more than
        :data:`MAX_INVALID_IN_BOX` nodata inside the box, or less than ``min_pixel_change``
        of its pixels changed.
    """
    if not owns_centre(d, margin, stride):
        return None  # another tile owns this centre
    area = d.w * d.h * gsd * gsd
    if not (rules.min_area_m2 <= area <= rules.max_area_m2):
        return None
    corners = d.corners()
    if invalid_fraction(valid, corners) > MAX_INVALID_IN_BOX:
        return None
    changed = change_fraction(diff, valid, corners)
    if changed < rules.min_pixel_change:
        return None
    return changed


def changes_in_tile(
    dets: list[Detection],
    diff: np.ndarray,
    valid: np.ndarray,
    gsd: float,
    rules,
    margin: int,
    stride: int,
) -> list[tuple[Detection, float]]:
    """The detections that are changes this tile reports, with their pixel-change share.

    See :func:`keep_detection` for the parameters and rules; order is preserved.
    """
    out = []
    for d in dets:
        changed = keep_detection(d, diff, valid, gsd, rules, margin, stride)
        if changed is not None:
            out.append((d, changed))
    return out


def new_in_current(
    current: list[Detection], baseline: list[Detection], match_iou: float
) -> list[tuple[Detection, float]]:
    """Single-epoch models: current structures with no overlapping baseline structure.

    Returns (detection, best IoU with any baseline detection) for the ones considered new.
    """
    from detector.night.detect import detection_boxes, rotated_iou_matrix

    if not current:
        return []
    if not baseline:
        return [(d, 0.0) for d in current]
    best = rotated_iou_matrix(detection_boxes(current), detection_boxes(baseline)).max(axis=1)
    return [(d, float(iou)) for d, iou in zip(current, best) if iou < match_iou]


def _as_date(value) -> date | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def exclusion_layer_info(layer) -> dict:
    """Check that an exclusion layer exists, is readable and has a CRS; return pyogrio's info."""
    import pyogrio

    from detector.errors import InputError

    if not layer.path.exists():
        raise InputError(
            f"{layer.path}: exclusion layer ({layer.kind}) not found; fix change.exclusions in the config"
        )
    try:
        info = pyogrio.read_info(layer.path)
    except Exception as exc:  # pyogrio DataSourceError and friends
        raise InputError(
            f"{layer.path}: cannot read exclusion layer ({str(exc).splitlines()[0][:120]})"
        ) from None
    if not info.get("crs"):
        raise InputError(
            f"{layer.path}: exclusion layer has no CRS; save it with one (e.g. EPSG:4547)"
        )
    return info


def apply_exclusions(candidates, layers, current_date: date | None, out_crs):
    """Tag or drop candidates explained by permitted construction or known buildings.

    Parameters
    ----------
    candidates : GeoDataFrame with a ``tags`` column (comma-separated), in ``out_crs``.
    layers : list of :class:`detector.config.ExclusionLayer`.
    current_date : date of the current epoch; permits are valid on it when
        ``valid_from <= current_date <= valid_to`` (missing bounds are open).

    Returns
    -------
    (GeoDataFrame, int) : the kept candidates and the number dropped.
    """
    import geopandas as gpd

    dropped = 0
    for layer in layers:
        if len(candidates) == 0:
            break
        exclusion_layer_info(layer)
        ex = gpd.read_file(layer.path)
        ex = ex[ex.geometry.notna()].to_crs(out_crs)
        ex["geometry"] = ex.geometry.make_valid()
        if layer.kind == "permitted" and current_date is not None:
            keep = np.ones(len(ex), dtype=bool)
            for fld, cmp in (
                (layer.valid_from_field, lambda d: d <= current_date),
                (layer.valid_to_field, lambda d: d >= current_date),
            ):
                if fld and fld in ex.columns:
                    keep &= np.array([(_as_date(v) is None) or cmp(_as_date(v)) for v in ex[fld]])
            ex = ex[keep]
        if len(ex) == 0:
            continue
        sindex = ex.sindex
        drop_idx = []
        for idx, geom in zip(candidates.index, candidates.geometry):
            hits = sindex.query(geom, predicate="intersects")
            if len(hits) == 0:
                continue
            covered = ex.geometry.iloc[hits].intersection(geom).area.sum() / max(geom.area, 1e-9)
            if covered < layer.min_overlap:
                continue
            if layer.action == "drop":
                drop_idx.append(idx)
            else:
                label = layer.kind
                if layer.id_field and layer.id_field in ex.columns:
                    label += ":" + str(ex.iloc[hits[0]][layer.id_field])
                old = candidates.at[idx, "tags"]
                candidates.at[idx, "tags"] = f"{old},{label}" if old else label
        dropped += len(drop_idx)
        candidates = candidates.drop(index=drop_idx)
    return candidates, dropped
