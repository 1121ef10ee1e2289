"""Who runs the tiles: this process, a local process pool, or a Dask cluster.

:func:`run_tiles` hands groups of neighbouring tiles (:func:`detector.night.tiles.tile_groups`)
to one of three executors and gives each finished group back to the caller as it arrives:

* **in process** (``workers: 1``): the tiles one after another here;
* **a local process pool** (``workers: N``): spawned processes, each opening the night's readers
  and ONNX session once (:func:`_init_worker`); they ignore Ctrl-C, which the main process
  handles (the pool is terminated and the finished tiles are kept);
* **a Dask cluster** (``scheduler: tcp://...``): :func:`detector.night.distributed.run_batches`
  sends each group to a worker, where :func:`remote_batch` keeps the readers and session of the
  night in this module's worker-global state (:data:`_WORKER`) for its later groups.

A tile's result is :func:`detector.night.tile.process_tile`, a pure function of (inputs, tile,
model, config), whichever executor computes it. Inside a worker the next tile is read in a
thread while this one runs (:data:`PREFETCH`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from detector.geo.location import apply_network_defaults
from detector.night.context import RunContext
from detector.night.mosaic import EpochReader
from detector.night.tile import process_tile, read_tile
from detector.night.tiles import tile_groups
from detector.types import Tile, TileResult

__all__ = ["GDAL_CACHE_MB", "PREFETCH", "TILE_GROUP", "remote_batch", "run_tiles"]

PREFETCH = True  # read the next tile in a thread while this one runs (off: the profile times steps one by one)
TILE_GROUP = 4  # a worker takes 4 x 4 neighbouring tiles at a time (see tiles.tile_groups)
GDAL_CACHE_MB = (
    128  # per process; GDAL's default (5 % of RAM per process) would grow with the mosaic
)


def run_tiles(
    ctx: RunContext, todo: list[Tile], on_batch: Callable[[list[TileResult]], None]
) -> None:
    """Process every tile of ``todo``; call ``on_batch(results)`` in this process as each group finishes.

    Parameters
    ----------
    ctx : RunContext
        The night (``ctx.config.workers`` and ``ctx.config.scheduler`` choose the executor).
    todo : list of Tile
    on_batch : callable
        Gets each finished group's results, in completion order (the run saves them at once, so
        an interrupted night resumes from there).
    """
    cfg = ctx.config
    batches = tile_groups(
        todo, TILE_GROUP
    )  # neighbours together: each source block decoded about once
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

            with (
                _sigint_ignored()
            ):  # workers are born ignoring Ctrl-C: the main process handles it, quietly
                pool = mp.get_context("spawn").Pool(
                    workers, initializer=_init_worker, initargs=(ctx,)
                )
            iterator = pool.imap_unordered(_work, batches)
        for batch in iterator:
            on_batch(batch)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        if pool is not None:  # interrupted or failed: stop the workers now, quietly
            pool.terminate()
            pool.join()
        if workers <= 1 and "b" in _WORKER:
            _close_worker()


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


# ---------------------------------------------------------------- inside a worker process

#: The worker process's night: context, readers, ONNX sessions (and on a Dask worker the night's key).
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
        _WORKER["det2"] = (
            OnnxDetector(ctx.second, det.providers, det.intra_op_threads, det.batch_size)
            if ctx.second is not None
            else None
        )
    if ctx.dsm is not None:
        from detector.geo.dsm import DsmReader

        _WORKER["dsm"] = (
            DsmReader.on_grid(ctx.dsm.baseline, ctx.grid, ctx.dsm.baseline_scale),
            DsmReader.on_grid(ctx.dsm.current, ctx.grid, ctx.dsm.current_scale),
        )


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
        nxt = pool.submit(read_tile, ctx, tiles[0], b, c) if tiles else None
        for k, t in enumerate(tiles):
            pixels = nxt.result()
            if k + 1 < len(tiles):
                nxt = pool.submit(read_tile, ctx, tiles[k + 1], b, c)
            out.append(
                process_tile(ctx, t, b, c, w["det"], dsm, pixels=pixels, second_view=w.get("det2"))
            )
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
    key = (
        str(ctx.baseline.path),
        str(ctx.current.path),
        ctx.spec.sha256,
        ctx.config.model_dump_json(),
    )
    if _WORKER.get("key") != key:  # a new night on a long-lived worker
        _close_worker()
        _init_worker(ctx)
        _WORKER["key"] = key
    return _work(tiles)
