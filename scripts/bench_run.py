#!/usr/bin/env python
"""Benchmark the nightly run on a large generated mosaic pair: km²/h, CPU, peak memory, and
SAHI + ultralytics on the same mosaic for comparison.

Targets (issues 4 and 13): peak RSS of all processes together under 1.5 GB and flat in mosaic
size (``--repeat 5``: a 100,000² px VRT); at least 1.5x SAHI + ultralytics' km²/h on the same
4 km² pair. The machine may be shared: the load average is printed, and each comparison is made
in one invocation, one run after the other, in km²/h and in CPU seconds per km².

    python scripts/bench_run.py --size 20000 --sahi            # the 4 km² comparison
    python scripts/bench_run.py --size 8000 --profile-only     # per-tile CPU breakdown
    python scripts/bench_run.py --size 20000 --repeat 5        # memory on 100 km²
    python scripts/bench_run.py --size 4000                    # quick check
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from detector.synth.bigmosaic import write_big


def repeat_vrt(src: Path, out: Path, n: int) -> Path:
    """A VRT of n x n copies of ``src`` side by side (a mosaic n² times larger, same overviews)."""
    import rasterio

    with rasterio.open(src) as ds:
        w, h, t, crs = ds.width, ds.height, ds.transform, ds.crs.to_wkt()
    blocks = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{i * w}" yOff="{j * h}" xSize="{w}" '
        f'ySize="{h}"/></SimpleSource>'
        for b in (1, 2, 3)
        for j in range(n)
        for i in range(n)
    ).split("</SimpleSource>")
    bands = []
    for b in (1, 2, 3):
        sources = "".join(
            x + "</SimpleSource>" for x in blocks if f"<SourceBand>{b}</SourceBand>" in x
        )
        interp = ("Red", "Green", "Blue")[b - 1]
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{interp}</ColorInterp>{sources}'
            f"</VRTRasterBand>"
        )
    gt = f"{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}"
    out.write_text(
        f'<VRTDataset rasterXSize="{w * n}" rasterYSize="{h * n}"><SRS>{crs}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return out


def _cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (all its threads) or of its reaped children."""
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


