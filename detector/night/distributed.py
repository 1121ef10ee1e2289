"""Tiles on a Dask cluster (``buildwatch run --scheduler tcp://HOST:8786``; the ``[dask]`` extra).

The client -- the ``buildwatch run`` process -- does everything it does for a local run
(checks, fingerprint, resume, saving each finished tile, merge, write, cases); only
:func:`detector.night.tile.process_tile` runs on the workers. Each task is one batch of
tiles; a worker process opens both mosaics by the paths the client was given (so they must
be the same on every machine: shared storage such as NFS/CephFS mounted at the same place)
and keeps them and one ONNX session for every later batch of the same night
(:func:`detector.night.executors.remote_batch`). Results come back to the client as they
finish and are saved there, so a rerun resumes exactly as after a local run, and the
candidates are identical: a tile's result is a pure function of (inputs, tile, model,
config), whoever computes it.

A worker that dies mid-batch has its batches recomputed elsewhere by the scheduler
(``distributed.scheduler.allowed-failures``); a task that fails on an input error fails the
run as a local run would; a cluster that makes no progress for :data:`STALL_S` seconds (no
workers left) ends the run with exit 2 and the resume hint. Finished tiles are kept either
way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from detector.errors import BuildwatchError, ConfigError
from detector.types import Tile, TileResult

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30  # reaching the scheduler
PROBE_TIMEOUT_S = 5  # before work: is anything listening at the scheduler's host and port
STALL_S = 1800  # no batch finished for this long: the cluster has no usable workers
TASK_RETRIES = 2  # a batch that raises (e.g. a worker's disk hiccup) is tried again this often


def check_scheduler(scheduler: str) -> None:
    """``scheduler`` is a Dask address (``tcp://host:port``, ``tls://...``, ``host:port``), Dask
    is installed, and something listens at that host and port (a plain TCP connection, closed at
    once, within :data:`PROBE_TIMEOUT_S`; no Dask handshake). Checked before any work, so an
    unreachable scheduler leaves no output folder. One :class:`ConfigError` line."""
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        raise ConfigError(
            f"scheduler {scheduler} is set but Dask is not installed; "
            "pip install 'buildwatch[dask]' (or remove --scheduler)"
        ) from None
    try:
        scheme, location = parse_address(scheduler.strip())
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, port = parse_host_port(location)
            if not host or any(ch.isspace() for ch in host) or not 0 < int(port) < 65536:
                raise ValueError(f"bad host or port in {location!r}")
        elif scheme not in ("inproc", "ucx"):
            raise ValueError(f"unknown protocol {scheme!r}")
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"--scheduler {scheduler!r} is not a Dask scheduler address ({' '.join(str(exc).split())[:100]}); "
            "give tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), or leave it out to run locally"
        ) from None
    if scheme in ("tcp", "tls", "ws", "wss"):
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
        except OSError as exc:
            raise ConfigError(
                f"{scheduler}: cannot reach the Dask scheduler ({' '.join(str(exc).split())[:160]}); "
                "start it ('dask scheduler') or fix --scheduler"
            ) from None


def connect(scheduler: str):
    """A :class:`distributed.Client` for ``scheduler``; one :class:`ConfigError` line if impossible.

    A client whose constructor failed is disarmed: its ``__del__`` would otherwise try to close
    a connection that never opened, wait 60 s and print an "Exception ignored" traceback.
    """
    check_scheduler(scheduler)
    from distributed import Client

    client = Client.__new__(Client)
    try:
        client.__init__(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        return client
    except (OSError, TimeoutError, ValueError) as exc:
        _disarm(client)
        raise ConfigError(
            f"{scheduler}: cannot reach the Dask scheduler ({' '.join(str(exc).split())[:160]}); "
            "start it ('dask scheduler') or fix --scheduler"
        ) from None
    except BaseException:
        _disarm(client)
        raise


def _disarm(client) -> None:
    """Stop a half-made client's event loop thread and make its ``__del__`` a no-op."""
    import contextlib

    with contextlib.suppress(Exception):
        client._loop_runner.stop()
    client._Client__loop = None  # Client.__del__: "the loop never got assigned: nothing to do"


def run_batches(
    ctx, batches: list[list[Tile]], scheduler: str, task: Callable
) -> Iterator[list[TileResult]]:
    """Submit every batch to the cluster at ``scheduler``; yield each batch's results as it finishes.

    Parameters
    ----------
    ctx : RunContext
        Sent once to each worker (scattered), not once per task.
    batches : list of list of Tile
    scheduler : str
        ``tcp://host:port`` of a running ``dask scheduler``.
    task : callable
        ``task(ctx, tiles) -> list[TileResult]``, run on a worker
        (:func:`detector.night.executors.remote_batch`: opens the night's readers and ONNX session
        once per worker process).

    Yields
    ------
    list of TileResult
        In completion order; the caller saves them (resume) and merges them.

    Raises
    ------
    ConfigError
        Dask missing, the scheduler unreachable, or no progress for :data:`STALL_S` seconds.
    """
    from distributed import wait

    client = connect(scheduler)
    futures = []
    try:
        workers = client.scheduler_info().get("workers", {})
        log.info("dask: %d batches on %s (%d workers now)", len(batches), scheduler, len(workers))
        [ctx_future] = client.scatter([ctx], broadcast=True, hash=False)
        futures = [
            client.submit(
                task,
                ctx_future,
                batch,
                pure=False,
                retries=TASK_RETRIES,
                key=f"buildwatch-{batch[0].tile_id}-{i}",
            )
            for i, batch in enumerate(batches)
        ]
        pending = set(futures)
        while pending:
            with client.as_current():  # wait() uses the current client
                try:
                    done, pending = wait(pending, timeout=STALL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
            if not done:
                raise BuildwatchError(
                    f"{scheduler}: the Dask cluster finished no tile for {STALL_S} s (no workers?); "
                    "finished tiles are kept: start workers, then rerun the same command to resume"
                )
            for fut in done:
                yield fut.result()
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()
        client.close()
