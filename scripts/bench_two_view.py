"""Two views, one verdict (issue 12): the pair model alone against the fusion rules of
``detect.second_view``, each run exactly as a user runs it (registration on), on the real sets of
``scripts/bench_real.py``.

Every rule is a ``detect.second_view`` setting written to a nightly config; the runs go through
``buildwatch evaluate`` / the nightly pipeline with it. ``--levir-only`` scores LEVIR-CD (1024
tiles + 256 crops, pooled) alone: about 20 s a rule on 2 cores.

Usage::

    python scripts/bench_two_view.py --building single.onnx [--model PAIR.onnx] [--levir-only]
        [--rules confirm,add] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from training.realbench import measure

ROOT = Path(__file__).resolve().parents[1]

#: name -> (detect settings, what it means). ``None``: the pair model alone.
RULES: dict[str, tuple[dict | None, str]] = {
    "pair": (None, "pair model alone (conf 0.25)"),
    "confirm": ({"confirm": True, "add": False}, "every candidate confirmed by the building model"),
    "confirm<0.5": (
        {"confirm": True, "confirm_below": 0.5, "add": False},
        "candidates under 0.5 confirmed",
    ),
    "add0.3": (
        {"confirm": False, "add": True, "add_conf": 0.3},
        "pair candidates + structures only the building model sees (>= 0.3, the default)",
    ),
    "add0.37": (
        {"confirm": False, "add": True, "add_conf": 0.37},
        "the same, added at >= 0.37 (where the building "
        "model's own F1 peaks on its validation areas)",
    ),
    "add0.4": ({"confirm": False, "add": True, "add_conf": 0.4}, "the same, added at >= 0.4"),
    "add0.5": ({"confirm": False, "add": True, "add_conf": 0.5}, "the same, added at >= 0.5"),
    "confirm+add0.37": (
        {"confirm": True, "add": True, "add_conf": 0.37},
        "confirm and add (>= 0.37)",
    ),
    "confirm<0.5+add0.37": (
        {"confirm": True, "confirm_below": 0.5, "add": True, "add_conf": 0.37},
        "confirm under 0.5, add (>= 0.37)",
    ),
    "pair0.15+confirm": (
        {"confirm": True, "add": False, "_conf": 0.15},
        "pair proposals from 0.15, every one confirmed",
    ),
}


def write_config(folder: Path, name: str, building: Path, settings: dict | None) -> Path:
    import yaml

    detect: dict = {"second_view": {"enabled": False}}
    if settings is not None:
        settings = dict(settings)
        conf = settings.pop("_conf", None)
        if conf is not None:
            detect["conf"] = conf
        detect["second_view"] = {"model": str(Path(building).resolve()), **settings}
    path = folder / f"{name.replace('<', 'lt').replace('+', '_')}.yaml"
    path.write_text(yaml.safe_dump({"detect": detect}))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--building", type=Path, required=True, help="the 3-channel building model (ONNX)"
    )
    ap.add_argument(
        "--model", type=Path, default=None, help="pair model (default: the shipped one)"
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--rules", default=",".join(RULES), help=f"comma-separated, of: {', '.join(RULES)}"
    )
    ap.add_argument("--levir-only", action="store_true", help="LEVIR-CD pooled only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.getLogger("detector").setLevel(logging.WARNING)
    names = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown:
        print(f"unknown rule(s) {unknown}; known: {', '.join(RULES)}", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory(prefix="bw-2view-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            cfg = write_config(Path(tmp), name, args.building, RULES[name][0])
            rows, numbers = measure(
                args.model,
                args.data,
                skip_synthetic=args.levir_only,
                run_config=cfg,
                levir_only=args.levir_only,
            )
            numbers["seconds"] = round(time.perf_counter() - t0, 1)
            results[name] = {"rule": RULES[name][1], "rows": rows, "numbers": numbers}
            print(f"{name}: " + "; ".join(f"{r[0]}: {r[1]}" for r in rows), flush=True)
    print(f"\nbuilding model: {args.building}; pair model: {args.model or 'shipped'}\n")
    print("| rule | " + " | ".join(r[0] for r in next(iter(results.values()))["rows"]) + " |")
    print("|---" * (1 + len(next(iter(results.values()))["rows"])) + "|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(row[1] for row in r["rows"]) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
