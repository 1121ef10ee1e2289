#!/usr/bin/env bash
# Benchmark: train the default pair model on CPU with the documented recipe (configs/train/pair-cpu.yaml)
# and time every step against the 90-minute target on 2 CPU cores, then measure the model on
# held-out synthetic scenes (seed 777, never trained on).
#
# Usage: bash scripts/bench_train_cpu.sh [work folder (default runs/bench_train_cpu)] [data root (default ../shared/data)]
# On a machine with more cores the run is pinned to CORES (default 0,1) with taskset, so the
# numbers stay those of 2 cores.
set -euo pipefail
W=${1:-runs/bench_train_cpu}
DATA_ROOT=${2:-../shared/data}
CONFIG=${CONFIG:-configs/train/pair-cpu.yaml}
CORES=${CORES:-0,1}
PIN=()
if command -v taskset >/dev/null && [ "$(nproc --all)" -gt 2 ]; then PIN=(taskset -c "$CORES"); fi
mkdir -p "$W"
now() { date +%s; }
T0=$(now)
"${PIN[@]}" buildwatch build-dataset --config "$CONFIG" --data-root "$DATA_ROOT" --out "$W/dataset"
T1=$(now)
"${PIN[@]}" buildwatch train --config "$CONFIG" --data "$W/dataset/data.yaml" --project "$W/runs" --name cpu-recipe
T2=$(now)
"${PIN[@]}" buildwatch export --config "$CONFIG" --weights "$W/runs/cpu-recipe/weights/best.pt" --out "$W/model.onnx"
T3=$(now)
python3 - "$T0" "$T1" "$T2" "$T3" "$W" <<'PY'
import json, sys
t0, t1, t2, t3 = map(int, sys.argv[1:5])
out = {"dataset_min": round((t1 - t0) / 60, 1), "train_min": round((t2 - t1) / 60, 1),
       "export_min": round((t3 - t2) / 60, 1), "total_min": round((t3 - t0) / 60, 1)}
out["vs_90_min_target"] = round(out["total_min"] / 90, 2)
print("CPU training time:", json.dumps(out))
open(f"{sys.argv[5]}/timing.json", "w").write(json.dumps(out, indent=1))
PY
# quality, after the clock: held-out synthetic scenes (seed 777), as in the model card
[ -d "$W/heldout" ] || buildwatch synth "$W/heldout" --seed 777 --scenes 6 --size 1024 --gsd 0.25
buildwatch evaluate --model "$W/model.onnx" --pairs "$W/heldout" --layout synth --out "$W/eval_synth.json"
