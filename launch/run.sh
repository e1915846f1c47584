#!/usr/bin/env bash
# Start pre-training or fine-tuning on one machine or many with torchrun.
#   bash launch/run.sh pretrain --config launch/configs/pretrain/vit_b_k400.yaml [k=v ...]
#   bash launch/run.sh finetune --config launch/configs/finetune/k400_vivit_b.yaml --init PATH
# One machine: all its GPUs (or NPROC processes). Several: run the same command on each with
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0's address> [MASTER_PORT=29500]
# (launch/slurm.sbatch sets these from SLURM). Re-running the same command resumes the run.
# RDZV=c10d [MAX_RESTARTS=3]: an elastic rendezvous instead, so the run resumes by itself when a
# lost node comes back (docs/nodes.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
what=${1:?usage: launch/run.sh pretrain|finetune --config FILE [k=v ...]}
shift
case "$what" in pretrain|finetune) ;; *) echo "launch/run.sh: unknown job '$what'" >&2; exit 2;; esac
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -eq 0 ]; then
  expected=
  command -v nvidia-smi >/dev/null 2>&1 && expected="nvidia-smi is installed"
  [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && expected="CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
  [ -n "${SLURM_GPUS_ON_NODE:-}${SLURM_JOB_GPUS:-}" ] && expected="SLURM gave this job GPUs"
  if [ -n "$expected" ]; then
    {
      echo "################################################################################"
      echo "launch/run.sh: WARNING: torch sees no GPU on $(hostname) although $expected."
      echo "  The run falls back to the CPU (many times slower). Check the driver, the CUDA"
      echo "  build of torch ($(python -c 'import torch; print(torch.__version__)')) and"
      echo "  CUDA_VISIBLE_DEVICES; stop now (Ctrl-C) unless the CPU is what you want."
      echo "################################################################################"
    } >&2
  fi
fi
NPROC=${NPROC:-$(( gpus > 0 ? gpus : 1 ))}
NNODES=${NNODES:-1}
# torchrun's grace period between SIGTERM and SIGKILL: it must cover finishing the step and
# writing a checkpoint (ViT-L 3.8 GB: 13 s at 300 MB/s, ~80 s at 50 MB/s); torch's default is 30 s.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}
echo "launch/run.sh: $what on $(hostname): $NPROC process(es) x $NNODES node(s)," \
     "$([ "$gpus" -gt 0 ] && echo "$gpus GPU(s)" || echo "CPU")" >&2
if [ -n "${RDZV:-}" ]; then
  # Elastic: when a process or a node is lost, every launcher restarts its processes (up to
  # MAX_RESTARTS times) and waits for NNODES nodes; a lost node's launcher started again (the
  # same command, by hand or by the scheduler) joins, and the run resumes from its last
  # complete checkpoint. MASTER_ADDR hosts the rendezvous; node ranks are assigned, not given.
  # The rendezvous store is not shared with the trainers: shared (torch's default), a node
  # that came back never met the others again (torch 2.13).
  export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
  exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" --rdzv-backend "$RDZV" \
    --rdzv-endpoint "${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" \
    --rdzv-id "${RDZV_ID:-tubemae}" --max-restarts "${MAX_RESTARTS:-3}" \
    ${RDZV_CONF:+--rdzv-conf "$RDZV_CONF"} -m "$what" "$@"
fi
if [ "$NNODES" -gt 1 ]; then
  exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" \
    --nproc_per_node "$NPROC" --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" \
    --master_port "${MASTER_PORT:-29500}" -m "$what" "$@"
fi
exec torchrun --standalone --nproc_per_node "$NPROC" -m "$what" "$@"
