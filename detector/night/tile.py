"""One tile of a night, start to finish: a pure function of (inputs, tile, model, config).

:func:`process_tile` is a list of steps::

    read            both epochs' pixels on the working grid        (:func:`read_tile`)
    coverage        too little valid overlap: "nodata"             (:func:`_coverage`)
    register        current onto baseline, or flag "unregistered"  (:func:`_register`)
    detect          the model, and for single-epoch models the
                    structures the baseline does not explain        (:func:`_detect`)
    change rules    the kept detections and their pixel change     (:mod:`detector.night.change`)
    second view     the building model's verdict and additions     (:func:`_second_view_step`)
    candidates      polygons in the working CRS                    (:func:`_tile_candidate`)
    height          with a DSM pair: height change and fusion      (:func:`_height_step`)

Whoever runs it -- this process, a local process pool or a Dask worker
(:mod:`detector.night.executors`) -- gets the same result; the night around it (resume,
merge, outputs, cases) is :mod:`detector.run`.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from detector.geo.grid import pixel_to_map
from detector.night.align import apply_registration, register_tile
from detector.night.change import changes_in_tile, difference_image, new_in_current, owns_centre
from detector.night.context import RunContext
from detector.night.detect import detect_tile
from detector.night.tiles import tile_layout, tile_window
from detector.types import Candidate, Detection, Registration, Tile, TileResult

__all__ = ["MIN_VALID_FRACTION", "process_tile", "read_tile", "second_view_conf"]

MIN_VALID_FRACTION = 0.02  # tiles with less valid overlap than this are skipped as nodata


def process_tile(
    ctx: RunContext,
    tile: Tile,
    baseline_reader,
    current_reader,
    detector,
    dsm_readers=None,
    pixels: tuple | None = None,
    second_view=None,
) -> TileResult:
    """Read, register, detect and decide one tile. Pure in (inputs, tile, model, config).

    Parameters
    ----------
    ctx : RunContext
    tile : Tile
    baseline_reader, current_reader : EpochReader
        Windows of each epoch on the working grid.
    detector : callable
        ``detector(images, conf, iou) -> list[list[Detection]]`` (an :class:`OnnxDetector`).
    dsm_readers : (DsmReader, DsmReader), optional
        The baseline and current DSM on the working grid (``ctx.dsm`` set): adds the height step.
    pixels : tuple, optional
        The tile already read (:func:`read_tile`, e.g. prefetched while the previous tile ran).
    second_view : callable, optional
        The building model's detector (``ctx.second`` set): :mod:`detector.night.second_view`.

    Returns
    -------
    TileResult
        ``"nodata"`` (too little valid overlap), ``"unregistered"`` (flagged, no candidates)
        or ``"done"`` with the tile's candidates.
    """
    start = time.perf_counter()
    gsd = ctx.grid.gsd
    b, vb, c, vc = (
        pixels if pixels is not None else read_tile(ctx, tile, baseline_reader, current_reader)
    )
    valid = vb & vc
    frac, covered = _coverage(ctx, valid)
    if frac < MIN_VALID_FRACTION or covered == 0.0:
        return TileResult(tile.tile_id, "nodata", frac, 0.0, seconds=time.perf_counter() - start)
    offset = tile_window(ctx.grid, tile)
    move = _move_at(ctx, tile, offset)
    reg, c, vc, valid = _register(ctx, b, c, vc, valid, vb, offset)
    if not reg.ok:
        return TileResult(
            tile.tile_id,
            "unregistered",
            frac,
            covered,
            reg.dx_px * gsd,
            -reg.dy_px * gsd,
            reg.shift_m,
            reg.quality,
            reg.reason,
            seconds=time.perf_counter() - start,
            registration=reg.source,
            residual_m=reg.residual_m,
            inliers=reg.inliers,
            move_m=move,
        )
    dets, baseline_iou = _detect(ctx, detector, b, c)
    stride, margin = tile_layout(ctx.size, ctx.overlap)
    # The difference image is needed only to judge the detections this tile reports (centre in
    # its core): most tiles have none, and then it is not computed.
    dets = [d for d in dets if owns_centre(d, margin, stride)]
    diff = (
        difference_image(b, c, valid)
        if dets or (second_view is not None and ctx.config.detect.second_view.add)
        else None
    )
    changes = (
        changes_in_tile(dets, diff, valid, gsd, ctx.config.change, margin, stride) if dets else []
    )
    if second_view is not None and ctx.second is not None:
        changes, out = _second_view_step(
            ctx, tile, second_view, b, c, changes, diff, valid, margin, stride
        )
    else:
        out = [
            _tile_candidate(ctx, tile, d, changed, baseline_iou.get(id(d), 0.0))
            for d, changed in changes
        ]
    if dsm_readers is not None and ctx.dsm is not None:
        out = _height_step(ctx, tile, dsm_readers, reg, changes, out, b, c, valid)
    return TileResult(
        tile.tile_id,
        "done",
        frac,
        covered,
        reg.dx_px * gsd,
        -reg.dy_px * gsd,
        reg.shift_m,
        reg.quality,
        reg.reason,
        out,
        time.perf_counter() - start,
        reg.source,
        reg.residual_m,
        reg.inliers,
        move,
    )


def _move_at(ctx: RunContext, tile: Tile, offset: tuple[int, int]) -> float | None:
    """The night's move at the tile's centre (m): the mosaic model's shift there, also when the
    model was refused (e.g. beyond ``align.max_shift_m``); None when none was found."""
    m = ctx.mosaic_model
    if m is None or not m.found:
        return None
    dx, dy = m.at(offset[0] + (tile.width - 1) / 2, offset[1] + (tile.height - 1) / 2)
    return round(float(np.hypot(dx, dy)) * ctx.grid.gsd, 3)


def read_tile(ctx: RunContext, tile: Tile, baseline_reader, current_reader):
    """(baseline pixels, baseline valid, current pixels, current valid) of one tile window."""
    col_off, row_off = tile_window(ctx.grid, tile)
    b, vb = baseline_reader.read(col_off, row_off, tile.width, tile.height)
    c, vc = current_reader.read(col_off, row_off, tile.width, tile.height)
    return b, vb, c, vc


def _coverage(ctx: RunContext, valid: np.ndarray) -> tuple[float, float]:
    """(share of the tile valid in both epochs, valid ground in the tile's core cell in m²)."""
    stride, margin = tile_layout(ctx.size, ctx.overlap)
    core = np.zeros_like(valid)
    core[margin : margin + stride, margin : margin + stride] = True
    gsd = ctx.grid.gsd
    return float(valid.mean()), float((valid & core).sum()) * gsd * gsd


def _register(
    ctx: RunContext,
    b: np.ndarray,
    c: np.ndarray,
    vc: np.ndarray,
    valid: np.ndarray,
    vb: np.ndarray,
    offset: tuple[int, int] = (0, 0),
):
    """Co-register the current tile to the baseline tile (the registration seam).

    Parameters
    ----------
    ctx : RunContext
    b, c : numpy.ndarray
        Baseline and current pixels.
    vc, valid, vb : numpy.ndarray
        Validity of the current epoch, of both epochs, of the baseline.
    offset : (col_off, row_off) of the tile on the working grid (where the mosaic model is evaluated).

    Returns
    -------
    (Registration, c, vc, valid)
        The shifted current pixels and masks. When ``reg.ok`` is False the tile could not be
        registered (no usable tile estimate nor mosaic model, ``align.on_failure: flag``): the
        caller flags it "unregistered" and ``c, vc, valid`` are returned unchanged.
    """
    a = ctx.config.align
    if not a.enabled:
        return Registration(0.0, 0.0, 0.0, 1.0, True, "alignment disabled", "none"), c, vc, valid
    reg = register_tile(
        b,
        c,
        valid,
        ctx.grid.gsd,
        model=ctx.mosaic_model,
        offset=offset,
        max_shift_m=a.max_shift_m,
        tile_tolerance_m=a.tile_tolerance_m,
        min_quality=a.min_quality,
        on_failure=a.on_failure,
    )
    if not reg.ok:
        return reg, c, vc, valid
    c, vc = apply_registration(c, vc, reg)
    c[~vc] = 0
    valid = vb & vc
    return reg, c, vc, valid


def _detect(
    ctx: RunContext, detector, b: np.ndarray, c: np.ndarray
) -> tuple[list[Detection], dict[int, float]]:
    """Change detections of one tile, and (single-epoch models) their best IoU with a baseline structure.

    Returns
    -------
    (list of Detection, dict)
        The dict maps ``id(detection)`` to its baseline IoU (empty for pair models).
    """
    dets, base_dets = detect_tile(detector, ctx.spec, b, c, ctx.conf, ctx.iou)
    matched: dict[int, float] = {}
    if not ctx.spec.is_pair:
        new = new_in_current(dets, base_dets, ctx.config.change.baseline_match_iou)
        matched = {id(d): iou for d, iou in new}
        dets = [d for d, _ in new]
    return dets, matched


def _second_view_step(
    ctx: RunContext,
    tile: Tile,
    second_view,
    b: np.ndarray,
    c: np.ndarray,
    changes,
    diff,
    valid: np.ndarray,
    margin: int,
    stride: int,
) -> tuple[list, list[Candidate]]:
    """Step *second view* (:mod:`detector.night.second_view`): the building model's verdict on the
    tile's pair candidates, and (``add``) the structures it alone sees.

    Returns
    -------
    (list of (Detection, changed), list of Candidate)
        The changes kept or added and their candidates, in the same order.
    """
    from detector.night import second_view as sv

    opts = ctx.config.detect.second_view
    if not changes and not opts.add:
        return [], []
    conf, add_conf = second_view_conf(ctx), second_view_add_conf(ctx)
    match_iou, gsd, rules = ctx.config.change.baseline_match_iou, ctx.grid.gsd, ctx.config.change
    pair_dets = [d for d, _ in changes]
    current = sv.tonight(second_view, c, conf, ctx.second.iou)
    # The baseline is looked at only where it can change the verdict: pair candidates to judge, or
    # structures tonight that would be added unless the baseline explains them (same result, and
    # on most tiles of a night one inference instead of two).
    need_baseline = bool(changes) or (
        opts.add
        and bool(
            changes_in_tile(
                [
                    d
                    for d, _ in sv.additions(
                        current, [], pair_dets, add_conf, opts.cover, match_iou
                    )
                ],
                diff,
                valid,
                gsd,
                rules,
                margin,
                stride,
            )
        )
    )
    baseline = _baseline_view(ctx, tile, second_view, b, conf) if need_baseline else []
    verdicts = sv.judge(
        pair_dets, current, baseline, opts.cover, match_iou, opts.confirm, opts.confirm_below
    )
    kept = [(change, v) for change, v in zip(changes, verdicts) if v.keep]
    out = [
        _tile_candidate(ctx, tile, d, changed, v.baseline_iou, v.structure_conf)
        for (d, changed), v in kept
    ]
    kept_changes = [change for change, _ in kept]
    if opts.add:
        added = sv.additions(current, baseline, pair_dets, add_conf, opts.cover, match_iou)
        new = changes_in_tile([d for d, _ in added], diff, valid, gsd, rules, margin, stride)
        base_iou = {id(d): iou for d, iou in added}
        out += [
            replace(
                _tile_candidate(ctx, tile, d, changed, base_iou[id(d)], d.confidence),
                tags="second_view",
            )
            for d, changed in new
        ]
        kept_changes += new
    return kept_changes, out


def second_view_conf(ctx: RunContext) -> float:
    """The confidence at which the building model reports a building tonight (the baseline is asked
    at :data:`detector.night.second_view.BASELINE_CONF_FACTOR` of it)."""
    opts = ctx.config.detect.second_view
    return opts.conf if opts.conf is not None else ctx.second.conf


#: ``detect.second_view.add_conf`` with a separate building model (the shipped one's setting).
SEPARATE_MODEL_ADD_CONF = 0.3


def second_view_add_conf(ctx: RunContext) -> float:
    """The confidence a building tonight needs to be added on the second view's word alone: the
    config's, else a two-view model's validation-chosen building confidence, else
    :data:`SEPARATE_MODEL_ADD_CONF`."""
    opts = ctx.config.detect.second_view
    if opts.add_conf is not None:
        return opts.add_conf
    return ctx.second.conf if ctx.second.embedded else SEPARATE_MODEL_ADD_CONF


def _baseline_view(
    ctx: RunContext, tile: Tile, second_view, b: np.ndarray, conf: float
) -> list[Detection]:
    """The building model's detections on the tile's baseline: stored by an earlier night when the
    run keeps baseline views (``detect.second_view.baseline_cache``), else computed (and stored)."""
    from detector.night import second_view as sv
    from detector.night.view_cache import load_view, store_view

    if ctx.baseline_views is None:
        return sv.before(second_view, b, conf, ctx.second.iou)
    dets = load_view(ctx.baseline_views, tile.tile_id)
    if dets is None:
        dets = sv.before(second_view, b, conf, ctx.second.iou)
        store_view(ctx.baseline_views, tile.tile_id, dets)
    return dets


def _tile_candidate(
    ctx: RunContext,
    tile: Tile,
    d: Detection,
    changed: float,
    baseline_iou: float,
    structure_conf: float | None = None,
) -> Candidate:
    """A kept detection as a :class:`Candidate` in the working CRS (detection fields only)."""
    return Candidate(
        geometry=_tile_polygon(tile, ctx.grid.gsd, d.corners()),
        class_name=d.class_name if ctx.spec.is_pair else "new_building",
        confidence=round(d.confidence, 4),
        pixel_change=round(changed, 3),
        baseline_iou=round(baseline_iou, 3),
        tile_id=tile.tile_id,
        structure_conf=None if structure_conf is None else round(structure_conf, 4),
    )


def _height_step(
    ctx: RunContext,
    tile: Tile,
    dsm_readers,
    reg: Registration,
    changes,
    cands: list[Candidate],
    b: np.ndarray,
    c: np.ndarray,
    valid: np.ndarray,
) -> list[Candidate]:
    """Height change of the tile (current DSM registered like the imagery) fused with its image candidates.

    See :mod:`detector.night.height`: candidates over a region of gain are confirmed, those the
    DSMs cover without gain down-weighted, and unexplained regions added as candidates.
    """
    from detector.night.change import change_fraction, polygon_mask
    from detector.night.height import fuse, tile_heights

    col_off, row_off = tile_window(ctx.grid, tile)
    hb, vb = dsm_readers[0].read(col_off, row_off, tile.width, tile.height)
    hc, vc = dsm_readers[1].read(col_off, row_off, tile.width, tile.height)
    if ctx.config.align.enabled:
        hc, vc = apply_registration(hc, vc, reg)
    gsd = ctx.grid.gsd
    th = tile_heights(hb, vb & valid, hc, vc, gsd, ctx.dsm, ctx.config.height)
    stride, margin = tile_layout(ctx.size, ctx.overlap)
    fused, extra = fuse(changes, th, c, ctx.config.height, margin, stride, polygon_mask)
    out = [
        replace(
            cand,
            confidence=f.confidence,
            tags=",".join([t for t in (cand.tags, *f.tags) if t]),
            height_gain_m=f.gain_m,
            baseline_height_m=f.baseline_m,
            current_height_m=f.current_m,
        )
        for cand, f in zip(cands, fused)
    ]
    diff = difference_image(b, c, valid) if extra else None
    for f in extra:
        out.append(
            Candidate(
                geometry=_tile_polygon(tile, gsd, f.corners),
                class_name=f.class_name,
                confidence=f.confidence,
                pixel_change=round(change_fraction(diff, valid, f.corners), 3),
                tile_id=tile.tile_id,
                tags=",".join(f.tags),
                height_gain_m=f.gain_m,
                baseline_height_m=f.baseline_m,
                current_height_m=f.current_m,
            )
        )
    return out


def _tile_polygon(tile: Tile, gsd: float, corners: np.ndarray):
    """(N, 2) tile pixel-corner coordinates (x right, y down) as a polygon in the working CRS."""
    from affine import Affine
    from shapely.geometry import Polygon

    left, _, _, top = tile.bounds
    xs, ys = pixel_to_map(Affine(gsd, 0.0, left, 0.0, -gsd, top), corners[:, 1], corners[:, 0])
    return Polygon(np.column_stack([xs, ys]))
