#!/usr/bin/env bash
# The main job on the embedded default, end to end, on this machine's CPU:
#   1. set-up (cached after the first run)
#   2. generate the synthetic motion set (real H.264 clips) and shard it
#   3. stream one batch (strided clips + tube masks) and show it
# Output goes under runs/quickstart/ (QUICKSTART_DIR to change it). Re-running continues or
# reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
OUT=${QUICKSTART_DIR:-runs/quickstart}
mkdir -p "$OUT"

echo "== 1/2 synthetic data set -> shards ($OUT/data)"
python -m data.prep synthetic --out "$OUT/data" --count 320 --num-classes 4 --size 64 \
  --frames 40 --shard-samples 64

echo "== 2/2 one streamed batch: 16 frames at stride 2, 64x64, tube mask 0.9"
python -m data.preview "$OUT/data" --num-frames 16 --stride 2 --size 64 --patch 16 --batch 4 \
  --png "$OUT/preview.png"
echo "picture of the batch (hidden tubes shaded): $OUT/preview.png"
