"""Real-imagery quality of a model, run exactly as a user runs it (registration on): one table.

Sets (all from ``../shared/data``; evaluation only, nothing here trains anything):

- **LEVIR-CD** 1024 tiles and 256 crops, pooled: object F1@0.3 through ``buildwatch evaluate``;
- **erased buildings**: SpaceNet Atlanta (0.5 m) and the held-out OpenAerialMap Banepa drone
  chips (≈ 13 cm), every third labelled building inpainted away in a copy that serves as the
  baseline: share of erased buildings with a candidate centroid within 2 m, candidates touching
  an untouched building;
- **flown twice**: the Banepa hold-out against itself as a second flight (exposure, white
  balance, resampling, JPEG, 0.5 m move): false candidates per km²;
- **synthetic held-out** (seed 777, 6 scenes, generated here): new_building and all-class F1@0.3.

Usage::

    python scripts/bench_real.py [--model M.onnx] [--config NIGHTLY.yaml] [--data ../shared/data] [--skip-synthetic]

``--config`` runs every pair with that nightly config's settings (e.g. ``detect.second_view``), as
``buildwatch run --config`` would. The sets and their scoring live in :mod:`training.realbench`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from training.realbench import measure

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, default=None, help="ONNX model (default: the shipped one)"
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--config", type=Path, default=None, help="nightly config whose settings every run uses"
    )
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    logging.getLogger("detector").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    rows, numbers = measure(args.model, args.data, args.skip_synthetic, args.config)
    print(
        f"\nmodel: {args.model or 'shipped'}; config: {args.config or 'defaults'}; {time.perf_counter() - t0:.0f} s\n"
    )
    print("| set | measured | target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
