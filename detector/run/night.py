"""The nightly run: orthomosaic pair -> tiles -> detections -> change candidates -> GeoPackage -> cases.

``run_pipeline(config)`` is what ``buildwatch run`` and ``buildwatch evaluate`` call. It is a
list of named steps, in this process::

    prepare          inputs, model, working grid, tile list          (:func:`detector.run.prepare.prepare`)
    open the night   output folder, lock, log file, fingerprint,
                     resume                                           (:func:`_open_night`)
    run tiles        every tile not finished yet, each saved as it
                     finishes                                         (:func:`_process_tiles`)
    merge            duplicates from overlapping tiles               (:func:`_merge`)
    to candidates    ids, areas, WGS84 centroids, provenance         (:func:`_finish_candidates`)
    exclusions       permits and known buildings                     (:func:`_apply_exclusions`)
    write            candidates.gpkg                                 (:func:`_write_outputs`)
    cases            the case registry, when configured              (:func:`_update_cases`)

The tiles themselves are the night stage's (:mod:`detector.night`): one tile is
:func:`detector.night.tile.process_tile`, a pure function of (inputs, tile, model, config);
:mod:`detector.night.executors` runs them here, on a local process pool or on a Dask cluster.
Their results are kept per tile under ``OUT/work/<fingerprint>/``, so that a rerun of the same
night (same inputs, model and config) skips finished tiles whoever computed them.
"""

from __future__ import annotations

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
from detector.fileio import atomic_write_text, clean_stale_temps, exclusive_lock, json_digest
from detector.geo.location import apply_network_defaults, is_remote, location_fingerprint
from detector.logs import LIBRARY_LOGGERS, LOG_ROOT, log_to, stop_logging_to
from detector.night.align import judge_move
from detector.night.context import RunContext
from detector.night.executors import GDAL_CACHE_MB, run_tiles
from detector.night.georef import candidate_id, merge_duplicates, to_output
from detector.night.model import ModelSpec
from detector.night.mosaic import tiles_without_data
from detector.night.tile import second_view_add_conf, second_view_conf
from detector.run.prepare import prepare
from detector.types import Candidate, Tile, TileResult

__all__ = ["LOCK_NAME", "RunSummary", "run_pipeline"]

log = logging.getLogger(__name__)

LOCK_NAME = (
    ".buildwatch.lock"  # one run per output folder at a time (see scripts/ for the nightly timer)
)


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

    def _rate(self) -> str:
        """The throughput, or why there is none: tiles read from an earlier run took no time."""
        if self.tiles_resumed and self.tiles_resumed >= self.tiles_done:
            return "every tile resumed from the earlier run: no throughput measured"
        if self.tiles_resumed:
            return f"{self.km2_per_hour:.2f} km²/h, {self.tiles_resumed} tiles resumed"
        return f"{self.km2_per_hour:.2f} km²/h"

    def text(self) -> str:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items())) or "none"
        return (
            f"tiles: {self.tiles_done} done ({self.tiles_resumed} resumed), {self.tiles_nodata} skipped (nodata), "
            f"{self.tiles_unregistered} flagged (not registered) of {self.tiles_total}\n"
            f"candidates: {self.candidates} ({classes})"
            + (
                f"; {self.dropped_by_exclusions} dropped by exclusion layers"
                if self.dropped_by_exclusions
                else ""
            )
            + f"\ncovered: {self.km2:.4f} km² in {self.seconds:.1f} s ({self._rate()})\n"
            f"output: {self.candidates_path}\nlog: {self.log_path}"
        )


@dataclass
class NightRun:
    """What the steps of one run share (main process only)."""

    cfg: RunConfig
    ctx: RunContext
    tiles: list[Tile]
    out_dir: Path
    log_path: Path
    t0: float  # perf_counter at the start of the run
    hashes: dict  # input name -> sha256
    fingerprint: str  # inputs + model + config + software: names the work folder
    started: datetime
    run_id: str
    work_dir: Path
    resumed: dict[str, TileResult]  # finished by an earlier run of the same night
    todo: list[Tile]
    skipped: list[TileResult] = None  # "nodata" from the coarse read, never opened

    @property
    def baseline_date(self) -> date | None:
        return self.cfg.baseline_date or self.ctx.baseline.acquired

    @property
    def current_date(self) -> date | None:
        return self.cfg.current_date or self.ctx.current.acquired


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


