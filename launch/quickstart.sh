#!/usr/bin/env bash
# The main job on the embedded default, end to end, on this machine's CPU (on an idle 2-core
# machine, 2026-12-07: 7m43s wall and 14m of CPU with the environment built, 8m43s from a fresh
# clone with a cold set-up; each phase prints its own time and the cores it used):
#   1. set-up (cached after the first run)
#   2. generate the synthetic motion set (real H.264 clips): an unlabeled pool for pre-training,
#      64 labeled clips per class, a 400-clip test split; shard it
#   3. stream one batch (strided clips + tube masks) and draw it
#   4. pre-train a tiny VideoMAE on the unlabeled pool and export the encoder
#   5. with 16 labels per class: fine-tune ViViT (12 epochs of 256 clips) from the encoder and
#      from scratch, probe both frozen encoders, and fine-tune the encoder armed with UniFormer
#      blocks; print the table
# Output goes under runs/quickstart/ (QUICKSTART_DIR to change it). Re-running reuses finished
# steps and resumes interrupted ones.
#   QUICKSTART_SCALE  a fraction in (0, 1] (default 1): scales the data set, the pre-training
#                     steps and the fine-tuning epochs down, to check the whole path quickly (CI
#                     runs 0.1); its numbers are not the quick start's. Its default output is
#                     runs/quickstart-s<scale>, so a short run is never resumed as a full one.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${QUICKSTART_SCALE:-1}
if ! awk -v s="$SCALE" 'BEGIN { exit !(s + 0 == s && s > 0 && s <= 1) }'; then
  echo "quickstart: QUICKSTART_SCALE=$SCALE must be a number in (0, 1], for example 0.1" >&2
  exit 2
fi
# n scaled by QUICKSTART_SCALE, rounded up, at least lo
scaled() { awk -v n="$1" -v lo="$2" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.999999); print (v < lo ? lo : v) }'; }
POOL=$(scaled 2000 64); TRAIN_PC=$(scaled 64 16); VAL_PC=$(scaled 16 4); TEST_PC=$(scaled 100 8)
STEPS=$(scaled 300 6); CKPT_EVERY=$(scaled "$STEPS" 1 | awk '{ print int(($1 + 2) / 3) }')
EPOCHS=$(scaled 12 1); CLIPS=$(scaled 256 16)
. launch/setup.sh
if [ "$SCALE" = 1 ]; then OUT=${QUICKSTART_DIR:-runs/quickstart}; else
  OUT=${QUICKSTART_DIR:-runs/quickstart-s$SCALE}
  echo "== short quick start (QUICKSTART_SCALE=$SCALE): pool $POOL, $STEPS pre-training steps," \
       "$EPOCHS fine-tuning epoch(s) of $CLIPS clips; its numbers are not the quick start's"
fi
mkdir -p "$OUT"
# Cores per phase: a phase that runs one process takes every core (OMP_NUM_THREADS, printed on
# its start line, since the order of sums depends on it); prep runs one encoder per core; the
# study's two runs take cores/2 threads each, and the UniFormer head one beside them.
# (nproc itself would answer OMP_NUM_THREADS, which launch/setup.sh sets to 1)
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
# each phase's wall time and CPU time (the finished children of this shell, from `times`, which
# must run in this shell, not in a $(...)), printed at its end
cpu_now() {
  times > "$OUT/.times"
  CPU_NOW=$(awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m");
    n += a[1] * 60 + a[2] } print n }' "$OUT/.times")
}
PHASES=""
phase_begin() { PHASE_NAME=$1; PHASE_T0=$(date +%s.%N); cpu_now; PHASE_C0=$CPU_NOW; }
phase_end() {
  local line
  cpu_now
  line=$(awk -v n="$PHASE_NAME" -v t0="$PHASE_T0" -v t1="$(date +%s.%N)" -v c0="$PHASE_C0" \
    -v c1="$CPU_NOW" 'BEGIN { w = t1 - t0; printf "%-28s %7.0f s wall %7.0f s CPU %5.2f cores", \
    n, w, c1 - c0, (w > 0 ? (c1 - c0) / w : 0) }')
  echo "   [$line]"
  PHASES="$PHASES$line"$'\n'
}
QS_T0=$(date +%s.%N)

echo "== 1/5 synthetic data set -> shards ($OUT/data: pool, train, val, test; $CORES encoders)"
phase_begin "1 data set"
python -m data.prep synthetic --workers "$CORES" --out "$OUT/data" --pool "$POOL" \
  --train-per-class "$TRAIN_PC" --val-per-class "$VAL_PC" --test-per-class "$TEST_PC" \
  --num-classes 4 --size 64 --frames 40 --shard-samples 128
phase_end

