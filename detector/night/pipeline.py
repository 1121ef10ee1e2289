"""The nightly run: orthomosaic pair -> tiles -> detections -> change candidates -> GeoPackage.

``run_pipeline(config)`` is what ``buildwatch run`` and ``buildwatch evaluate`` call. It is a
list of named steps::

    prepare          inputs, model, working grid, tile list          (:func:`prepare`)
    open the night   output folder, log file, fingerprint, resume    (:func:`_open_night`)
    run tiles        every tile not finished yet                     (:func:`_process_tiles`)
                     (with a DSM pair, each tile adds a height step:  :func:`_height_step`)
    merge            duplicates from overlapping tiles               (:func:`_merge`)
    to candidates    ids, areas, WGS84 centroids, provenance         (:func:`_finish_candidates`)
    exclusions       permits and known buildings                     (:func:`_apply_exclusions`)
    write            candidates.gpkg                                 (:func:`_write_outputs`)
    cases            the case registry, when configured              (:func:`_update_cases`)

Tile processing (:func:`process_tile`) is itself a list of steps (read, coverage, register,
detect, change rules, candidates, and with DSMs height change + fusion) and a pure function of (inputs, tile, model, config); its
results are kept per tile under ``OUT/work/<fingerprint>/`` so that a rerun of the same night
(same inputs, model and config) skips finished tiles, and a distributed engine can later run
tiles on many machines without a redesign.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError

from detector import __version__
from detector.config import RunConfig
from detector.errors import BuildwatchError, InputError, OutputError
from detector.fileio import atomic_write_text, clean_stale_temps, exclusive_lock
from detector.geo.location import apply_network_defaults, is_remote, location_fingerprint
from detector.night.align import apply_registration, register_tile
from detector.night.change import changes_in_tile, difference_image, new_in_current, owns_centre
from detector.night.context import NightRun, RunContext, prepare
from detector.night.detect import detect_tile
from detector.night.georef import candidate_id, merge_duplicates, pixel_to_map, to_output
from detector.night.model import ModelSpec
from detector.night.mosaic import EpochReader
from detector.night.tiles import tile_groups, tile_layout, tile_window
from detector.types import Candidate, Detection, Registration, Tile, TileResult

__all__ = ["RunContext", "RunSummary", "TileResult", "prepare", "process_tile", "run_pipeline"]

log = logging.getLogger(__name__)

#: Every module logs to ``logging.getLogger(__name__)``, i.e. under this root; the run's
#: ``buildwatch.log`` is attached to it.
LOG_ROOT = "detector"

MIN_VALID_FRACTION = 0.02  # tiles with less valid overlap than this are skipped as nodata
LOCK_NAME = ".buildwatch.lock"  # one run per output folder at a time (see scripts/ for the nightly timer)
#: Library loggers whose records (GDAL messages, ``warnings``) the run's log file also gets.
LIBRARY_LOGGERS = ("py.warnings", "rasterio", "pyogrio", "fiona", "distributed")
PREFETCH = True  # read the next tile in a thread while this one runs (off: the profile times steps one by one)
TILE_GROUP = 4  # a worker takes 4 x 4 neighbouring tiles at a time (see tiles.tile_groups)
GDAL_CACHE_MB = 128  # per process; GDAL's default (5 % of RAM per process) would grow with the mosaic


@dataclass
class RunSummary:
    run_id: str
    candidates_path: Path
    log_path: Path
    tiles_total: int
    tiles_done: int
    tiles_nodata: int
    tiles_unregistered: int
    tiles_resumed: int
    candidates: int
    per_class: dict
    km2: float
    seconds: float
    dropped_by_exclusions: int = 0
    cases: object = None

    @property
    def km2_per_hour(self) -> float:
        return self.km2 / max(self.seconds, 1e-9) * 3600

    def text(self) -> str:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items())) or "none"
        return (
            f"tiles: {self.tiles_done} done ({self.tiles_resumed} resumed), {self.tiles_nodata} skipped (nodata), "
            f"{self.tiles_unregistered} flagged (not registered) of {self.tiles_total}\n"
            f"candidates: {self.candidates} ({classes})"
            + (f"; {self.dropped_by_exclusions} dropped by exclusion layers" if self.dropped_by_exclusions else "")
            + f"\ncovered: {self.km2:.4f} km² in {self.seconds:.1f} s ({self.km2_per_hour:.2f} km²/h)\n"
            f"output: {self.candidates_path}\nlog: {self.log_path}"
        )


# ---------------------------------------------------------------- tile processing (workers)

def process_tile(ctx: RunContext, tile: Tile, baseline_reader, current_reader, detector,
                 dsm_readers=None, pixels: tuple | None = None, second_view=None) -> TileResult:
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
        The tile already read (:func:`_read_tile`, e.g. prefetched while the previous tile ran).
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
    b, vb, c, vc = pixels if pixels is not None else _read_tile(ctx, tile, baseline_reader, current_reader)
    valid = vb & vc
    frac, covered = _coverage(ctx, valid)
    if frac < MIN_VALID_FRACTION or covered == 0.0:
        return TileResult(tile.tile_id, "nodata", frac, 0.0, seconds=time.perf_counter() - start)
    reg, c, vc, valid = _register(ctx, b, c, vc, valid, vb, tile_window(ctx.grid, tile))
    if not reg.ok:
        return TileResult(tile.tile_id, "unregistered", frac, covered, reg.dx_px * gsd, -reg.dy_px * gsd,
                          reg.shift_m, reg.quality, reg.reason, seconds=time.perf_counter() - start,
                          registration=reg.source, residual_m=reg.residual_m, inliers=reg.inliers)
    dets, baseline_iou = _detect(ctx, detector, b, c)
    stride, margin = tile_layout(ctx.size, ctx.overlap)
    # The difference image is needed only to judge the detections this tile reports (centre in
    # its core): most tiles have none, and then it is not computed.
    dets = [d for d in dets if owns_centre(d, margin, stride)]
    diff = difference_image(b, c, valid) if dets or (second_view is not None and ctx.config.detect.second_view.add) \
        else None
    changes = changes_in_tile(dets, diff, valid, gsd, ctx.config.change, margin, stride) if dets else []
    if second_view is not None and ctx.second is not None:
        changes, out = _second_view_step(ctx, tile, second_view, b, c, changes, diff, valid, margin, stride)
    else:
        out = [_tile_candidate(ctx, tile, d, changed, baseline_iou.get(id(d), 0.0)) for d, changed in changes]
    if dsm_readers is not None and ctx.dsm is not None:
        out = _height_step(ctx, tile, dsm_readers, reg, changes, out, b, c, valid)
    return TileResult(tile.tile_id, "done", frac, covered, reg.dx_px * gsd, -reg.dy_px * gsd, reg.shift_m,
                      reg.quality, reg.reason, out, time.perf_counter() - start, reg.source, reg.residual_m,
                      reg.inliers)


def _read_tile(ctx: RunContext, tile: Tile, baseline_reader, current_reader):
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


def _register(ctx: RunContext, b: np.ndarray, c: np.ndarray, vc: np.ndarray, valid: np.ndarray, vb: np.ndarray,
              offset: tuple[int, int] = (0, 0)):
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
    reg = register_tile(b, c, valid, ctx.grid.gsd, model=ctx.mosaic_model, offset=offset, max_shift_m=a.max_shift_m,
                        tile_tolerance_m=a.tile_tolerance_m, min_quality=a.min_quality, on_failure=a.on_failure)
    if not reg.ok:
        return reg, c, vc, valid
    c, vc = apply_registration(c, vc, reg)
    c[~vc] = 0
    valid = vb & vc
    return reg, c, vc, valid


def _detect(ctx: RunContext, detector, b: np.ndarray, c: np.ndarray) -> tuple[list[Detection], dict[int, float]]:
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


def _second_view_step(ctx: RunContext, tile: Tile, second_view, b: np.ndarray, c: np.ndarray, changes, diff,
                      valid: np.ndarray, margin: int, stride: int) -> tuple[list, list[Candidate]]:
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
    conf = _second_view_conf(ctx)
    match_iou, gsd, rules = ctx.config.change.baseline_match_iou, ctx.grid.gsd, ctx.config.change
    pair_dets = [d for d, _ in changes]
    current = sv.tonight(second_view, c, conf, ctx.second.iou)
    # The baseline is looked at only where it can change the verdict: pair candidates to judge, or
    # structures tonight that would be added unless the baseline explains them (same result, and
    # on most tiles of a night one inference instead of two).
    need_baseline = bool(changes) or (opts.add and bool(changes_in_tile(
        [d for d, _ in sv.additions(current, [], pair_dets, opts.add_conf, opts.cover, match_iou)],
        diff, valid, gsd, rules, margin, stride)))
    baseline = _baseline_view(ctx, tile, second_view, b, conf) if need_baseline else []
    verdicts = sv.judge(pair_dets, current, baseline, opts.cover, match_iou, opts.confirm, opts.confirm_below)
    kept = [(change, v) for change, v in zip(changes, verdicts) if v.keep]
    out = [_tile_candidate(ctx, tile, d, changed, v.baseline_iou, v.structure_conf) for (d, changed), v in kept]
    kept_changes = [change for change, _ in kept]
    if opts.add:
        added = sv.additions(current, baseline, pair_dets, opts.add_conf, opts.cover, match_iou)
        new = changes_in_tile([d for d, _ in added], diff, valid, gsd, rules, margin, stride)
        base_iou = {id(d): iou for d, iou in added}
        out += [replace(_tile_candidate(ctx, tile, d, changed, base_iou[id(d)], d.confidence), tags="second_view")
                for d, changed in new]
        kept_changes += new
    return kept_changes, out


def _second_view_conf(ctx: RunContext) -> float:
    """The confidence at which the building model reports a building tonight (the baseline is asked
    at :data:`detector.night.second_view.BASELINE_CONF_FACTOR` of it)."""
    opts = ctx.config.detect.second_view
    return opts.conf if opts.conf is not None else ctx.second.conf


def _baseline_view(ctx: RunContext, tile: Tile, second_view, b: np.ndarray, conf: float) -> list[Detection]:
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


def _tile_candidate(ctx: RunContext, tile: Tile, d: Detection, changed: float, baseline_iou: float,
                    structure_conf: float | None = None) -> Candidate:
    """A kept detection as a :class:`Candidate` in the working CRS (detection fields only)."""
    from shapely.geometry import Polygon

    return Candidate(
        geometry=Polygon(pixel_to_map(tile, ctx.grid.gsd, d.corners())),
        class_name=d.class_name if ctx.spec.is_pair else "new_building",
        confidence=round(d.confidence, 4),
        pixel_change=round(changed, 3),
        baseline_iou=round(baseline_iou, 3),
        tile_id=tile.tile_id,
        structure_conf=None if structure_conf is None else round(structure_conf, 4),
    )


def _height_step(ctx: RunContext, tile: Tile, dsm_readers, reg: Registration, changes, cands: list[Candidate],
                 b: np.ndarray, c: np.ndarray, valid: np.ndarray) -> list[Candidate]:
    """Height change of the tile (current DSM registered like the imagery) fused with its image candidates.

    See :mod:`detector.night.height`: candidates over a region of gain are confirmed, those the
    DSMs cover without gain down-weighted, and unexplained regions added as candidates.
    """
    from shapely.geometry import Polygon

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
    out = [replace(cand, confidence=f.confidence, tags=",".join([t for t in (cand.tags, *f.tags) if t]), height_gain_m=f.gain_m,
                   baseline_height_m=f.baseline_m, current_height_m=f.current_m) for cand, f in zip(cands, fused)]
    diff = difference_image(b, c, valid) if extra else None
    for f in extra:
        out.append(Candidate(geometry=Polygon(pixel_to_map(tile, gsd, f.corners)), class_name=f.class_name,
                             confidence=f.confidence, pixel_change=round(change_fraction(diff, valid, f.corners), 3),
                             tile_id=tile.tile_id, tags=",".join(f.tags), height_gain_m=f.gain_m,
                             baseline_height_m=f.baseline_m, current_height_m=f.current_m))
    return out


_WORKER: dict = {}


def _init_worker(ctx: RunContext) -> None:
    from detector.night.detect import EmbeddedBuildingView, OnnxDetector

    _WORKER["ctx"] = ctx
    _WORKER["b"] = EpochReader(ctx.baseline, ctx.grid, ctx.stretch_baseline)
    _WORKER["c"] = EpochReader(ctx.current, ctx.grid, ctx.stretch_current)
    det = ctx.config.detect
    _WORKER["det"] = OnnxDetector(ctx.spec, det.providers, det.intra_op_threads, det.batch_size)
    if ctx.second is not None and ctx.second.embedded:  # a two-view model's building head
        _WORKER["det2"] = EmbeddedBuildingView(_WORKER["det"])
    else:
        _WORKER["det2"] = OnnxDetector(ctx.second, det.providers, det.intra_op_threads, det.batch_size) \
            if ctx.second is not None else None
    if ctx.dsm is not None:
        from detector.night.height import DsmReader

        _WORKER["dsm"] = (DsmReader.on_grid(ctx.dsm.baseline, ctx.grid, ctx.dsm.baseline_scale),
                          DsmReader.on_grid(ctx.dsm.current, ctx.grid, ctx.dsm.current_scale))


def _work(tiles: list[Tile]) -> list[TileResult]:
    """Process a group of tiles in one worker, reading the next tile while this one runs.

    GDAL and ONNX Runtime release the GIL, so the read (decode, resample) of tile k+1 overlaps
    the registration and inference of tile k. Only the prefetch thread touches the readers.
    """
    from concurrent.futures import ThreadPoolExecutor

    w = _WORKER
    ctx, b, c, dsm = w["ctx"], w["b"], w["c"], w.get("dsm")
    if not PREFETCH:
        return [process_tile(ctx, t, b, c, w["det"], dsm, second_view=w.get("det2")) for t in tiles]
    out: list[TileResult] = []
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        nxt = pool.submit(_read_tile, ctx, tiles[0], b, c) if tiles else None
        for k, t in enumerate(tiles):
            pixels = nxt.result()
            if k + 1 < len(tiles):
                nxt = pool.submit(_read_tile, ctx, tiles[k + 1], b, c)
            out.append(process_tile(ctx, t, b, c, w["det"], dsm, pixels=pixels, second_view=w.get("det2")))
    return out


def _close_worker() -> None:
    for reader in [_WORKER.get("b"), _WORKER.get("c"), *(_WORKER.get("dsm") or ())]:
        if reader is not None:
            reader.close()
    _WORKER.clear()


def remote_batch(ctx: RunContext, tiles: list[Tile]) -> list[TileResult]:
    """A batch on a Dask worker: this process opens the night's readers and ONNX session once
    (:func:`_init_worker`, as a local pool worker does) and keeps them for the night's later batches."""
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    apply_network_defaults()
    key = (str(ctx.baseline.path), str(ctx.current.path), ctx.spec.sha256, ctx.config.model_dump_json())
    if _WORKER.get("key") != key:  # a new night on a long-lived worker
        _close_worker()
        _init_worker(ctx)
        _WORKER["key"] = key
    return _work(tiles)