def _run_locked(
    cfg: RunConfig, ctx: RunContext, tiles: list[Tile], out_dir: Path, t0: float
) -> RunSummary:
    """The night's steps, with the output folder locked (so leftovers of killed runs can be removed)."""
    clean_stale_temps(out_dir)
    handler, log_path = _attach_log(out_dir)
    try:
        night = _open_night(cfg, ctx, tiles, out_dir, log_path, t0)
        results = _process_tiles(night)
        _check_overviews(night, results)
        candidates = _finish_candidates(night, results, _merge(night, results))
        frame, dropped = _apply_exclusions(night, candidates)
        summary = _write_outputs(night, results, frame, dropped)
        if cfg.cases.registry is not None:
            summary.cases = _update_cases(
                frame, cfg, night.run_id, night.current_date, ctx, out_dir
            )
        log.info("finished: %s", summary.text().replace("\n", "; "))
        return summary
    except BuildwatchError as exc:
        log.error("%s", exc)
        raise
    except KeyboardInterrupt:
        log.error(
            "interrupted; finished tiles are kept in %s, rerun the same command to resume",
            out_dir / "work",
        )
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
        raise _damaged(cfg.baseline, cfg.current, exc) or InputError(
            f"reading {cfg.baseline} / {cfg.current} failed ({str(exc).splitlines()[0][:120]}); "
            "a file is truncated or corrupt"
        ) from None


def _damaged(baseline, current, exc: BaseException) -> InputError | None:
    """The one line naming the mosaic and its block that does not decode, when one is found."""
    from detector.geo.raster import locate_damage

    for path, what in ((baseline, "baseline mosaic"), (current, "current mosaic")):
        if path is not None:
            found = locate_damage(path, what, exc)
            if found is not None:
                return found
    return None


