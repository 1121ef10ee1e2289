"""Latency and accuracy of the shipped model and its fp16 / static-int8 copies (issue 3).

For each variant: median ms per 512-px tile on N CPU threads (ONNX Runtime, batch 1, the
runtime's own preprocessing) and object F1 through ``training.evaluate.evaluate_pairs`` on
held-out synthetic scenes. The int8 copy is calibrated on synthetic scenes of other seeds
(``training.evaluate.calibration_inputs``), never on the evaluation scenes.

    python -m detector synth /tmp/heldout --seed 777 --scenes 3 --size 1024 --gsd 0.25
    python scripts/bench_model.py --pairs /tmp/heldout --work /tmp/bench --out /tmp/bench/bench.json

Variants are written to ``--work`` (not shipped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from detector.night.model import DEFAULT_MODEL_PATH, load_model_spec


def make_fp16(src: Path, out: Path) -> Path:
    """fp16 weights and compute, float32 inputs/outputs (the runtime feeds float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from training.export import write_sha256

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    half = convert_float_to_float16(model, keep_io_types=True)
    del half.metadata_props[:]
    for key, value in meta.items():
        prop = half.metadata_props.add()
        prop.key, prop.value = key, value
    for prop in half.metadata_props:
        if prop.key == "buildwatch_model_name":
            prop.value = prop.value + "-fp16"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out))
    write_sha256(out)
    return out


def make_int8(src: Path, out: Path, calibration_count: int = 16) -> Path:
    from training.evaluate import calibration_inputs
    from training.export import quantize_int8

    out.parent.mkdir(parents=True, exist_ok=True)
    return quantize_int8(src, out, calibration_inputs(src, count=calibration_count))


def tile_inputs(pairs: Path, spec, count: int) -> list[np.ndarray]:
    """Real model inputs: tiles cut from the held-out scenes (baseline, current)."""
    import rasterio

    from detector.night.detect import to_input

    h, w = spec.imgsz
    tiles = []
    for scene in sorted(p for p in Path(pairs).iterdir() if (p / "baseline.tif").exists()):
        with rasterio.open(scene / "baseline.tif") as a, rasterio.open(scene / "current.tif") as b:
            base, cur = a.read()[:3].transpose(1, 2, 0), b.read()[:3].transpose(1, 2, 0)
        for y0 in range(0, base.shape[0] - h + 1, h):
            for x0 in range(0, base.shape[1] - w + 1, w):
                img = np.concatenate(
                    [base[y0 : y0 + h, x0 : x0 + w], cur[y0 : y0 + h, x0 : x0 + w]], axis=2
                )
                tiles.append(to_input([img if spec.channels == 6 else img[:, :, 3:]]))
    if not tiles:
        raise SystemExit(f"{pairs}: no scene large enough for a {h}x{w} tile")
    return [tiles[i % len(tiles)] for i in range(count)]


def latencies_ms(
    models: dict[str, Path],
    inputs: list[np.ndarray],
    threads: int,
    rounds: int = 3,
    warmup: int = 3,
) -> dict[str, float]:
    """Median wall time of one ``session.run`` per tile (batch 1) per model.

    The models take turns for ``rounds`` rounds (a shared machine's load hits all alike);
    each model's number is its best round's median.
    """
    from detector.night.detect import make_session

    sessions = {}
    for name, path in models.items():
        spec = load_model_spec(path)
        sessions[name] = (make_session(spec, threads=threads), spec.input_name)
        for x in inputs[:warmup]:
            sessions[name][0].run(None, {spec.input_name: x})
    best = {name: float("inf") for name in models}
    for _ in range(rounds):
        for name, (sess, input_name) in sessions.items():
            times = []
            for x in inputs:
                t0 = time.perf_counter()
                sess.run(None, {input_name: x})
                times.append((time.perf_counter() - t0) * 1000)
            best[name] = min(best[name], statistics.median(times))
    return best


def accuracy(model: Path, pairs: Path, out: Path) -> dict:
    from training.evaluate import evaluate_pairs

    s = evaluate_pairs(model, pairs, "synth", out)["summary"]
    return {
        "any_class_f1_0.3": s["any_class"]["0.3"]["f1"],
        "all_classes_f1_0.3": s["all_classes"]["0.3"]["f1"],
        "new_building_f1_0.3": s["per_class"]["new_building"]["0.3"]["f1"],
        "pixel_f1": s["pixel"]["f1"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument(
        "--pairs", type=Path, required=True, help="held-out synthetic scenes (synth layout)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/bw-bench"))
    ap.add_argument("--out", type=Path, help="JSON with all numbers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiles", type=int, default=24, help="timed tiles per variant")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (variants take turns)")
    ap.add_argument("--variants", default="fp32,fp16,int8")
    ap.add_argument("--no-accuracy", action="store_true")
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": args.model}
    wanted = args.variants.split(",")
    if "fp16" in wanted:
        paths["fp16"] = make_fp16(args.model, args.work / "model-fp16.onnx")
    if "int8" in wanted:
        paths["int8"] = make_int8(args.model, args.work / "model-int8.onnx")
    spec = load_model_spec(args.model)
    inputs = tile_inputs(args.pairs, spec, args.tiles)
    rows = {}
    order = [v for v in ("fp32", "fp16", "int8") if v in paths]
    ms = latencies_ms({v: paths[v] for v in order}, inputs, args.threads, args.rounds)
    for name in order:
        path = paths[name]
        row = {
            "file": str(path),
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "ms_per_tile": round(ms[name], 1),
        }
        if not args.no_accuracy:
            row.update(accuracy(path, args.pairs, args.work / f"eval-{name}.json"))
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    base = rows["fp32"]["ms_per_tile"]
    for row in rows.values():
        row["ratio_vs_fp32"] = round(row["ms_per_tile"] / base, 2)
    result = {
        "model": str(args.model),
        "sha256": spec.sha256,
        "threads": args.threads,
        "tiles": args.tiles,
        "rounds": args.rounds,
        "onnxruntime": __import__("onnxruntime").__version__,
        "tile": list(spec.imgsz),
        "pairs": str(args.pairs),
        "variants": rows,
    }
    cols = ["size_mb", "ms_per_tile", "ratio_vs_fp32"] + (
        []
        if args.no_accuracy
        else ["any_class_f1_0.3", "all_classes_f1_0.3", "new_building_f1_0.3", "pixel_f1"]
    )
    print("| variant | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
