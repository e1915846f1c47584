#!/usr/bin/env bash
# Check a GPU machine in one command (docs/gpu-check.md): the CUDA tests, then pre-training end
# to end on real clips with the fast loader options, then the model step alone; one JSON
# summary. Made for a lent machine with no network, within 8 minutes on one H100:
#
#   bash launch/gpu_check.sh            # from the project root; writes runs/gpu_check/ (or $OUT)
#
# Python: $PYTHON, else the active environment's python, else python3 (a machine's own torch).
# Where av, webdataset, deepspeed or pydantic are missing, the packed dependencies
# (.gpu-site/site312.tar.xz, made here by ../shared/tools/gpu-site.sh) are unpacked to
# /tmp/site and put on PYTHONPATH. On a machine without a GPU it says so in one line and exits 0.
#
#   GPU_CHECK_BUDGET   seconds for the whole check (default 480); each phase gets a share, is
#                      stopped at the end of it, and the summary says which ran past
#   GPU_CHECK_STEPS    pre-training steps of the end-to-end phase (default 120)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$([ -n "${VIRTUAL_ENV:-}" ] && echo "$VIRTUAL_ENV/bin/python" || echo python3)}
DEST=${OUT:-runs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-480}
STEPS=${GPU_CHECK_STEPS:-120}
T0=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1 ||
   ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
     >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU on this machine (nvidia-smi or torch.cuda finds none); nothing to check"
  exit 0
fi

deps_ok() { "$PY" -c 'import av, webdataset, deepspeed, pydantic' >/dev/null 2>&1; }
if ! deps_ok; then
  if [ -f .gpu-site/site312.tar.xz ]; then
    mkdir -p /tmp/site && tar -xJf .gpu-site/site312.tar.xz -C /tmp/site
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if ! deps_ok; then
    echo "gpu_check: $PY lacks av, webdataset, deepspeed or pydantic, and no" \
         ".gpu-site/site312.tar.xz is here: run 'bash ../shared/tools/gpu-site.sh' where the" \
         "registry is, and carry .gpu-site (docs/gpu-check.md)" >&2
    exit 2
  fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/tubemae-torch-extensions}
export PYTHONUNBUFFERED=1
unset DS_ACCELERATOR
mkdir -p "$DEST"
CORES=$(env -u OMP_NUM_THREADS nproc)
WORKERS=$(( CORES > 2 ? CORES - 1 : 1 ))

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# phase NAME SHARE_PERCENT CMD...: runs CMD for at most SHARE of the budget (or what is left)
declare -A RC WALL
phase() {
  local name=$1 share=$2; shift 2
  local cap=$(( BUDGET * share / 100 )) rest
  rest=$(left)
  [ "$cap" -gt "$rest" ] && cap=$rest
  if [ "$cap" -le 10 ]; then
    echo "gpu_check: $name not run: the budget of ${BUDGET}s is spent" >&2
    RC[$name]=skipped; WALL[$name]=0; return
  fi
  echo "== gpu_check: $name (at most ${cap}s)" >&2
  local t=$(date +%s) pid n=0
  # its own process group, so that the end of its share stops everything it started (the
  # pre-training a bench runs, its loader workers): SIGTERM (a run checkpoints and exits),
  # then SIGKILL 20 s later
  setsid "$@" > "$DEST/$name.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && [ $(( $(date +%s) - t )) -lt "$cap" ]; do sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 20 ]; do sleep 1; n=$((n + 1)); done
    kill -KILL -- "-$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    RC[$name]=124
  else
    wait "$pid"
    RC[$name]=$?
  fi
  pkill -KILL -g "$pid" 2>/dev/null   # whatever of the group outlived its leader
  WALL[$name]=$(( $(date +%s) - t ))
  tail -n 15 "$DEST/$name.log" >&2
  if [ "${RC[$name]}" = 124 ] || [ "${RC[$name]}" = 137 ]; then
    echo "gpu_check: $name ran past its ${cap}s and was stopped ($DEST/$name.log)" >&2
  fi
}

phase tests 45 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider \
  --junitxml "$DEST/tests.xml"
phase e2e 40 "$PY" tests/bench/bench_e2e.py --engines plain --steps "$STEPS" --every 10 \
  --copies 64 --fast-decode --prep "--short-side 256 --gop 16 --frame-step 4" \
  --results "$DEST/results" -- data.batch_size=192 "data.num_workers=$WORKERS" \
  data.repeats=4 data.augment=device data.repeat_mode=spatial data.device_format=yuv420 \
  data.clip_starts=keyframe runtime.compile=true
phase step 15 "$PY" tests/bench/bench_pretrain.py --device cuda --preset vit_b --batch 192 \
  --steps 10 --compile --no-hf --results "$DEST/results"

"$PY" tests/gpu/summary.py --dest "$DEST" --budget "$BUDGET" --wall "$(( $(date +%s) - T0 ))" \
  --phase "tests:${RC[tests]}:${WALL[tests]}" --phase "e2e:${RC[e2e]}:${WALL[e2e]}" \
  --phase "step:${RC[step]}:${WALL[step]}"
