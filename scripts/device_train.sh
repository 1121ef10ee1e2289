#!/usr/bin/env bash
# Train both designs (6-ch pair, 3-ch single) concurrently on one GPU machine.
# Runs from the repo root on the device tool's machine, which has torch/numpy/cv2 but not
# ultralytics/pydantic/rasterio: wheels come in .whl/, real imagery as a source pack in
# .devdata/pack (made here with: buildwatch build-dataset --config configs/train/pair-v1.yaml
# --pack-sources .devdata/pack). Usage: bash scripts/device_train.sh [training minutes]
set -u
MINUTES=${1:-5.5}
OUT=${OUT:-/tmp/bw_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# ultralytics imports polars only to read results.csv back (inside a try); a stub keeps it offline-small.
mkdir -p /tmp/site/polars && echo 'def read_csv(*a, **k): raise RuntimeError("polars not installed")' > /tmp/site/polars/__init__.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
HOURS=$(python3 -c "print($MINUTES / 60)")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for n in pair single; do
  (
    set -o pipefail
    python3 -m detector build-dataset --config configs/train/$n-v1.yaml --pack .devdata/pack --workers 7 --out /tmp/ds/$n
    python3 -m detector train --config configs/train/$n-v1.yaml --data /tmp/ds/$n/data.yaml --device 0 --batch 32 \
      --workers 7 --time-hours "$HOURS" --epochs 200 --project /tmp/runs
    cp /tmp/runs/$n-v1/weights/best.pt "$OUT/${n}_best.pt"
    cp /tmp/runs/$n-v1/results.csv "$OUT/${n}_results.csv"
    cp /tmp/runs/$n-v1/buildwatch_train.json "$OUT/${n}_train.json"
  ) > "$OUT/$n.log" 2>&1 &
done
wait
tail -n 4 "$OUT"/*.log
ls -la "$OUT"
