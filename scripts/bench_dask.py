#!/usr/bin/env python
"""Scale-out benchmark: the same night on a Dask LocalCluster of 1 and of N worker processes.

Writes the synthetic 4 km² pair of ``bench_run.py`` (:func:`detector.synth.bigmosaic.write_big`)
(20,000 x 20,000 px at 0.1 m, planted changes), runs ``run_pipeline`` with ``scheduler`` set to a
LocalCluster of each size (one thread per worker, ``--no-resume``), checks that every run gives the
same candidates, and prints wall time, km²/h and the scaling efficiency ``t(1) / (N x t(N))``.

    python scripts/bench_dask.py --size 20000 --workers 1 2
    python scripts/bench_dask.py --size 6000 --workers 1 2        # quick check

A real district cluster is the same call with ``--scheduler tcp://HOST:8786`` (docs/operations.md, "Scale-out on Dask").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from distributed import LocalCluster

    from detector.config import load_config
    from detector.run import run_pipeline
    from detector.synth.bigmosaic import write_big

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=20000, help="mosaic side in pixels")
    ap.add_argument("--gsd", type=float, default=0.1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--keep", type=Path, help="folder for the pair and outputs (default: a temp folder)"
    )
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-dask-"))
    root.mkdir(parents=True, exist_ok=True)
    base, cur = root / "baseline.tif", root / "current.tif"
    if not base.exists():
        t = time.perf_counter()
        write_big(base, args.size, args.gsd, seed=1, plant=False)
        write_big(cur, args.size, args.gsd, seed=1, plant=True)
        print(
            f"pair written in {time.perf_counter() - t:.0f} s: {args.size} px at {args.gsd} m "
            f"({(args.size * args.gsd) ** 2 / 1e6:.2f} km²)"
        )
    rows, reference = [], None
    for n in args.workers:
        with LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=50,
        ) as cluster:
            cfg = load_config(
                None,
                {
                    "baseline": base,
                    "current": cur,
                    "out": root / f"out-{n}",
                    "scheduler": cluster.scheduler_address,
                    "resume": False,
                    "progress": False,
                },
            )
            t = time.perf_counter()
            summary = run_pipeline(cfg)
            seconds = time.perf_counter() - t
        import geopandas as gpd

        cand = gpd.read_file(summary.candidates_path, layer="candidates")
        key = sorted(cand.candidate_id)
        reference = key if reference is None else reference
        rows.append(
            (n, seconds, summary.km2_per_hour, summary.tiles_total, len(cand), key == reference)
        )
    t1 = rows[0][1] * rows[0][0]
    print(
        f"{'workers':>7} {'seconds':>8} {'km²/h':>8} {'tiles':>6} {'candidates':>10} {'same':>5} {'efficiency':>10}"
    )
    for n, seconds, kmh, tiles, ncand, same in rows:
        print(
            f"{n:>7} {seconds:>8.1f} {kmh:>8.2f} {tiles:>6} {ncand:>10} {str(same):>5} {t1 / (n * seconds):>10.2f}"
        )


if __name__ == "__main__":
    main()
