#!/usr/bin/env bash
# Train on one GPU machine: by default both designs (6-ch pair-v1, 3-ch single-v1) concurrently.
# Runs from the repo root on the device tool's machine, which has torch/numpy/cv2 but not
# ultralytics/pydantic/rasterio: wheels come in .whl/, real imagery as a source pack in
# .devdata/pack (made here with: buildwatch build-dataset --config configs/train/pair-v1.yaml
# --pack-sources .devdata/pack).
#
# Usage: bash scripts/device_train.sh [training minutes] [configs, comma-separated] [start weights]
#   round 1 (from the YAML):   bash scripts/device_train.sh 5.5
#   round 2 (fine-tune pair):  bash scripts/device_train.sh 3 pair-v2 .devdata/start/pair-v1_best.pt
#   a CPU recipe's schedule on the GPU (its quality, fast):
#                              BATCH=16 bash scripts/device_train.sh 9 pair-cpu@10,pair-cpu@20
# A config is a name under configs/train/ or a path to a .yaml; "pair-cpu@20" trains it for exactly
# 20 epochs (no time limit) as run "pair-cpu-e20". Results in $OUT: <run>_best.pt, <run>_last.pt,
# <run>_results.csv, <run>_train.json, <run>.log. While training runs, best/last are copied to $OUT every
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
yaml_of() { local c=${1%@*}; case "$c" in *.yaml) echo "$c" ;; *) echo "configs/train/$c.yaml" ;; esac; }
name_of() { local b; b=$(basename "${1%@*}" .yaml); case "$1" in *@*) echo "$b-e${1##*@}" ;; *) echo "$b" ;; esac; }
schedule_of() { case "$1" in *@*) echo "--epochs ${1##*@} --time-hours 0" ;; *) echo "--time-hours $HOURS --epochs 200" ;; esac; }
for cfg in "${NAMES[@]}"; do
  c=$(name_of "$cfg"); y=$(yaml_of "$cfg"); SCHEDULE=$(schedule_of "$cfg")
  (
    set -o pipefail
    python3 -m detector build-dataset --config "$y" --pack .devdata/pack --workers $WORKERS --out /tmp/ds/$c
    echo "dataset built at +$(( $(date +%s) - T0 )) s"
    python3 -m detector train --config "$y" --name "$c" --data /tmp/ds/$c/data.yaml --device $DEVICE --batch ${BATCH:-32} \
      --workers $WORKERS $SCHEDULE --project /tmp/runs ${WEIGHTS:+--weights "$WEIGHTS"}
    echo "trained at +$(( $(date +%s) - T0 )) s"
    cp /tmp/runs/$c/weights/best.pt "$OUT/${c}_best.pt"
    cp /tmp/runs/$c/weights/last.pt "$OUT/${c}_last.pt"
    cp /tmp/runs/$c/results.csv "$OUT/${c}_results.csv"
    cp /tmp/runs/$c/buildwatch_train.json "$OUT/${c}_train.json"
  ) > "$OUT/$c.log" 2>&1 &
  PIDS+=($!)
done
(
  while sleep 15; do
    for cfg in "${NAMES[@]}"; do
      c=$(name_of "$cfg")
      for w in best last; do
        f=/tmp/runs/$c/weights/$w.pt
        [ -f "$f" ] && cp "$f" "$OUT/.${c}_$w.part" && mv "$OUT/.${c}_$w.part" "$OUT/${c}_$w.pt"
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
