"""The nightly run: orthomosaic pair -> tiles -> detections -> change candidates -> GeoPackage.

``run_pipeline(config)`` is what ``buildwatch run`` and ``buildwatch evaluate`` call. Tile
processing (:func:`process_tile`) is a pure function of (inputs, tile, model, config); its
results are kept per tile under ``OUT/work/<fingerprint>/`` so that a rerun of the same night
(same inputs, model and config) skips finished tiles, and a distributed engine can later run
tiles on many machines without a redesign.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError

from detector import __version__
from detector.night.align import apply_shift, estimate_mosaic_shift, estimate_shift
from detector.night.change import change_fraction, difference_image, invalid_fraction, new_in_current
from detector.config import RunConfig
from detector.errors import BuildwatchError, ConfigError, InputError, ModelError
from detector.fileio import atomic_write_text
from detector.night.georef import candidate_id, merge_duplicates, pixel_to_map, to_output
from detector.night.model import ModelSpec, file_sha256, load_model_spec
from detector.night.mosaic import EpochReader, MosaicInfo, WorkingGrid, make_grid, open_mosaic
from detector.night.tiles import iter_tiles, tile_layout, tile_window
from detector.types import Detection, Registration, Tile

log = logging.getLogger("detector.night.pipeline")

MIN_VALID_FRACTION = 0.02  # tiles with less valid overlap than this are skipped as nodata
MAX_INVALID_IN_BOX = 0.10  # detections with more nodata inside are edge artefacts


@dataclass
class RunContext:
    """Everything a worker needs to process any tile (picklable)."""

    baseline: MosaicInfo
    current: MosaicInfo
    grid: WorkingGrid
    spec: ModelSpec
    config: RunConfig
    size: int
    overlap: int
    conf: float
    iou: float
    stretch_baseline: tuple | None = None
    stretch_current: tuple | None = None
    mosaic_registration: Registration | None = None  # fallback for tiles whose own correlation is weak


@dataclass
class TileResult:
    tile_id: str
    status: str  # "done" | "nodata" | "unregistered"
    valid_fraction: float
    covered_m2: float
    dx_m: float = 0.0
    dy_m: float = 0.0
    shift_m: float = 0.0
    quality: float = 0.0
    reason: str = ""
    candidates: list[dict] = field(default_factory=list)  # wkt in the working CRS + attributes
    seconds: float = 0.0
    registration: str = "tile"  # "tile" | "mosaic" (fallback) | "none" (alignment disabled)


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

def detect_tile(detector, spec: ModelSpec, baseline: np.ndarray, current: np.ndarray, conf: float, iou: float
                ) -> tuple[list[Detection], list[Detection]]:
    """(current-epoch or change detections, baseline detections) for one co-registered tile."""
    if spec.is_pair:
        return detector([np.concatenate([baseline, current], axis=2)], conf, iou)[0], []
    cur = detector([current], conf, iou)[0]
    # Ask the baseline generously: weak baseline evidence of a structure still explains it away.
    base = detector([baseline], conf * 0.5, iou)[0]
    return cur, base


def process_tile(ctx: RunContext, tile: Tile, baseline_reader, current_reader, detector) -> TileResult:
    """Read, register, detect and decide one tile. Pure in (inputs, tile, model, config)."""
    from shapely.geometry import Polygon

    start = time.perf_counter()
    cfg = ctx.config
    gsd = ctx.grid.gsd
    col_off, row_off = tile_window(ctx.grid, tile)
    b, vb = baseline_reader.read(col_off, row_off, tile.width, tile.height)
    c, vc = current_reader.read(col_off, row_off, tile.width, tile.height)
    valid = vb & vc
    stride, margin = tile_layout(ctx.size, ctx.overlap)
    core = np.zeros_like(valid)
    core[margin : margin + stride, margin : margin + stride] = True
    covered = float((valid & core).sum()) * gsd * gsd
    frac = float(valid.mean())
    if frac < MIN_VALID_FRACTION or not (valid & core).any():
        return TileResult(tile.tile_id, "nodata", frac, 0.0, seconds=time.perf_counter() - start)

    if cfg.align.enabled:
        reg = estimate_shift(b, c, valid, gsd, cfg.align.max_shift_m, cfg.align.min_quality)
        fallback = ctx.mosaic_registration
        # A weak or implausible local estimate (typically: most of the tile changed, as in a block
        # development) falls back to the mosaic's shift; without a usable one the tile is flagged.
        if not reg.ok and fallback is not None and fallback.ok:
            reg = Registration(fallback.dx_px, fallback.dy_px, fallback.shift_m, fallback.quality, True,
                               f"{reg.reason}; mosaic-level shift used", "mosaic")
        if not reg.ok:
            return TileResult(tile.tile_id, "unregistered", frac, covered, reg.dx_px * gsd, -reg.dy_px * gsd,
                              reg.shift_m, reg.quality, reg.reason, seconds=time.perf_counter() - start)
        c, vc = apply_shift(c, vc, reg)
        c[~vc] = 0
        valid = vb & vc
    else:
        reg = Registration(0.0, 0.0, 0.0, 1.0, True, "alignment disabled", "none")

    dets, base_dets = detect_tile(detector, ctx.spec, b, c, ctx.conf, ctx.iou)
    matched: dict[int, float] = {}
    if not ctx.spec.is_pair:
        new = new_in_current(dets, base_dets, cfg.change.baseline_match_iou)
        matched = {id(d): iou for d, iou in new}
        dets = [d for d, _ in new]
    diff = difference_image(b, c, valid)
    out: list[dict] = []
    for d in dets:
        if not (margin <= d.cx < margin + stride and margin <= d.cy < margin + stride):
            continue  # another tile owns this centre
        area = d.w * d.h * gsd * gsd
        if not (cfg.change.min_area_m2 <= area <= cfg.change.max_area_m2):
            continue
        corners = d.corners()
        if invalid_fraction(valid, corners) > MAX_INVALID_IN_BOX:
            continue
        changed = change_fraction(diff, valid, corners)
        if changed < cfg.change.min_pixel_change:
            continue
        class_name = d.class_name if ctx.spec.is_pair else "new_building"
        ring = pixel_to_map(tile, gsd, corners)
        out.append({
            "wkt": Polygon(ring).wkt,
            "class": class_name,
            "confidence": round(d.confidence, 4),
            "pixel_change": round(changed, 3),
            "baseline_iou": round(matched.get(id(d), 0.0), 3),
        })
    return TileResult(tile.tile_id, "done", frac, covered, reg.dx_px * gsd, -reg.dy_px * gsd, reg.shift_m,
                      reg.quality, reg.reason, out, time.perf_counter() - start, reg.source)


_WORKER: dict = {}


def _init_worker(ctx: RunContext) -> None:
    from detector.night.detect import OnnxDetector

    _WORKER["ctx"] = ctx
    _WORKER["b"] = EpochReader(ctx.baseline, ctx.grid, ctx.stretch_baseline)
    _WORKER["c"] = EpochReader(ctx.current, ctx.grid, ctx.stretch_current)
    det = ctx.config.detect
    _WORKER["det"] = OnnxDetector(ctx.spec, det.providers, det.intra_op_threads, det.batch_size)


def _work(tiles: list[Tile]) -> list[TileResult]:
    w = _WORKER
    return [process_tile(w["ctx"], t, w["b"], w["c"], w["det"]) for t in tiles]


# ---------------------------------------------------------------- orchestration

def _fingerprint(cfg: RunConfig, spec: ModelSpec, hashes: dict) -> str:
    relevant = cfg.model_dump(mode="json", exclude={"out", "workers", "resume", "progress", "cases", "baseline",
                                                     "current", "model"})
    key = json.dumps({"inputs": hashes, "model": spec.sha256, "config": relevant, "software": __version__},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _load_done(work_dir: Path) -> dict[str, TileResult]:
    done = {}
    for p in work_dir.glob("*.json"):
        try:
            done[p.stem] = TileResult(**json.loads(p.read_text()))
        except (ValueError, TypeError):
            p.unlink(missing_ok=True)  # a torn file from a killed run: redo that tile
    return done


def _save_tile(work_dir: Path, result: TileResult) -> None:
    atomic_write_text(work_dir / f"{result.tile_id}.json", json.dumps(asdict(result)))


def _attach_log(out_dir: Path) -> tuple[logging.Handler, Path]:
    path = out_dir / "buildwatch.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("detector")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler, path


def prepare(cfg: RunConfig) -> tuple[RunContext, list[Tile]]:
    """Validate inputs and model, build the working grid and the tile list."""
    if cfg.baseline is None or cfg.current is None or cfg.out is None:
        raise ConfigError("need --baseline, --current and --out (or the same keys in --config)")
    baseline = open_mosaic(cfg.baseline, "baseline")
    current = open_mosaic(cfg.current, "current")
    if baseline.is_rgb != current.is_rgb:
        raise InputError(f"{current.path}: current mosaic has {current.colour_bands} colour band(s) but the baseline "
                         f"{baseline.path.name} has {baseline.colour_bands}: both epochs must be RGB, or both panchromatic")
    spec = load_model_spec(cfg.model)
    size = spec.imgsz[0]
    if spec.imgsz[0] != spec.imgsz[1]:
        raise ModelError(f"{spec.path}: non-square input {spec.imgsz} is not supported")
    if cfg.detect.overlap_px is not None:
        overlap = cfg.detect.overlap_px
    else:  # a structure is seen whole by the tile owning its centre only if it fits in the overlap
        overlap = min(max(spec.overlap_px, math.ceil(cfg.change.max_structure_m / spec.gsd_m)), size // 2 - 1)
    if not 0 <= overlap < size // 2:
        raise ConfigError(f"detect.overlap_px={overlap} must be between 0 and half the tile size ({size // 2})")
    if overlap * spec.gsd_m < cfg.change.max_structure_m:
        log.warning("tile overlap %.1f m is smaller than change.max_structure_m %.1f m: larger structures may be "
                    "cut at tile borders", overlap * spec.gsd_m, cfg.change.max_structure_m)
    _check_exclusions(cfg, cfg.current_date or current.acquired)
    grid = make_grid(baseline, current, spec.gsd_m)
    ctx = RunContext(
        baseline=baseline, current=current, grid=grid, spec=spec, config=cfg, size=size, overlap=overlap,
        conf=cfg.detect.conf if cfg.detect.conf is not None else spec.conf,
        iou=cfg.detect.iou if cfg.detect.iou is not None else spec.iou,
    )
    for info, attr in ((baseline, "stretch_baseline"), (current, "stretch_current")):
        if info.dtype != "uint8":  # computed once here, handed to every worker
            reader = EpochReader(info, grid)
            setattr(ctx, attr, reader.stretch)
            reader.close()
    if cfg.align.enabled:
        ctx.mosaic_registration = estimate_mosaic_shift(baseline, current, grid, (ctx.stretch_baseline,
                                                        ctx.stretch_current), cfg.align.max_shift_m,
                                                        cfg.align.min_quality)
    tiles = list(iter_tiles(grid, size, overlap))
    return ctx, tiles


def _check_exclusions(cfg: RunConfig, current_date: date | None) -> None:
    """Fail before any tile is processed when an exclusion layer is unusable."""
    from detector.night.change import exclusion_layer_info

    for layer in cfg.change.exclusions:
        info = exclusion_layer_info(layer)
        dated = layer.kind == "permitted" and any(
            f and f in list(info["fields"]) for f in (layer.valid_from_field, layer.valid_to_field))
        if dated and current_date is None:
            raise ConfigError(f"{cfg.current}: the current mosaic has no acquisition date (TIFFTAG_DATETIME), so "
                              f"permit validity in {layer.path.name} cannot be checked; set current_date in the config")


def _run_tiles(ctx: RunContext, todo: list[Tile], work_dir: Path, progress: bool) -> list[TileResult]:
    from tqdm import tqdm

    cfg = ctx.config
    chunk = max(1, cfg.detect.batch_size)
    batches = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    results: list[TileResult] = []
    bar = tqdm(total=len(todo), unit="tile", desc="tiles", disable=not progress or not todo, leave=False)
    workers = min(cfg.workers, len(batches)) if batches else 1
    try:
        if workers <= 1:
            _init_worker(ctx)
            iterator = map(_work, batches)
            pool = None
        else:
            import multiprocessing as mp

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
    finally:
        bar.close()
        if workers <= 1 and "b" in _WORKER:
            _WORKER["b"].close()
            _WORKER["c"].close()
            _WORKER.clear()
    return results


def _tile_polygon(tile: Tile):
    from shapely.geometry import box

    return box(*tile.bounds)


GDAL_CACHE_MB = 128  # per process; GDAL's default (5 % of RAM per process) would grow with the mosaic


def run_pipeline(cfg: RunConfig) -> RunSummary:
    """Run one night end to end and write ``cfg.out / candidates.gpkg``."""
    import geopandas as gpd
    import shapely

    # Workers inherit the environment; GDAL reads it when it first needs its block cache.
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))

    t0 = time.perf_counter()
    try:
        ctx, tiles = prepare(cfg)
    except RasterioError as exc:
        raise InputError(f"reading {cfg.baseline} / {cfg.current} failed ({str(exc).splitlines()[0][:120]}); "
                         "a file is truncated or corrupt") from None
    out_dir = Path(cfg.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    handler, log_path = _attach_log(out_dir)
    try:
        hashes = {"baseline": file_sha256(ctx.baseline.path), "current": file_sha256(ctx.current.path)}
        fp = _fingerprint(cfg, ctx.spec, hashes)
        started = datetime.now(timezone.utc)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-{fp[:8]}"
        work_dir = out_dir / "work" / fp
        work_dir.mkdir(parents=True, exist_ok=True)
        done = _load_done(work_dir) if cfg.resume else {}
        by_id = {t.tile_id: t for t in tiles}
        done = {k: v for k, v in done.items() if k in by_id}
        todo = [t for t in tiles if t.tile_id not in done]
        log.info("run %s: %d tiles (%d already done), model %s (%s), gsd %.3f m, tile %d px, overlap %d px",
                 run_id, len(tiles), len(done), ctx.spec.model_name, ctx.spec.sha256[:12], ctx.grid.gsd,
                 ctx.size, ctx.overlap)
        if ctx.mosaic_registration is not None:
            m = ctx.mosaic_registration
            log.info("mosaic-level shift %.2f m (quality %.3f%s)", m.shift_m, m.quality,
                     "" if m.ok else f", not usable: {m.reason}")
        try:
            results = list(done.values()) + _run_tiles(ctx, todo, work_dir, cfg.progress)
        except RasterioError as exc:
            raise InputError(f"reading {ctx.baseline.path} / {ctx.current.path} failed mid-run "
                             f"({str(exc).splitlines()[0][:120]}); a file is truncated or corrupt") from None

        # Merge duplicates across tiles in map coordinates.
        rows = [(r.tile_id, c) for r in results for c in r.candidates]
        geoms = [shapely.from_wkt(c["wkt"]) for _, c in rows]
        kept = merge_duplicates(geoms, [c["class"] for _, c in rows], [c["confidence"] for _, c in rows],
                                cfg.change.merge_iou, cfg.change.merge_ioa)
        kept.sort(key=lambda i: (rows[i][0], -rows[i][1]["confidence"]))
        tile_shift = {r.tile_id: r.shift_m for r in results}
        out_geoms, lon, lat, area = to_output([geoms[i] for i in kept], ctx.grid)
        b_date = cfg.baseline_date or ctx.baseline.acquired
        c_date = cfg.current_date or ctx.current.acquired
        records = []
        for k, i in enumerate(kept):
            tile_id, c = rows[i]
            cent = geoms[i].centroid
            records.append({
                "candidate_id": candidate_id(c["class"], cent.x, cent.y, ctx.grid.crs_wkt),
                "class": c["class"], "confidence": c["confidence"], "area_m2": round(float(area[k]), 2),
                "lon": round(float(lon[k]), 8), "lat": round(float(lat[k]), 8), "tile_id": tile_id,
                "baseline_date": b_date.isoformat() if b_date else "",
                "current_date": c_date.isoformat() if c_date else "",
                "shift_m": round(tile_shift.get(tile_id, 0.0), 3), "model_name": ctx.spec.model_name,
                "model_sha256": ctx.spec.sha256, "run_id": run_id, "status": "new", "tags": "",
                "pixel_change": c["pixel_change"], "baseline_iou": c["baseline_iou"],
            })
        from detector.night.export import CANDIDATE_FIELDS

        cand = gpd.GeoDataFrame(records, columns=CANDIDATE_FIELDS, geometry=out_geoms if records else [],
                                crs=ctx.grid.output_crs_wkt)
        dropped = 0
        if cfg.change.exclusions and len(cand):
            from detector.night.change import apply_exclusions

            cand, dropped = apply_exclusions(cand, cfg.change.exclusions, c_date, ctx.grid.output_crs_wkt)

        tiles_gdf = _tiles_frame(results, by_id, ctx)
        counts = Counter(r.status for r in results)
        km2 = sum(r.covered_m2 for r in results) / 1e6
        seconds = time.perf_counter() - t0
        per_class = dict(Counter(cand["class"])) if len(cand) else {}
        record = {
            "run_id": run_id, "started_utc": started.isoformat(), "software": f"buildwatch {__version__}",
            "baseline": str(ctx.baseline.path), "baseline_sha256": hashes["baseline"],
            "current": str(ctx.current.path), "current_sha256": hashes["current"],
            "baseline_date": b_date.isoformat() if b_date else "", "current_date": c_date.isoformat() if c_date else "",
            "model": str(ctx.spec.path), "model_name": ctx.spec.model_name, "model_sha256": ctx.spec.sha256,
            "config": cfg.model_dump(mode="json"), "fingerprint": fp,
            "tiles_total": len(tiles), "tiles_done": counts["done"], "tiles_nodata": counts["nodata"],
            "tiles_unregistered": counts["unregistered"], "tiles_resumed": len(done),
            "candidates": len(cand), "per_class": per_class, "dropped_by_exclusions": dropped,
            "km2": round(km2, 6), "seconds": round(seconds, 2),
            "tile_seconds_sum": round(sum(r.seconds for r in results), 2),
        }
        path = out_dir / "candidates.gpkg"
        from detector.night.export import write_geopackage

        write_geopackage(path, cand, tiles_gdf, record)
        summary = RunSummary(run_id, path, log_path, len(tiles), counts["done"], counts["nodata"],
                             counts["unregistered"], len(done), len(cand), per_class, km2, seconds, dropped)
        if cfg.cases.registry is not None:
            summary.cases = _update_cases(cand, cfg, run_id, c_date, ctx, out_dir)
        log.info("finished: %s", summary.text().replace("\n", "; "))
        return summary
    except BuildwatchError as exc:
        log.error("%s", exc)
        raise
    except Exception:
        log.exception("internal error")
        raise
    finally:
        logging.getLogger("detector").removeHandler(handler)
        handler.close()


def _tiles_frame(results: list[TileResult], by_id: dict[str, Tile], ctx: RunContext):
    import geopandas as gpd

    rows = [{"tile_id": r.tile_id, "status": r.status, "valid_fraction": round(r.valid_fraction, 4),
             "shift_m": round(r.shift_m, 3), "dx_m": round(r.dx_m, 3), "dy_m": round(r.dy_m, 3),
             "quality": round(r.quality, 4), "registration": r.registration, "reason": r.reason,
             "candidates": len(r.candidates),
             "seconds": round(r.seconds, 3)} for r in sorted(results, key=lambda r: r.tile_id)]
    geoms = [_tile_polygon(by_id[row["tile_id"]]) for row in rows]
    out_geoms = to_output(geoms, ctx.grid)[0] if geoms else []
    return gpd.GeoDataFrame(rows, geometry=out_geoms, crs=ctx.grid.output_crs_wkt)


def _update_cases(cand, cfg: RunConfig, run_id: str, night: date | None, ctx: RunContext, out_dir: Path):
    from detector.review import registry

    return registry.update_registry(cand, cfg.cases, run_id=run_id, night=night or date.today(),
                                 baseline_path=ctx.baseline.path, current_path=ctx.current.path, out_dir=out_dir)