def _make_out_dir(cfg: RunConfig) -> Path:
    out_dir = Path(cfg.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    return out_dir


def _attach_log(out_dir: Path) -> tuple[logging.Handler, Path]:
    """Send INFO and above from every project logger, and the libraries' messages, to ``buildwatch.log``."""
    path = out_dir / "buildwatch.log"
    return log_to(logging.FileHandler(path), logging.INFO, (LOG_ROOT,), also=LIBRARY_LOGGERS), path


def _detach_log(handler: logging.Handler) -> None:
    stop_logging_to(handler, (LOG_ROOT, *LIBRARY_LOGGERS))


def _open_night(
    cfg: RunConfig, ctx: RunContext, tiles: list[Tile], out_dir: Path, log_path: Path, t0: float
) -> NightRun:
    """Step *open the night*: fingerprint, run ID, work folder, and the tiles an earlier run finished."""
    hashes = {
        "baseline": location_fingerprint(ctx.baseline.path),
        "current": location_fingerprint(ctx.current.path),
    }
    if ctx.second is not None:
        hashes["second_view_model"] = ctx.second.sha256
    if ctx.dsm is not None:
        hashes.update(
            baseline_dsm=location_fingerprint(ctx.dsm.baseline.path),
            current_dsm=location_fingerprint(ctx.dsm.current.path),
        )
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
    # regions where the epochs share no valid pixel, found from one coarse read of their masks:
    # "nodata" without opening each tile (a huge, mostly empty extent)
    empty = tiles_without_data(ctx.baseline, ctx.current, ctx.grid, todo) if todo else set()
    skipped = [TileResult(t.tile_id, "nodata", 0.0, 0.0) for t in todo if t.tile_id in empty]
    todo = [t for t in todo if t.tile_id not in empty]
    log.info(
        "run %s: %d tiles (%d already done, %d without data in both epochs), model %s (%s), "
        "gsd %.3f m, tile %d px, overlap %d px",
        run_id,
        len(tiles),
        len(done),
        len(skipped),
        ctx.spec.model_name,
        ctx.spec.sha256[:12],
        ctx.grid.gsd,
        ctx.size,
        ctx.overlap,
    )
    if ctx.second is not None:
        opts = cfg.detect.second_view
        log.info(
            "second view: building model %s (%s)%s%s",
            ctx.second.model_name,
            ctx.second.sha256[:12],
            ", confirms candidates" if opts.confirm else "",
            f", adds structures only it sees (conf >= {second_view_add_conf(ctx):g})"
            if opts.add
            else "",
        )
    if ctx.mosaic_model is not None:
        m = ctx.mosaic_model
        cx, cy = m.at((ctx.grid.width - 1) / 2, (ctx.grid.height - 1) / 2)
        log.info(
            "mosaic registration model: move %.2f m at the centre, rotation %.3f°, %d of %d blocks agree "
            "(RMS %.2f m, spread %.2f)%s",
            np.hypot(cx, cy) * ctx.grid.gsd,
            m.rotation_deg,
            m.inliers,
            m.blocks,
            m.residual_m,
            m.spread,
            "" if m.ok else f"; not usable: {m.reason}",
        )
        status, text = judge_move(m, cfg.align.flight_accuracy_m)
        if status == "warn":
            log.warning("%s", text)
    if ctx.dsm is not None:
        from detector.geo.dsm import describe

        log.info("%s", describe(ctx.dsm))
    return NightRun(
        cfg,
        ctx,
        tiles,
        out_dir,
        log_path,
        t0,
        hashes,
        fp,
        started,
        run_id,
        work_dir,
        done,
        todo,
        skipped,
    )


def _open_baseline_views(ctx: RunContext, baseline_sha: str) -> None:
    """Point ``ctx.baseline_views`` at the stored baseline views this night can use
    (:mod:`detector.night.view_cache`): keyed by everything the building model's baseline
    detections depend on."""
    from detector.night.second_view import BASELINE_CONF_FACTOR
    from detector.night.view_cache import open_views

    opts = ctx.config.detect.second_view
    conf = second_view_conf(ctx)
    g = ctx.grid
    facts = {
        "baseline_sha256": baseline_sha,
        "crs": g.crs_wkt,
        "gsd": g.gsd,
        "left": g.left,
        "top": g.top,
        "tile_px": ctx.size,
        "overlap_px": ctx.overlap,
        "model": ctx.second.model_name,
        "model_sha256": ctx.second.sha256,
        "conf": conf * BASELINE_CONF_FACTOR,
        "iou": ctx.second.iou,
        "stretch": None
        if ctx.stretch_baseline is None
        else [np.asarray(a).tolist() for a in ctx.stretch_baseline],
        "software": __version__,
    }
    folder = Path(opts.baseline_cache)
    try:
        ctx.baseline_views = open_views(
            folder,
            facts,
            {
                "baseline": str(Path(ctx.baseline.path).resolve())
                if not is_remote(ctx.baseline.path)
                else str(ctx.baseline.path)
            },
        )
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot keep baseline views there ({exc.strerror}); choose a writable folder "
            "for detect.second_view.baseline_cache"
        ) from None
    log.info("baseline views kept in %s", ctx.baseline_views)


def _fingerprint(cfg: RunConfig, spec: ModelSpec, hashes: dict) -> str:
    skip = dict.fromkeys(
        (
            "out",
            "workers",
            "scheduler",
            "min_coverage",
            "resume",
            "progress",
            "cases",
            "baseline",
            "current",
            "model",
            "baseline_dsm",
            "current_dsm",
        ),
        True,
    )
    skip["detect"] = {
        "second_view": {"baseline_cache"}
    }  # where views are kept does not change them
    skip["align"] = {"flight_accuracy_m"}  # only when the night's move is warned about
    relevant = cfg.model_dump(mode="json", exclude=skip)
    return json_digest(
        {"inputs": hashes, "model": spec.sha256, "config": relevant, "software": __version__}, 16
    )


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
        return (
            list(night.resumed.values())
            + list(night.skipped or ())
            + _run_tiles(ctx, night.todo, night.work_dir, night.cfg.progress)
        )
    except RasterioError as exc:
        raise _damaged(ctx.baseline.path, ctx.current.path, exc) or InputError(
            f"reading {ctx.baseline.path} / {ctx.current.path} failed mid-run "
            f"({str(exc).splitlines()[0][:120]}); a file is truncated or corrupt"
        ) from None


