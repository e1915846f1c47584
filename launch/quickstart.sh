#!/usr/bin/env bash
# The main job on the embedded default, end to end, on this machine's CPU (a few minutes):
#   1. set-up (cached after the first run)
#   2. generate the synthetic motion set (real H.264 clips) and shard it
#   3. stream one batch (strided clips + tube masks) and draw it
#   4. pre-train a tiny VideoMAE on it and export the encoder
#   5. fine-tune ViViT from that encoder and from scratch, and the encoder armed with UniFormer
#      blocks (family uniformer_head); print the accuracies
# Output goes under runs/quickstart/ (QUICKSTART_DIR to change it). Re-running reuses finished
# steps and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
OUT=${QUICKSTART_DIR:-runs/quickstart}
mkdir -p "$OUT"

echo "== 1/4 synthetic data set -> shards ($OUT/data)"
python -m data.prep synthetic --out "$OUT/data" --count 320 --num-classes 4 --size 64 \
  --frames 40 --shard-samples 64

echo "== 2/4 one streamed batch: 16 frames at stride 2, 64x64, tube mask 0.9"
python -m data.preview "$OUT/data" --num-frames 16 --stride 2 --size 64 --patch 16 --batch 4 \
  --png "$OUT/preview.png"
echo "picture of the batch (hidden tubes shaded): $OUT/preview.png"

echo "== 3/4 pre-train VideoMAE (tiny) -> $OUT/pretrain"
python -m pretrain --config launch/configs/pretrain/tiny_synthetic.yaml \
  run.dir="$OUT/pretrain" data.shards="$OUT/data" log.progress=false

echo "== 4/4 fine-tune ViViT from the encoder and from scratch; the UniFormer head on the encoder"
python -m finetune --config launch/configs/finetune/synthetic_vivit.yaml \
  --init "$OUT/pretrain/export" run.dir="$OUT/finetune_pretrained" data.shards="$OUT/data"
python -m finetune --config launch/configs/finetune/synthetic_vivit.yaml \
  --init none run.dir="$OUT/finetune_scratch" data.shards="$OUT/data"
python -m finetune --config launch/configs/finetune/synthetic_uniformer_head.yaml \
  --init "$OUT/pretrain/export" run.dir="$OUT/finetune_uniformer_head" data.shards="$OUT/data"

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [("ViViT from the VideoMAE encoder", "finetune_pretrained"),
        ("ViViT from scratch", "finetune_scratch"),
        ("UniFormer head on the encoder", "finetune_uniformer_head")]
logged = [json.loads(line) for line in open(f"{out}/pretrain/metrics.jsonl")]
first, last = logged[0], logged[-1]
print(f"\npre-training loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} "
      f"(step {last['step']}); encoder: {out}/pretrain/export/")
print(f"\n{'synthetic motion set, 4 classes':<36} {'val acc':>8} {'test acc':>9} {'test auc':>9}")
for name, folder in rows:
    r = json.load(open(f"{out}/{folder}/report.json"))
    print(f"{name:<36} {r['best']['acc']:8.3f} {r['test']['acc']:9.3f} {r['test']['auc']:9.3f}")
PY
