#!/usr/bin/env bash
# Start pre-training or fine-tuning on one machine or many with torchrun.
#   bash launch/run.sh pretrain --config launch/configs/pretrain/vit_b_k400.yaml [k=v ...]
#   bash launch/run.sh finetune --config launch/configs/finetune/k400_vivit_b.yaml --init PATH
# One machine: all its GPUs (or NPROC processes). Several: run the same command on each with
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0's address> [MASTER_PORT=29500]
# (launch/slurm.sbatch sets these from SLURM). Re-running the same command resumes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
what=${1:?usage: launch/run.sh pretrain|finetune --config FILE [k=v ...]}
shift
case "$what" in pretrain|finetune) ;; *) echo "launch/run.sh: unknown job '$what'" >&2; exit 2;; esac
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ]; then
  exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" \
    --nproc_per_node "$NPROC" --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" \
    --master_port "${MASTER_PORT:-29500}" -m "$what" "$@"
fi
exec torchrun --standalone --nproc_per_node "$NPROC" -m "$what" "$@"