class RssSampler(threading.Thread):
    """Samples the resident memory of this process and its children every 0.2 s (Linux /proc)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_main = 0.0
        self.peak_child = 0.0
        self.peak_total = 0.0
        self._halt = threading.Event()

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _children(self) -> list[int]:
        me = os.getpid()
        try:  # cheap: the kernel's list of this process's children (threads' lists joined)
            kids = []
            for task in Path(f"/proc/{me}/task").iterdir():
                kids += [int(k) for k in (task / "children").read_text().split()]
            return kids
        except (OSError, ValueError):
            pass
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                    kids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return kids

    def run(self) -> None:
        while not self._halt.is_set():
            main = self._rss_mb(os.getpid())
            kids = [self._rss_mb(k) for k in self._children()]
            self.peak_main = max(self.peak_main, main)
            self.peak_child = max([self.peak_child, *kids])
            self.peak_total = max(self.peak_total, main + sum(kids))
            time.sleep(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- per-tile profile


class StepTimer:
    """Wall time per named step, summed over a run (one process: ``workers=1``).

    The pipeline's step functions are wrapped in place (monkeypatched for the duration of
    :meth:`installed`), so the profile measures the code ``buildwatch run`` runs, not a copy.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[
            str, float
        ] = {}  # CPU time of the calling thread: robust to other load on the machine
        self.calls: dict[str, int] = {}
        self._local = (
            threading.local()
        )  # one stack of open steps per thread (reads run in a prefetch thread)

    def wrap(self, name: str, fn):
        import functools

        @functools.wraps(fn)
        def timed(*a, **k):
            stack = self._local.__dict__.setdefault("stack", [])
            t, c = time.perf_counter(), time.thread_time()
            stack.append(name)
            try:
                return fn(*a, **k)
            finally:
                stack.pop()
                dt, dc = time.perf_counter() - t, time.thread_time() - c
                self.seconds[name] = self.seconds.get(name, 0.0) + dt
                self.cpu[name] = self.cpu.get(name, 0.0) + dc
                self.calls[name] = self.calls.get(name, 0) + 1
                if stack:  # report exclusive times: take nested steps out of the enclosing one
                    self.seconds[stack[-1]] = self.seconds.get(stack[-1], 0.0) - dt
                    self.cpu[stack[-1]] = self.cpu.get(stack[-1], 0.0) - dc

        return timed

    def installed(self):
        import contextlib

        import detector.geo.raster as raster
        import detector.night.detect as detect
        import detector.night.executors as executors
        import detector.night.mosaic as mosaic
        import detector.night.tile as tile
        import detector.run.night as night

        patches = [
            (mosaic.EpochReader, "read", "read + warp (both epochs)"),
            (raster, "apply_stretch", "stretch"),
            (tile, "_coverage", "coverage"),
            (tile, "_register", "registration"),
            (detect, "to_input", "model input (stack, /255, NCHW)"),
            (detect, "decode", "decode + rotated NMS"),
            (tile, "new_in_current", "single-epoch comparison"),
            (tile, "difference_image", "difference image"),
            (tile, "changes_in_tile", "change rules"),
            (tile, "_tile_candidate", "candidate polygons"),
            (night, "_save_tile", "serialisation (per-tile JSON)"),
            (executors, "process_tile", "other (per-tile glue)"),
            (night, "_prepare_inputs", "prepare (inputs, model, mosaic registration model)"),
            (night, "_open_night", "open the night (input sha256, resume)"),
            (night, "_merge", "merge across tiles"),
            (night, "_finish_candidates", "to candidates"),
            (night, "_write_outputs", "write GeoPackage"),
        ]
        timer = self
        orig_init = detect.OnnxDetector.__init__

        def init(det, *a, **k):  # time session.run (the model itself) on the detector's session
            orig_init(det, *a, **k)
            det.session = _TimedSession(
                det.session, timer.wrap("inference (session.run)", det.session.run)
            )

        stack = contextlib.ExitStack()
        for owner, attr, name in patches:
            orig = getattr(owner, attr)
            setattr(owner, attr, self.wrap(name, orig))
            stack.callback(setattr, owner, attr, orig)
        detect.OnnxDetector.__init__ = init
        stack.callback(setattr, detect.OnnxDetector, "__init__", orig_init)
        return stack

    def table(self, tiles: int, wall: float) -> str:
        """Per-tile steps in CPU and wall ms per tile (and share of the CPU), then the once-per-run steps."""
        per_tile = [k for k in self.seconds if k not in _RUN_STEPS]
        cpu_tiles = sum(self.cpu[k] for k in per_tile)
        rows = [f"{'step':52s} {'CPU ms/tile':>11s} {'wall ms/tile':>12s} {'CPU share':>9s}"]
        for k in sorted(per_tile, key=lambda k: -self.cpu[k]):
            rows.append(
                f"{k:52s} {1000 * self.cpu[k] / max(tiles, 1):11.1f} {1000 * self.seconds[k] / max(tiles, 1):12.1f} "
                f"{self.cpu[k] / max(cpu_tiles, 1e-9):9.1%}"
            )
        rows.append(
            f"{'all per-tile steps':52s} {1000 * cpu_tiles / max(tiles, 1):11.1f} "
            f"{1000 * sum(self.seconds[k] for k in per_tile) / max(tiles, 1):12.1f}"
        )
        rows.append(f"{'once per run':52s} {'CPU s':>11s} {'wall s':>12s}")
        for k in _RUN_STEPS:
            if k in self.seconds:
                rows.append(f"{k:52s} {self.cpu[k]:11.2f} {self.seconds[k]:12.2f}")
        rest = wall - sum(self.seconds.values())
        rows.append(f"{'rest (progress bar, worker start, imports)':52s} {'':11s} {rest:12.2f}")
        return "\n".join(rows)


_RUN_STEPS = (
    "prepare (inputs, model, mosaic registration model)",
    "open the night (input sha256, resume)",
    "merge across tiles",
    "to candidates",
    "write GeoPackage",
)


class _TimedSession:
    """An ONNX Runtime session whose ``run`` is timed; everything else is passed through."""

    def __init__(self, session, run):
        self._session, self.run = session, run

    def __getattr__(self, name):
        return getattr(self._session, name)


# ---------------------------------------------------------------- the SAHI + ultralytics comparison