def _check_overviews(night: NightRun, results: list[TileResult]) -> None:
    """Step *run tiles*, after: every tile that found candidates is compared with the mosaics'
    own overviews (:func:`detector.night.mosaic.overview_mismatch`); a block that decoded
    without error but disagrees with its overview (a bit flip) is logged as a warning naming
    the file, the tile and the place, so the candidates there can be judged."""
    from detector.night.mosaic import overview_mismatch

    ctx = night.ctx
    tiles = {t.tile_id: t for t in night.tiles}
    for r in results:
        tile = tiles.get(r.tile_id)
        if not r.candidates or tile is None:
            continue
        for info, role in ((ctx.baseline, "baseline"), (ctx.current, "current")):
            try:
                found = overview_mismatch(info, tile.bounds, ctx.grid.crs_wkt)
            except RasterioError:
                found = None  # an unreadable block is reported where it is read
            if found is not None:
                diff, x, y = found
                log.warning(
                    "%s: the %s mosaic's full-resolution pixels near (%.1f, %.1f) differ from its own "
                    "overview by %.0f grey levels (a damaged block that still decodes?); tile %s has "
                    "%d candidate(s) there: check them, and copy or export the file again",
                    info.path,
                    role,
                    x,
                    y,
                    diff,
                    r.tile_id,
                    len(r.candidates),
                )


def _run_tiles(
    ctx: RunContext, todo: list[Tile], work_dir: Path, progress: bool
) -> list[TileResult]:
    """Every tile of ``todo`` on the night's executor (:func:`detector.night.executors.run_tiles`),
    each result saved as it arrives (resume)."""
    from tqdm import tqdm

    results: list[TileResult] = []
    # the bar is for a person at a terminal; under cron/systemd its carriage returns would fill the log
    bar = tqdm(
        total=len(todo),
        unit="tile",
        desc="tiles",
        leave=False,
        disable=not progress or not todo or not sys.stderr.isatty(),
    )

    def finished(batch: list[TileResult]) -> None:
        for r in batch:
            _save_tile(work_dir, r)
            results.append(r)
            if r.status == "unregistered":
                log.warning("tile %s not registered: %s", r.tile_id, r.reason)
        bar.update(len(batch))

    try:
        run_tiles(ctx, todo, finished)
    finally:
        bar.close()
    return results


def _merge(night: NightRun, results: list[TileResult]) -> list[Candidate]:
    """Step *merge*: one candidate per structure seen by several tiles, in map coordinates.

    Returns the kept candidates ordered by tile, then by decreasing confidence.
    """
    cands = [c for r in results for c in r.candidates]
    change = night.cfg.change
    kept = merge_duplicates(
        [c.geometry for c in cands],
        [c.class_name for c in cands],
        [c.confidence for c in cands],
        change.merge_iou,
        change.merge_ioa,
    )
    kept.sort(key=lambda i: (cands[i].tile_id, -cands[i].confidence))
    return [cands[i] for i in kept]