# ---------------------------------------------------------------- the night (main process)

def run_pipeline(cfg: RunConfig) -> RunSummary:
    """Run one night end to end and write ``cfg.out / candidates.gpkg``.

    Parameters
    ----------
    cfg : RunConfig

    Returns
    -------
    RunSummary
    """
    # Workers inherit the environment; GDAL reads it when it first needs its block cache.
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    apply_network_defaults()  # remote mosaics (s3://, https://): bounded waits, retries
    t0 = time.perf_counter()
    ctx, tiles = _prepare_inputs(cfg)
    out_dir = _make_out_dir(cfg)
    with exclusive_lock(out_dir / LOCK_NAME, "this output folder"):
        return _run_locked(cfg, ctx, tiles, out_dir, t0)


def _run_locked(cfg: RunConfig, ctx: RunContext, tiles: list[Tile], out_dir: Path, t0: float) -> RunSummary:
    """The night's steps, with the output folder locked (so leftovers of killed runs can be removed)."""
    clean_stale_temps(out_dir)
    handler, log_path = _attach_log(out_dir)
    try:
        night = _open_night(cfg, ctx, tiles, out_dir, log_path, t0)
        results = _process_tiles(night)
        candidates = _finish_candidates(night, results, _merge(night, results))
        frame, dropped = _apply_exclusions(night, candidates)
        summary = _write_outputs(night, results, frame, dropped)
        if cfg.cases.registry is not None:
            summary.cases = _update_cases(frame, cfg, night.run_id, night.current_date, ctx, out_dir)
        log.info("finished: %s", summary.text().replace("\n", "; "))
        return summary
    except BuildwatchError as exc:
        log.error("%s", exc)
        raise
    except KeyboardInterrupt:
        log.error("interrupted; finished tiles are kept in %s, rerun the same command to resume", out_dir / "work")
        raise
    except Exception:
        log.exception("internal error")
        raise
    finally:
        _detach_log(handler)


