"""Operators' reviews as training data: the reviews feed the next model.

Cases an operator confirmed (``confirmed_illegal``, ``referred``, ``permitted`` — a permit is a
legal decision, the structure is still new) become labelled change boxes; cases rejected as
``false_positive`` become hard negatives (chips with that place unlabelled). Chips are cut from
the same mosaic pair the night ran on, at the model's working GSD, co-registered the same way as
the nightly run. Chips that contain an unreviewed case are skipped: their truth is unknown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.types import CHANGE_CLASSES
from training.datasets import ChipSample, OrientedBox, clip_box_to_window, polygon_to_obb

POSITIVE_STATUSES = ("confirmed_illegal", "referred", "permitted")
NEGATIVE_STATUSES = ("false_positive",)


@dataclass
class ReviewChips:
    samples: list[tuple[str, ChipSample]] = field(default_factory=list)  # (split, sample)
    positives: int = 0
    negatives: int = 0
    skipped_unreviewed: int = 0


def _split_for(x: float, y: float, block_m: float = 256.0, val_every: int = 5) -> str:
    """Geography split: whole 256 m blocks go to train or val, so no ground is in both."""
    key = f"{int(np.floor(x / block_m))}:{int(np.floor(y / block_m))}".encode()
    return "val" if int(hashlib.sha1(key).hexdigest(), 16) % val_every == 0 else "train"


def review_samples(registry: Path, baseline: Path, current: Path, gsd_m: float = 0.25, size: int = 512,
                   names: tuple[str, ...] = CHANGE_CLASSES) -> ReviewChips:
    """6-channel chips centred on every reviewed case, labelled from the reviews.

    Parameters
    ----------
    registry : the case registry ``cases.gpkg`` (layer ``cases``).
    baseline, current : the mosaics of the night the cases were seen on.
    gsd_m, size : the model's working GSD and input size.
    names : class names in class-id order.
    """
    import geopandas as gpd
    import shapely

    from detector.night.align import apply_shift, estimate_shift
    from detector.night.mosaic import EpochReader, make_grid, open_mosaic

    registry = Path(registry)
    if not registry.exists():
        raise InputError(f"{registry}: case registry not found")
    try:
        cases = gpd.read_file(registry, layer="cases")
    except Exception as exc:  # pyogrio errors
        raise InputError(f"{registry}: cannot read layer 'cases' ({str(exc).splitlines()[0][:120]})") from None
    b_info, c_info = open_mosaic(baseline, "baseline"), open_mosaic(current, "current")
    grid = make_grid(b_info, c_info, gsd_m)
    cases = cases[cases.geometry.notna()].to_crs(grid.crs_wkt)
    reviewed = cases[cases["status"].isin(POSITIVE_STATUSES + NEGATIVE_STATUSES)]
    positives = cases[cases["status"].isin(POSITIVE_STATUSES) & cases["class"].isin(names)]
    unreviewed = cases[cases["status"] == "new"]
    out = ReviewChips()
    readers = (EpochReader(b_info, grid), EpochReader(c_info, grid))
    try:
        for _, case in reviewed.iterrows():
            cx, cy = case.geometry.centroid.x, case.geometry.centroid.y
            col = int(round((cx - grid.left) / gsd_m)) - size // 2
            row = int(round((grid.top - cy) / gsd_m)) - size // 2
            left, top = grid.left + col * gsd_m, grid.top - row * gsd_m
            window = shapely.box(left, top - size * gsd_m, left + size * gsd_m, top)
            if unreviewed.intersects(window).any():
                out.skipped_unreviewed += 1
                continue
            b, vb = readers[0].read(col, row, size, size)
            c, vc = readers[1].read(col, row, size, size)
            reg = estimate_shift(b, c, vb & vc, gsd_m)
            c, vc = apply_shift(c, vc, reg)
            boxes = []
            for _, pos in positives[positives.intersects(window)].iterrows():
                ring = shapely.get_coordinates(pos.geometry)
                px = np.column_stack([(ring[:, 0] - left) / gsd_m, (top - ring[:, 1]) / gsd_m])
                clipped = clip_box_to_window(polygon_to_obb(px), 0, 0, size, size, 0.5)
                if clipped is not None:
                    boxes.append(OrientedBox(names.index(pos["class"]), clipped))
            image = np.concatenate([b, c], axis=2)
            stem = f"review_{case['case_id']}"
            out.samples.append((_split_for(cx, cy), ChipSample(stem, image, boxes)))
            if case["status"] in POSITIVE_STATUSES:
                out.positives += 1
            else:
                out.negatives += 1
    finally:
        for r in readers:
            r.close()
    return out


def write_review_dataset(root: Path, chips: ReviewChips, names: tuple[str, ...] = CHANGE_CLASSES) -> Path:
    """Add the chips to a (new or existing) 6-channel YOLO OBB dataset; returns its data.yaml."""
    from training.datasets import DatasetWriter

    writer = DatasetWriter(Path(root), 6, names)
    for split, sample in chips.samples:
        writer.add(split, sample)
    return writer.write_yaml()
