"""Benchmark ``buildwatch synth``: seconds and megabytes for one scene pair (target: 2048 px <= 5 s).

Usage: python scripts/bench_synth.py [--size 2048] [--gsd 0.1] [--seed 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from detector.synth.scene import generate_scene
from detector.synth.write import write_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--gsd", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    scene = generate_scene(args.seed, size=args.size, gsd=args.gsd)
    rendered = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_scene(scene, Path(tmp))
        written = time.perf_counter()
        megabytes = sum(p.stat().st_size for p in paths.values()) / 1e6
    print(
        f"size {args.size} px, gsd {args.gsd} m: render {rendered - start:.2f} s, "
        f"write {written - rendered:.2f} s, total {written - start:.2f} s, {megabytes:.2f} MB, "
        f"{len(scene.changes[0])} changes, {len(scene.footprints[0])} baseline structures"
    )


if __name__ == "__main__":
    main()