def _prepare_inputs(cfg: RunConfig) -> tuple[RunContext, list[Tile]]:
    """Step *prepare*: :func:`prepare`, a corrupt raster reported as bad input."""
    try:
        return prepare(cfg)
    except RasterioError as exc:
        raise InputError(f"reading {cfg.baseline} / {cfg.current} failed ({str(exc).splitlines()[0][:120]}); "
                         "a file is truncated or corrupt") from None


def _make_out_dir(cfg: RunConfig) -> Path:
    out_dir = Path(cfg.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    return out_dir


def _attach_log(out_dir: Path) -> tuple[logging.Handler, Path]:
    """Send INFO and above from every project logger (all under :data:`LOG_ROOT`) to ``buildwatch.log``."""
    path = out_dir / "buildwatch.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger(LOG_ROOT)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for library in map(logging.getLogger, LIBRARY_LOGGERS):  # library noise goes here, not to the terminal
        library.addHandler(handler)
    logging.captureWarnings(True)
    return handler, path


def _detach_log(handler: logging.Handler) -> None:
    for logger in map(logging.getLogger, (LOG_ROOT, *LIBRARY_LOGGERS)):
        logger.removeHandler(handler)
    handler.close()


def _open_night(cfg: RunConfig, ctx: RunContext, tiles: list[Tile], out_dir: Path, log_path: Path,
                t0: float) -> NightRun:
    """Step *open the night*: fingerprint, run ID, work folder, and the tiles an earlier run finished."""
    hashes = {"baseline": location_fingerprint(ctx.baseline.path), "current": location_fingerprint(ctx.current.path)}
    if ctx.second is not None:
        hashes["second_view_model"] = ctx.second.sha256
    if ctx.dsm is not None:
        hashes.update(baseline_dsm=location_fingerprint(ctx.dsm.baseline.path),
                      current_dsm=location_fingerprint(ctx.dsm.current.path))
    fp = _fingerprint(cfg, ctx.spec, hashes)
    if ctx.second is not None and cfg.detect.second_view.baseline_cache is not None:
        _open_baseline_views(ctx, hashes["baseline"])
    started = datetime.now(timezone.utc)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{fp[:8]}"
    work_dir = out_dir / "work" / fp
    work_dir.mkdir(parents=True, exist_ok=True)
    done = _load_done(work_dir) if cfg.resume else {}
    ids = {t.tile_id for t in tiles}
    done = {k: v for k, v in done.items() if k in ids}
    todo = [t for t in tiles if t.tile_id not in done]
    log.info("run %s: %d tiles (%d already done), model %s (%s), gsd %.3f m, tile %d px, overlap %d px",
             run_id, len(tiles), len(done), ctx.spec.model_name, ctx.spec.sha256[:12], ctx.grid.gsd,
             ctx.size, ctx.overlap)
    if ctx.second is not None:
        opts = cfg.detect.second_view
        log.info("second view: building model %s (%s)%s%s", ctx.second.model_name, ctx.second.sha256[:12],
                 ", confirms candidates" if opts.confirm else "",
                 f", adds structures only it sees (conf >= {opts.add_conf:g})" if opts.add else "")
    if ctx.mosaic_model is not None:
        m = ctx.mosaic_model
        cx, cy = m.at((ctx.grid.width - 1) / 2, (ctx.grid.height - 1) / 2)
        log.info("mosaic registration model: shift %.2f m at the centre, rotation %.3f°, %d of %d blocks agree "
                 "(RMS %.2f m, spread %.2f)%s", np.hypot(cx, cy) * ctx.grid.gsd, m.rotation_deg, m.inliers, m.blocks,
                 m.residual_m, m.spread, "" if m.ok else f"; not usable: {m.reason}")
    if ctx.dsm is not None:
        from detector.night.height import describe

        log.info("%s", describe(ctx.dsm))
    return NightRun(cfg, ctx, tiles, out_dir, log_path, t0, hashes, fp, started, run_id, work_dir, done, todo)


def _open_baseline_views(ctx: RunContext, baseline_sha: str) -> None:
    """Point ``ctx.baseline_views`` at the stored baseline views this night can use
    (:mod:`detector.night.view_cache`): keyed by everything the building model's baseline
    detections depend on."""
    from detector.night.second_view import BASELINE_CONF_FACTOR
    from detector.night.view_cache import open_views

    opts = ctx.config.detect.second_view
    conf = _second_view_conf(ctx)
    g = ctx.grid
    facts = {"baseline_sha256": baseline_sha, "crs": g.crs_wkt, "gsd": g.gsd,
             "left": g.left, "top": g.top, "tile_px": ctx.size, "overlap_px": ctx.overlap,
             "model": ctx.second.model_name, "model_sha256": ctx.second.sha256, "conf": conf * BASELINE_CONF_FACTOR,
             "iou": ctx.second.iou, "stretch": None if ctx.stretch_baseline is None
             else [np.asarray(a).tolist() for a in ctx.stretch_baseline], "software": __version__}
    folder = Path(opts.baseline_cache)
    try:
        ctx.baseline_views = open_views(folder, facts, {"baseline": str(Path(ctx.baseline.path).resolve())
                                                        if not is_remote(ctx.baseline.path) else str(ctx.baseline.path)})
    except OSError as exc:
        raise OutputError(f"{folder}: cannot keep baseline views there ({exc.strerror}); choose a writable folder "
                          "for detect.second_view.baseline_cache") from None
    log.info("baseline views kept in %s", ctx.baseline_views)


def _fingerprint(cfg: RunConfig, spec: ModelSpec, hashes: dict) -> str:
    skip = dict.fromkeys(("out", "workers", "scheduler", "min_coverage", "resume", "progress", "cases", "baseline",
                          "current", "model", "baseline_dsm", "current_dsm"), True)
    skip["detect"] = {"second_view": {"baseline_cache"}}  # where views are kept does not change them
    relevant = cfg.model_dump(mode="json", exclude=skip)
    key = json.dumps({"inputs": hashes, "model": spec.sha256, "config": relevant, "software": __version__},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _load_done(work_dir: Path) -> dict[str, TileResult]:
    from shapely.errors import ShapelyError

    done = {}
    for p in work_dir.glob("*.json"):
        try:
            done[p.stem] = TileResult.from_json(p.read_text())
        except (ValueError, TypeError, KeyError, AttributeError, ShapelyError):
            p.unlink(missing_ok=True)  # a torn file from a killed run: redo that tile
    return done


def _save_tile(work_dir: Path, result: TileResult) -> None:
    atomic_write_text(work_dir / f"{result.tile_id}.json", result.to_json())


def _process_tiles(night: NightRun) -> list[TileResult]:
    """Step *run tiles*: the resumed results plus every tile still to do."""
    ctx = night.ctx
    try:
        return list(night.resumed.values()) + _run_tiles(ctx, night.todo, night.work_dir, night.cfg.progress)
    except RasterioError as exc:
        raise InputError(f"reading {ctx.baseline.path} / {ctx.current.path} failed mid-run "
                         f"({str(exc).splitlines()[0][:120]}); a file is truncated or corrupt") from None


# ---------------------------------------------------------------- steps

def _run_tiles(ctx: RunContext, todo: list[Tile], work_dir: Path, progress: bool) -> list[TileResult]:
    from tqdm import tqdm

    cfg = ctx.config
    batches = tile_groups(todo, TILE_GROUP)  # neighbours together: each source block decoded about once
    results: list[TileResult] = []
    # the bar is for a person at a terminal; under cron/systemd its carriage returns would fill the log
    bar = tqdm(total=len(todo), unit="tile", desc="tiles", leave=False,
               disable=not progress or not todo or not sys.stderr.isatty())
    workers = min(cfg.workers, len(batches)) if batches else 1
    pool = None
    try:
        if cfg.scheduler and batches:  # a Dask cluster (detector/night/distributed.py)
            from detector.night.distributed import run_batches

            iterator = run_batches(ctx, batches, cfg.scheduler, remote_batch)
        elif workers <= 1:
            _init_worker(ctx)
            iterator = map(_work, batches)
        else:
            import multiprocessing as mp

            with _sigint_ignored():  # workers are born ignoring Ctrl-C: the main process handles it, quietly
                pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(ctx,))
            iterator = pool.imap_unordered(_work, batches)
        for batch in iterator:
            for r in batch:
                _save_tile(work_dir, r)
                results.append(r)
                if r.status == "unregistered":
                    log.warning("tile %s not registered: %s", r.tile_id, r.reason)
            bar.update(len(batch))
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        if pool is not None:  # interrupted or failed: stop the workers now, quietly
            pool.terminate()
            pool.join()
        bar.close()
        if workers <= 1 and "b" in _WORKER:
            _close_worker()
    return results


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while child processes start (an ignored signal stays ignored in them)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _merge(night: NightRun, results: list[TileResult]) -> list[Candidate]:
    """Step *merge*: one candidate per structure seen by several tiles, in map coordinates.

    Returns the kept candidates ordered by tile, then by decreasing confidence.
    """
    cands = [c for r in results for c in r.candidates]
    change = night.cfg.change
    kept = merge_duplicates([c.geometry for c in cands], [c.class_name for c in cands],
                            [c.confidence for c in cands], change.merge_iou, change.merge_ioa)
    kept.sort(key=lambda i: (cands[i].tile_id, -cands[i].confidence))
    return [cands[i] for i in kept]


def _finish_candidates(night: NightRun, results: list[TileResult], kept: list[Candidate]) -> list[Candidate]:
    """Step *to candidates*: IDs, areas, WGS84 centroids, dates and provenance; geometry in the output CRS."""
    ctx = night.ctx
    tile_shift = {r.tile_id: r.shift_m for r in results}
    out_geoms, lon, lat, area = to_output([c.geometry for c in kept], ctx.grid)
    b_date, c_date = night.baseline_date, night.current_date
    out = []
    for k, c in enumerate(kept):
        cent = c.geometry.centroid
        out.append(replace(
            c, candidate_id=candidate_id(c.class_name, cent.x, cent.y, ctx.grid.crs_wkt),
            area_m2=round(float(area[k]), 2), lon=round(float(lon[k]), 8), lat=round(float(lat[k]), 8),
            baseline_date=b_date.isoformat() if b_date else "", current_date=c_date.isoformat() if c_date else "",
            shift_m=round(tile_shift.get(c.tile_id, 0.0), 3), model_name=ctx.spec.model_name,
            model_sha256=ctx.spec.sha256, run_id=night.run_id, status="new", tags=c.tags, geometry=out_geoms[k],
            model_version=ctx.model_version))
    return out


def _apply_exclusions(night: NightRun, candidates: list[Candidate]):
    """Step *exclusions*: the candidates as the output frame, tagged or dropped by the exclusion layers.

    Returns
    -------
    (GeoDataFrame, int)
        The ``candidates`` layer and the number of candidates dropped.
    """
    from detector.night.export import candidates_frame

    frame = candidates_frame(candidates, night.ctx.grid.output_crs_wkt)
    layers = night.cfg.change.exclusions
    if not layers or not len(frame):
        return frame, 0
    from detector.night.change import apply_exclusions

    return apply_exclusions(frame, layers, night.current_date, night.ctx.grid.output_crs_wkt)


def _write_outputs(night: NightRun, results: list[TileResult], cand, dropped: int) -> RunSummary:
    """Step *write*: ``candidates.gpkg`` (candidates, tiles, the ``runs`` record) and the summary."""
    from detector.night.export import tiles_frame, write_geopackage

    cfg, ctx = night.cfg, night.ctx
    tiles_gdf = tiles_frame(results, {t.tile_id: t for t in night.tiles}, ctx.grid)
    counts = Counter(r.status for r in results)
    km2 = sum(r.covered_m2 for r in results) / 1e6
    seconds = time.perf_counter() - night.t0
    per_class = dict(Counter(cand["class"])) if len(cand) else {}
    b_date, c_date = night.baseline_date, night.current_date
    record = {
        "run_id": night.run_id, "started_utc": night.started.isoformat(), "software": f"buildwatch {__version__}",
        "baseline": str(ctx.baseline.path), "baseline_sha256": night.hashes["baseline"],
        "current": str(ctx.current.path), "current_sha256": night.hashes["current"],
        "baseline_date": b_date.isoformat() if b_date else "", "current_date": c_date.isoformat() if c_date else "",
        "model": str(ctx.spec.path), "model_name": ctx.spec.model_name, "model_sha256": ctx.spec.sha256,
        "model_version": ctx.model_version,
        "second_view_model": str(ctx.second.path) if ctx.second else "",
        "second_view_model_name": ctx.second.model_name if ctx.second else "",
        "second_view_model_sha256": ctx.second.sha256 if ctx.second else "",
        "config": cfg.model_dump(mode="json"), "fingerprint": night.fingerprint,
        "tiles_total": len(night.tiles), "tiles_done": counts["done"], "tiles_nodata": counts["nodata"],
        "tiles_unregistered": counts["unregistered"], "tiles_resumed": len(night.resumed),
        "candidates": len(cand), "per_class": per_class, "dropped_by_exclusions": dropped,
        "km2": round(km2, 6), "seconds": round(seconds, 2),
        "tile_seconds_sum": round(sum(r.seconds for r in results), 2),
    }
    path = night.out_dir / "candidates.gpkg"
    write_geopackage(path, cand, tiles_gdf, record)
    return RunSummary(night.run_id, path, night.log_path, len(night.tiles), counts["done"], counts["nodata"],
                      counts["unregistered"], len(night.resumed), len(cand), per_class, km2, seconds, dropped)


def _update_cases(cand, cfg: RunConfig, run_id: str, night: date | None, ctx: RunContext, out_dir: Path):
    from detector.review.nightly import update_cases

    registry = Path(cfg.cases.registry)
    # runs of several output folders may share one registry: one update at a time, so two first
    # nights cannot both create it (the second merges into the first's instead of replacing it)
    with exclusive_lock(registry.with_name(f".{registry.name}.lock"), "the case registry", wait=True):
        return update_cases(cand, cfg.cases, run_id=run_id, night=night or date.today(),
                            baseline_path=ctx.baseline.path, current_path=ctx.current.path, out_dir=out_dir,
                            dsm=ctx.dsm)
