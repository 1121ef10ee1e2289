#!/usr/bin/env bash
# Train on one GPU machine: by default both designs (6-ch pair-v1, 3-ch single-v1) concurrently.
# Runs from the repo root on the device tool's machine, which has torch/numpy/cv2 but not
# ultralytics/pydantic/rasterio: wheels come in .whl/, real imagery as a source pack in
# .devdata/pack (made here with: buildwatch build-dataset --config configs/train/pair-v1.yaml
# --pack-sources .devdata/pack).
#
# Usage: bash scripts/device_train.sh [training minutes] [configs, comma-separated] [start weights]
#   round 1 (from the YAML):   bash scripts/device_train.sh 5.5
#   round 2 (fine-tune pair):  bash scripts/device_train.sh 3 pair-v2 .devdata/start/pair_best.pt
# Results in $OUT: <design>_best.pt, <design>_last.pt, <design>_results.csv, <design>_train.json,
# <design>.log (design = pair | single). While training runs, best/last are copied to $OUT every
# 15 s, so a call cut short still returns usable weights.
set -u
MINUTES=${1:-5.5}
CONFIGS=${2:-pair-v1,single-v1}
WEIGHTS=${3:-}
OUT=${OUT:-/tmp/bw_out}; mkdir -p "$OUT"
T0=$(date +%s)
DEVICE=${DEVICE:-0}  # DEVICE=cpu WHEELS=0 runs the same steps on a dev machine (a dry run of this script)
if [ "${WHEELS:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  # ultralytics imports polars only to read results.csv back (inside a try); a stub keeps it offline-small.
  mkdir -p /tmp/site/polars && echo 'def read_csv(*a, **k): raise RuntimeError("polars not installed")' > /tmp/site/polars/__init__.py
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
HOURS=$(python3 -c "print($MINUTES / 60)")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "setup +$(( $(date +%s) - T0 )) s"
IFS=, read -ra NAMES <<< "$CONFIGS"
WORKERS=$(( 14 / ${#NAMES[@]} ))
PIDS=()
for c in "${NAMES[@]}"; do
  n=${c%%-*}
  (
    set -o pipefail
    python3 -m detector build-dataset --config configs/train/$c.yaml --pack .devdata/pack --workers $WORKERS --out /tmp/ds/$c
    echo "dataset built at +$(( $(date +%s) - T0 )) s"
    python3 -m detector train --config configs/train/$c.yaml --data /tmp/ds/$c/data.yaml --device $DEVICE --batch ${BATCH:-32} \
      --workers $WORKERS --time-hours "$HOURS" --epochs 200 --project /tmp/runs ${WEIGHTS:+--weights "$WEIGHTS"}
    echo "trained at +$(( $(date +%s) - T0 )) s"
    cp /tmp/runs/$c/weights/best.pt "$OUT/${n}_best.pt"
    cp /tmp/runs/$c/weights/last.pt "$OUT/${n}_last.pt"
    cp /tmp/runs/$c/results.csv "$OUT/${n}_results.csv"
    cp /tmp/runs/$c/buildwatch_train.json "$OUT/${n}_train.json"
  ) > "$OUT/$n.log" 2>&1 &
  PIDS+=($!)
done
(
  while sleep 15; do
    for c in "${NAMES[@]}"; do
      for w in best last; do
        f=/tmp/runs/$c/weights/$w.pt
        [ -f "$f" ] && cp "$f" "$OUT/.${c%%-*}_$w.part" && mv "$OUT/.${c%%-*}_$w.part" "$OUT/${c%%-*}_$w.pt"
      done
    done
  done
) &
SAVER=$!
wait "${PIDS[@]}"
kill $SAVER 2>/dev/null
wait $SAVER 2>/dev/null
rm -f "$OUT"/.*.part
echo "total +$(( $(date +%s) - T0 )) s"
tail -n 4 "$OUT"/*.log
ls -la "$OUT"