echo "== 2/5 one streamed batch: 16 frames at stride 2, 64x64, tube mask 0.9"
phase_begin "2 one batch"
OMP_NUM_THREADS=$CORES python -m data.preview "$OUT/data/pool" --num-frames 16 --stride 2 \
  --size 64 --patch 16 --batch 4 --png "$OUT/preview.png"
echo "picture of the batch (hidden tubes shaded): $OUT/preview.png"
phase_end

echo "== 3/5 pre-train VideoMAE (tiny) on the unlabeled pool -> $OUT/pretrain ($CORES threads)"
phase_begin "3 pre-training"
OMP_NUM_THREADS=$CORES python -m pretrain --config launch/configs/pretrain/tiny_synthetic.yaml \
  run.dir="$OUT/pretrain" data.shards="$OUT/data/pool" log.progress=false \
  train.steps="$STEPS" train.ckpt_every="$CKPT_EVERY"
phase_end

echo "== 4/5 16 labels per class: pre-trained vs scratch (fine-tuned and frozen), UniFormer head"
# The 16-shot split (the study's own, seed 0), then three runs at once: the study's two
# (--jobs 2, cores/2 threads each) and the UniFormer head beside them on one thread (log:
# $OUT/uniformer_head.log).
phase_begin "4 fine-tunes and probes"
[ -f "$OUT/study/data/k16_s0/train/manifest.json" ] || python -m data.prep subset "$OUT/data" \
  --per-class 16 --seed 0 --out "$OUT/study/data/k16_s0"
OMP_NUM_THREADS=1 python -m finetune --config launch/configs/finetune/synthetic_uniformer_head.yaml \
  --init "$OUT/pretrain/export" run.dir="$OUT/finetune_uniformer_head" \
  data.shards="$OUT/study/data/k16_s0" data.repeats=$(( (CLIPS + 63) / 64 )) train.epochs="$EPOCHS" \
  > "$OUT/uniformer_head.log" 2>&1 &
HEAD_PID=$!
trap 'kill $HEAD_PID 2>/dev/null || true' EXIT
python -m finetune.study --set "$OUT/data" --encoder "$OUT/pretrain/export" \
  --config launch/configs/finetune/synthetic_vivit.yaml --out "$OUT/study" --ks 16 --seeds 0 \
  --methods finetune linear --jobs 2 --clips-per-epoch "$CLIPS" train.epochs="$EPOCHS"
echo "waiting for the UniFormer head ($OUT/uniformer_head.log)"
if ! wait $HEAD_PID; then
  tail -n 20 "$OUT/uniformer_head.log"
  echo "the UniFormer head run failed: $OUT/uniformer_head.log; re-run to resume" >&2
  exit 1
fi
trap - EXIT
tail -n 1 "$OUT/uniformer_head.log"
phase_end

python - "$OUT" "$((TEST_PC * 4))" <<'PY'
import json, sys
out, test_clips = sys.argv[1], sys.argv[2]
logged = [json.loads(line) for line in open(f"{out}/pretrain/metrics.jsonl")]
first, last = logged[0], logged[-1]
print(f"\npre-training loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} "
      f"(step {last['step']}); encoder: {out}/pretrain/export/")
res = json.load(open(f"{out}/study/results.json"))
head = json.load(open(f"{out}/finetune_uniformer_head/report.json"))["test"]["acc"]
print(f"\n{f'16 labels per class, {test_clips} test clips':<40} {'pre-trained':>12} {'scratch':>9}")
for method, name in (("finetune", "ViViT fine-tuned"), ("linear", "linear probe (frozen)")):
    row = res[method]["16"]
    print(f"{name:<40} {row['pretrained']['mean']:12.3f} {row['scratch']['mean']:9.3f}")
print(f"{'UniFormer head on the encoder':<40} {head:12.3f}")
print(f"\ntable: {out}/study/results.md; plot: {out}/study/accuracy_vs_labels.png")
PY

echo "== 5/5 use the models: export the pre-trained fine-tune, predict 3 test clips, one reconstruction"
phase_begin "5 use the models"
export OMP_NUM_THREADS=$CORES
python -m finetune.export "$OUT/study/runs/k16/pretrained/s0/finetune" --out "$OUT/model" > /dev/null
python -m finetune.predict "$OUT/model" "$OUT/data/test" --limit 3 --top-k 2
python -m pretrain.visualize "$OUT/pretrain" "$OUT/data" --sample 0 --out "$OUT/vis" > /dev/null
echo "model: $OUT/model (python -m finetune.predict $OUT/model VIDEO...); reconstruction: $OUT/vis/"
phase_end
rm -f "$OUT/.times"
printf '\n== time per phase on %s cores (set-up not included)\n%s' "$CORES" "$PHASES"
awk -v t0="$QS_T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%-28s %7.0f s wall\n", "all", t1 - t0 }'