def sahi_run(
    current: Path, gsd: float, slice_px: int, overlap: float, weights: Path | None, threads: int
) -> dict:
    """What a user would pick instead: SAHI sliced inference with an ultralytics YOLO26n-OBB on the
    current epoch alone, read at the same working GSD through the overviews. Timed reading included.

    ``weights``: an ultralytics checkpoint (``.pt``) or export (``.onnx``) with 3 input channels;
    None builds YOLO26n-OBB (4 classes, the shipped model's architecture and input size) from the
    ``yolo26n-obb.yaml`` that ships inside the ultralytics package: nothing is downloaded, and its
    untrained weights cost the same per slice as trained ones (it finds nothing, so SAHI's merge is
    not even exercised: the comparison flatters SAHI, if anything).
    """
    os.environ["YOLO_OFFLINE"] = "true"
    import rasterio
    import torch
    from rasterio.enums import Resampling
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    if weights is not None:
        yolo = YOLO(str(weights), task="obb")
        name = Path(weights).name
    else:
        from ultralytics.nn.tasks import OBBModel

        yolo = YOLO("yolo26n-obb.yaml", task="obb")
        yolo.model = OBBModel("yolo26n-obb.yaml", ch=3, nc=4, verbose=False)
        name = "YOLO26n-OBB from yolo26n-obb.yaml (untrained, 4 classes)"
    model = AutoDetectionModel.from_pretrained(
        model_type="ultralytics",
        model=yolo,
        confidence_threshold=0.25,
        device="cpu",
        image_size=slice_px,
    )
    t0, cpu0 = time.perf_counter(), _cpu_seconds(resource.RUSAGE_SELF)
    with rasterio.open(current) as src:
        factor = gsd / src.res[0]
        h, w = round(src.height / factor), round(src.width / factor)
        image = np.moveaxis(
            src.read([1, 2, 3], out_shape=(3, h, w), resampling=Resampling.bilinear), 0, -1
        )
    t_read = time.perf_counter() - t0
    result = get_sliced_prediction(
        image,
        model,
        slice_height=slice_px,
        slice_width=slice_px,
        overlap_height_ratio=overlap,
        overlap_width_ratio=overlap,
        perform_standard_pred=False,
        verbose=0,
    )
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds(resource.RUSAGE_SELF) - cpu0
    km2 = h * w * gsd * gsd / 1e6
    return {
        "model": name,
        "seconds": seconds,
        "cpu_s": cpu,
        "read_s": t_read,
        "km2": km2,
        "km2_per_hour": km2 / seconds * 3600,
        "detections": len(result.object_prediction_list),
        "slices": result.durations_in_seconds.get("slice"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--gsd", type=float, default=0.1, help="source GSD in metres (drone: 0.02-0.1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        help="nightly config whose settings the run uses (e.g. detect.second_view.enabled: false)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="folder for temporary files")
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep (and reuse) the generated mosaics in this folder",
    )
    ap.add_argument(
        "--sahi",
        action="store_true",
        help="also time SAHI + ultralytics on the current epoch (needs the 'bench' extra) and print the ratio",
    )
    ap.add_argument(
        "--sahi-weights",
        type=Path,
        default=None,
        help="ultralytics checkpoint/export for SAHI (3 channels); default: YOLO26n-OBB built from its yaml",
    )
    ap.add_argument("--sahi-overlap", type=float, default=0.25, help="SAHI slice overlap ratio")
    ap.add_argument(
        "--overlap-px", type=int, default=None, help="tile overlap (default: the run's default)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run on a VRT of repeat x repeat copies of each mosaic (memory must stay flat)",
    )
    ap.add_argument(
        "--no-prefetch", action="store_true", help="read each tile only when it is processed"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also run once in one process with every step timed and print the per-tile breakdown",
    )
    ap.add_argument("--profile-only", action="store_true", help="only the one-process profile")
    args = ap.parse_args()

    from detector.config import load_config
    from detector.run import run_pipeline

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        tmp = Path(args.keep) if args.keep else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not ((tmp / "baseline.tif").exists() and (tmp / "current.tif").exists()):
            # Generate in a child process so that the numbers below are the run's alone.
            with ProcessPoolExecutor(1) as pool:
                list(
                    pool.map(
                        write_big,
                        [tmp / "baseline.tif", tmp / "current.tif"],
                        [args.size] * 2,
                        [args.gsd] * 2,
                        [1, 1],
                        [False, True],
                    )
                )
            print(
                f"wrote two {args.size}x{args.size} mosaics at {args.gsd} m in {time.perf_counter() - t0:.1f} s "
                f"({(tmp / 'baseline.tif').stat().st_size / 1e6:.0f} MB each on disk)"
            )
        else:
            print(f"reusing the mosaics in {tmp}")
        base, cur, side = tmp / "baseline.tif", tmp / "current.tif", args.size
        if args.repeat > 1:
            base, cur = (
                repeat_vrt(p, Path(scratch) / f"{p.stem}-x{args.repeat}.vrt", args.repeat)
                for p in (base, cur)
            )
            side = args.size * args.repeat
        import detector.night.executors as executors

        executors.PREFETCH = not args.no_prefetch
        cfg = load_config(
            args.config,
            {
                "baseline": str(base),
                "current": str(cur),
                "out": str(Path(scratch) / "out"),
                "model": args.model and str(args.model),
                "workers": args.workers,
                "progress": True,
            },
        )
        if args.overlap_px is not None:
            cfg.detect.overlap_px = args.overlap_px
        s = None
        if not args.profile_only:
            print(
                f"load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
            )
            sampler = RssSampler()
            sampler.start()
            cpu0 = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)
            s = run_pipeline(cfg)
            run_cpu = (
                _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
            )
            sampler.stop()
            print(s.text())
            print(
                f"tiles: {s.tiles_total}; mosaic: {side}x{side} px = {(side * args.gsd / 1000) ** 2:.2f} km²; "
                f"load average after: {os.getloadavg()[0]:.1f}"
            )
            print(
                f"peak RSS: main process {sampler.peak_main:.0f} MB, largest worker {sampler.peak_child:.0f} MB, "
                f"all processes together {sampler.peak_total:.0f} MB -> {sampler.peak_total / 1536:.2f} x the "
                f"1.5 GB target ({'OK' if sampler.peak_total <= 1536 else 'OVER'})"
            )
            print(
                f"throughput {s.km2_per_hour:.0f} km²/h; CPU {run_cpu:.1f} s in all processes "
                f"({run_cpu / s.km2:.1f} CPU s per km²: what a machine without other load would need, / cores)"
            )
        if args.sahi and s is not None:
            from detector.night.model import load_model_spec

            spec = load_model_spec(args.model)
            spec_gsd, slice_px = spec.gsd_m, spec.imgsz[0]
            with ProcessPoolExecutor(
                1, mp_context=__import__("multiprocessing").get_context("spawn")
            ) as pool:
                r = pool.submit(
                    sahi_run,
                    tmp / "current.tif",
                    spec_gsd,
                    slice_px,
                    args.sahi_overlap,
                    args.sahi_weights,
                    args.workers,
                ).result()
            print(
                f"\nSAHI + ultralytics ({r['model']}; current epoch only, {slice_px} px slices at {spec_gsd} m, "
                f"{args.sahi_overlap:.0%} overlap, {args.workers} torch threads): {r['seconds']:.1f} s "
                f"(read {r['read_s']:.1f} s) for {r['km2']:.2f} km² -> {r['km2_per_hour']:.0f} km²/h"
            )
            print(f"  CPU {r['cpu_s']:.1f} s ({r['cpu_s'] / r['km2']:.1f} CPU s per km²)")
            print(
                f"buildwatch run (both epochs): {s.seconds:.1f} s -> {s.km2_per_hour:.0f} km²/h; "
                f"CPU {run_cpu:.1f} s ({run_cpu / s.km2:.1f} CPU s per km²)"
            )
            print(
                f"ratio buildwatch / SAHI: {s.km2_per_hour / r['km2_per_hour']:.2f}x in km²/h (wall clock), "
                f"{(r['cpu_s'] / r['km2']) / (run_cpu / s.km2):.2f}x in CPU per km²"
            )
        if args.profile or args.profile_only:
            timer = StepTimer()
            pcfg = cfg.model_copy(
                update={"workers": 1, "out": Path(scratch) / "out-profile", "progress": False}
            )
            import detector.night.executors as executors

            executors.PREFETCH = (
                False  # steps one after another, so that each step's time is its own
            )
            with timer.installed():
                t = time.perf_counter()
                ps = run_pipeline(pcfg)
                wall = time.perf_counter() - t
            print(
                f"\nprofile: one process, {ps.tiles_total} tiles in {wall:.1f} s ({ps.km2_per_hour:.0f} km²/h)"
            )
            print(timer.table(ps.tiles_total, wall))


if __name__ == "__main__":
    main()
