"""Operators' reviews as training data: the reviews feed the next model.

Cases an operator confirmed (``confirmed_illegal``, ``referred``, ``permitted`` — a permit is a
legal decision, the structure is still new) become labelled change boxes; cases rejected as
``false_positive`` become hard negatives (chips with that place unlabelled). Chips are cut from
the same mosaic pair the night ran on, at the model's working GSD, and co-registered the way the
nightly run registers a tile: the same code (:func:`detector.night.align.estimate_mosaic_model`
once for the pair, :func:`~detector.night.align.register_tile` per chip at the chip's place on the
working grid, :func:`~detector.night.align.apply_registration`, current pixels outside the shifted
footprint zeroed) with the same settings (``align`` of the run config, by default the nightly
defaults). A chip the nightly run would have flagged as unregistered is skipped (it could not have
given a candidate), and so is a chip that contains an unreviewed case: its truth is unknown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.config import AlignConfig
from detector.errors import InputError
from detector.night.align import (
    MosaicModel,
    apply_registration,
    estimate_mosaic_model,
    register_tile,
)
from detector.night.mosaic import EpochReader, make_grid, open_mosaic
from detector.review.vocab import (
    CASES_TABLE,
    NEW,
    ORIGIN_LEGACY,
    REAL_STRUCTURE_STATUSES,
    REJECTED_STATUSES,
)
from detector.types import CHANGE_CLASSES
from training.datasets import (
    ChipSample,
    DatasetWriter,
    OrientedBox,
    clip_box_to_window,
    polygon_to_obb,
)

POSITIVE_STATUSES = (
    REAL_STRUCTURE_STATUSES  # a permit is a legal decision: the structure is still new
)
NEGATIVE_STATUSES = REJECTED_STATUSES


@dataclass
class ReviewChips:
    samples: list[tuple[str, ChipSample]] = field(default_factory=list)  # (split, sample)
    positives: int = 0
    negatives: int = 0
    skipped_unreviewed: int = 0
    skipped_unregistered: int = 0


def _split_for(x: float, y: float, block_m: float = 256.0, val_every: int = 5) -> str:
    """Geography split: whole 256 m blocks go to train or val, so no ground is in both."""
    key = f"{int(np.floor(x / block_m))}:{int(np.floor(y / block_m))}".encode()
    return "val" if int(hashlib.sha1(key).hexdigest(), 16) % val_every == 0 else "train"


def _register_chip(
    b: np.ndarray,
    vb: np.ndarray,
    c: np.ndarray,
    vc: np.ndarray,
    gsd_m: float,
    offset: tuple[int, int],
    align: AlignConfig,
    model: MosaicModel | None,
):
    """Co-register one chip as the nightly run registers a tile (``detector.night.tile``); None
    where it would flag it."""
    if not align.enabled:
        return c, vc
    reg = register_tile(
        b,
        c,
        vb & vc,
        gsd_m,
        model=model,
        offset=offset,
        max_shift_m=align.max_shift_m,
        tile_tolerance_m=align.tile_tolerance_m,
        min_quality=align.min_quality,
        on_failure=align.on_failure,
    )
    if not reg.ok:
        return None
    c, vc = apply_registration(c, vc, reg)
    c[~vc] = 0
    return c, vc


def review_samples(
    registry: Path,
    baseline: Path,
    current: Path,
    gsd_m: float = 0.25,
    size: int = 512,
    names: tuple[str, ...] = CHANGE_CLASSES,
    align: AlignConfig | None = None,
) -> ReviewChips:
    """6-channel chips centred on every reviewed case, labelled from the reviews.

    Parameters
    ----------
    registry : Path
        The case registry ``cases.gpkg`` (layer ``cases``).
    baseline, current : Path
        The mosaics of the night the cases were seen on.
    gsd_m, size : float, int
        The model's working GSD and input size.
    names : tuple of str
        Class names in class-id order.
    align : AlignConfig, optional
        Co-registration settings: those of the nightly run (``RunConfig.align``); default the
        nightly defaults.

    Returns
    -------
    ReviewChips
    """
    import geopandas as gpd
    import shapely

    align = align if align is not None else AlignConfig()
    registry = Path(registry)
    if not registry.exists():
        raise InputError(f"{registry}: case registry not found")
    try:
        cases = gpd.read_file(registry, layer=CASES_TABLE)
    except Exception as exc:  # pyogrio errors
        raise InputError(
            f"{registry}: cannot read layer '{CASES_TABLE}' ({str(exc).splitlines()[0][:120]})"
        ) from None
    b_info, c_info = open_mosaic(baseline, "baseline"), open_mosaic(current, "current")
    grid = make_grid(b_info, c_info, gsd_m)
    cases = cases[cases.geometry.notna()].to_crs(grid.crs_wkt)
    if "origin" in cases.columns:  # legacy cases stood before the baseline: no change to learn
        cases = cases[cases["origin"] != ORIGIN_LEGACY]
    reviewed = cases[cases["status"].isin(POSITIVE_STATUSES + NEGATIVE_STATUSES)]
    positives = cases[cases["status"].isin(POSITIVE_STATUSES) & cases["class"].isin(names)]
    unreviewed = cases[cases["status"] == NEW]
    out = ReviewChips()
    readers = (EpochReader(b_info, grid), EpochReader(c_info, grid))
    try:
        model = None
        if align.enabled:  # once for the pair, with the readers' stretch, as the nightly run does
            model = estimate_mosaic_model(
                b_info,
                c_info,
                grid,
                (readers[0].stretch, readers[1].stretch),
                max_shift_m=align.max_shift_m,
                min_inliers=align.min_inliers,
                min_spread=align.min_spread,
            )
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
            registered = _register_chip(b, vb, c, vc, gsd_m, (col, row), align, model)
            if registered is None:
                out.skipped_unregistered += 1
                continue
            c, vc = registered
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


def write_review_dataset(
    root: Path, chips: ReviewChips, names: tuple[str, ...] = CHANGE_CLASSES
) -> Path:
    """Add the chips to a (new or existing) 6-channel YOLO OBB dataset.

    Parameters
    ----------
    root : Path
        The dataset folder.
    chips : ReviewChips
        From :func:`review_samples`.
    names : tuple of str
        Class names in class-id order.

    Returns
    -------
    Path
        Its ``data.yaml``.
    """
    writer = DatasetWriter(Path(root), 6, names)
    for split, sample in chips.samples:
        writer.add(split, sample)
    return writer.write_yaml()
