#!/usr/bin/env python
"""Benchmark height change (issue 17): what DSMs add to the shipped model, and what they cost.

Generates synthetic scenes with a DSM per epoch (``buildwatch synth --dsm``), runs the nightly
pipeline on each with the shipped model twice — imagery only, then with ``--baseline-dsm /
--current-dsm`` — and prints per class recall at IoU >= 0.3 against the exact truth, false
candidates (matching no truth polygon), and the wall time of both runs (target: with DSMs
<= 1.3x without).

    python scripts/bench_height.py --scenes 3 --size 1024 --seed 777
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

CLASSES = ("new_building", "extension", "temporary_structure", "construction_site")


def _score(gdf, truth):
    """(per class [hit, total], false candidates) at IoU >= 0.3."""

    def best(g, others):
        return max((g.intersection(o).area / g.union(o).area for o in others), default=0.0)

    per = {c: [0, 0] for c in CLASSES}
    for _, t in truth.iterrows():
        per[t["class"]][1] += 1
        per[t["class"]][0] += best(t.geometry, gdf.geometry) >= 0.3
    false = sum(best(g, truth.geometry) < 0.3 for g in gdf.geometry)
    return per, false


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--gsd", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    import geopandas as gpd

    from detector.config import RunConfig
    from detector.run import run_pipeline
    from detector.synth.scene import generate

    totals = {mode: ({c: [0, 0] for c in CLASSES}, [0], [0.0]) for mode in ("image", "image+dsm")}
    with tempfile.TemporaryDirectory() as tmp:
        folders = generate(
            Path(tmp) / "scenes",
            seed=args.seed,
            scenes=args.scenes,
            size=args.size,
            gsd=args.gsd,
            dsm=True,
        )
        for k, folder in enumerate(folders):
            truth = gpd.read_file(folder / "truth.geojson")
            for mode in ("image", "image+dsm"):
                dsm = {
                    "baseline_dsm": folder / "dsm_baseline.tif",
                    "current_dsm": folder / "dsm_current.tif",
                }
                cfg = RunConfig(
                    baseline=folder / "baseline.tif",
                    current=folder / "current.tif",
                    out=Path(tmp) / f"out{k}_{mode}",
                    workers=args.workers,
                    progress=False,
                    resume=False,
                    **(dsm if mode == "image+dsm" else {}),
                )
                t0 = time.perf_counter()
                summary = run_pipeline(cfg)
                seconds = time.perf_counter() - t0
                gdf = gpd.read_file(summary.candidates_path, layer="candidates")
                per, false = _score(gdf, truth.to_crs(gdf.crs) if len(gdf) else truth)
                acc, fa, tt = totals[mode]
                for c in CLASSES:
                    acc[c][0] += per[c][0]
                    acc[c][1] += per[c][1]
                fa[0] += false
                tt[0] += seconds
                print(
                    f"scene {k} {mode:9s}: {len(gdf):3d} candidates, {false} false, {seconds:.1f} s"
                )
    print(
        f"\n{args.scenes} scenes {args.size} px at {args.gsd} m, shipped model, recall at IoU >= 0.3"
    )
    for mode, (acc, fa, tt) in totals.items():
        recall = ", ".join(f"{c} {h}/{n} = {h / max(n, 1):.2f}" for c, (h, n) in acc.items())
        print(f"{mode:9s}: {recall}; false candidates {fa[0]}; {tt[0]:.1f} s")
    ratio = totals["image+dsm"][2][0] / max(totals["image"][2][0], 1e-9)
    print(f"cost with DSMs: {ratio:.2f}x the run without (target <= 1.3x)")


if __name__ == "__main__":
    main()