def _finish_candidates(
    night: NightRun, results: list[TileResult], kept: list[Candidate]
) -> list[Candidate]:
    """Step *to candidates*: IDs, areas, WGS84 centroids, dates and provenance; geometry in the output CRS."""
    ctx = night.ctx
    tile_shift = {r.tile_id: r.shift_m for r in results}
    out_geoms, lon, lat, area = to_output([c.geometry for c in kept], ctx.grid)
    b_date, c_date = night.baseline_date, night.current_date
    out = []
    for k, c in enumerate(kept):
        cent = c.geometry.centroid
        out.append(
            replace(
                c,
                candidate_id=candidate_id(c.class_name, cent.x, cent.y, ctx.grid.crs_wkt),
                area_m2=round(float(area[k]), 2),
                lon=round(float(lon[k]), 8),
                lat=round(float(lat[k]), 8),
                baseline_date=b_date.isoformat() if b_date else "",
                current_date=c_date.isoformat() if c_date else "",
                shift_m=round(tile_shift.get(c.tile_id, 0.0), 3),
                model_name=ctx.spec.model_name,
                model_sha256=ctx.spec.sha256,
                run_id=night.run_id,
                status="new",
                tags=c.tags,
                geometry=out_geoms[k],
                model_version=ctx.model_version,
            )
        )
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
        "run_id": night.run_id,
        "started_utc": night.started.isoformat(),
        "software": f"buildwatch {__version__}",
        "baseline": str(ctx.baseline.path),
        "baseline_sha256": night.hashes["baseline"],
        "current": str(ctx.current.path),
        "current_sha256": night.hashes["current"],
        "baseline_date": b_date.isoformat() if b_date else "",
        "current_date": c_date.isoformat() if c_date else "",
        "model": str(ctx.spec.path),
        "model_name": ctx.spec.model_name,
        "model_sha256": ctx.spec.sha256,
        "model_version": ctx.model_version,
        "second_view_model": str(ctx.second.path) if ctx.second else "",
        "second_view_model_name": ctx.second.model_name if ctx.second else "",
        "second_view_model_sha256": ctx.second.sha256 if ctx.second else "",
        "config": cfg.model_dump(mode="json"),
        "fingerprint": night.fingerprint,
        "tiles_total": len(night.tiles),
        "tiles_done": counts["done"],
        "tiles_nodata": counts["nodata"],
        "tiles_unregistered": counts["unregistered"],
        "tiles_resumed": len(night.resumed),
        "candidates": len(cand),
        "per_class": per_class,
        "dropped_by_exclusions": dropped,
        "km2": round(km2, 6),
        "seconds": round(seconds, 2),
        "tile_seconds_sum": round(sum(r.seconds for r in results), 2),
        "move_m": _night_move(ctx),
        "move_check": judge_move(ctx.mosaic_model, cfg.align.flight_accuracy_m)[0]
        if ctx.mosaic_model is not None
        else "",
    }
    path = night.out_dir / "candidates.gpkg"
    write_geopackage(path, cand, tiles_gdf, record)
    return RunSummary(
        night.run_id,
        path,
        night.log_path,
        len(night.tiles),
        counts["done"],
        counts["nodata"],
        counts["unregistered"],
        len(night.resumed),
        len(cand),
        per_class,
        km2,
        seconds,
        dropped,
    )


def _night_move(ctx: RunContext) -> float:
    """The mosaic model's move at the pair's centre (m); NaN without a consistent model."""
    m = ctx.mosaic_model
    return round(m.shift_m, 3) if m is not None and m.found else float("nan")


def _update_cases(
    cand, cfg: RunConfig, run_id: str, night: date | None, ctx: RunContext, out_dir: Path
):
    from detector.review.gpkg import lock_wait
    from detector.review.nightly import update_cases

    registry = Path(cfg.cases.registry)
    # runs of several output folders may share one registry: one update at a time, so two first
    # nights cannot both create it (the second merges into the first's instead of replacing it)
    wait_s = cfg.cases.lock_wait_s
    with (
        exclusive_lock(
            registry.with_name(f".{registry.name}.lock"),
            "the case registry",
            wait=True,
            timeout_s=wait_s,
            hint="run this night again once it is done: its finished tiles are resumed",
        ),
        lock_wait(wait_s),  # another program's SQLite write lock: the same bound
    ):
        return update_cases(
            cand,
            cfg.cases,
            run_id=run_id,
            night=night or date.today(),
            baseline_path=ctx.baseline.path,
            current_path=ctx.current.path,
            out_dir=out_dir,
            dsm=ctx.dsm,
        )
