"""Object-level and pixel-level change metrics on one pixel grid (numpy, OpenCV, rasterio for polygons).

Objects are boolean masks on the evaluation grid. Truth objects come from polygons
(rasterised) or from the 4-connected components of a 0/255 change mask, ignoring components
smaller than a minimum area. Predictions and truth are matched one-to-one, greedily by
descending mask IoU, a pair counting only at IoU >= the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass
class ObjectScores:
    iou_threshold: float
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: ObjectScores) -> ObjectScores:
        return ObjectScores(
            self.iou_threshold, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        )

    def as_dict(self) -> dict:
        return asdict(self) | {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
        }


@dataclass
class PixelScores:
    tp: int
    fp: int
    fn: int

    @property
    def f1(self) -> float:
        return (
            2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 0.0
        )

    @property
    def iou(self) -> float:
        return self.tp / (self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 0.0

    def __add__(self, other: PixelScores) -> PixelScores:
        return PixelScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict:
        return asdict(self) | {"f1": round(self.f1, 4), "iou": round(self.iou, 4)}


def polygon_masks(polygons: list[np.ndarray], shape: tuple[int, int]) -> list[np.ndarray]:
    """One boolean mask per (N, 2) pixel polygon (x, y, corner convention): pixels whose centre is inside."""
    from rasterio.features import rasterize
    from shapely.geometry import Polygon

    masks = []
    for poly in polygons:
        geom = Polygon(np.asarray(poly, np.float64).reshape(-1, 2)).buffer(0)
        if geom.is_empty:
            continue
        mask = rasterize([(geom, 1)], out_shape=shape, fill=0, dtype="uint8").astype(bool)
        if mask.any():
            masks.append(mask)
    return masks


def mask_components(mask: np.ndarray, min_area_px: float = 0) -> list[np.ndarray]:
    """4-connected components of a change mask (non-zero = change) of at least ``min_area_px`` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (np.asarray(mask) > 0).astype(np.uint8), connectivity=4
    )
    return [labels == i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area_px]


def iou_matrix(preds: list[np.ndarray], truths: list[np.ndarray]) -> np.ndarray:
    """(len(preds), len(truths)) mask IoU."""
    out = np.zeros((len(preds), len(truths)))
    if not preds or not truths:
        return out
    p = np.stack([m.reshape(-1) for m in preds]).astype(np.float32)
    t = np.stack([m.reshape(-1) for m in truths]).astype(np.float32)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_one_to_one(ious: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by descending IoU; pairs below ``threshold`` never match."""
    pairs, used_p, used_t = [], set(), set()
    if ious.size == 0:
        return pairs
    order = np.dstack(np.unravel_index(np.argsort(-ious, axis=None), ious.shape))[0]
    for i, j in order:
        if ious[i, j] < threshold:
            break
        if i in used_p or j in used_t:
            continue
        pairs.append((int(i), int(j)))
        used_p.add(i)
        used_t.add(j)
    return pairs


def object_scores(
    preds: list[np.ndarray], truths: list[np.ndarray], threshold: float
) -> ObjectScores:
    """TP/FP/FN of predicted vs truth object masks at an IoU threshold (one-to-one)."""
    tp = len(match_one_to_one(iou_matrix(preds, truths), threshold))
    return ObjectScores(threshold, tp, len(preds) - tp, len(truths) - tp)


def pixel_scores(pred_mask: np.ndarray, truth_mask: np.ndarray) -> PixelScores:
    """Pixel TP/FP/FN of two change masks (non-zero = change)."""
    p, t = np.asarray(pred_mask) > 0, np.asarray(truth_mask) > 0
    return PixelScores(int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()))


def union_mask(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for m in masks:
        out |= m
    return out
