#!/usr/bin/env bash
# By hand (needs root and Debian's slurm-wlm + munge; not part of the CI suite, which has no
# daemons): a single-node SLURM on this machine runs launch/slurm.sbatch, the job is requeued
# mid-run with `scontrol requeue`, and the resumed run must log exactly the losses of a straight
# run. Then a job with a 2-minute limit must checkpoint at the limit's signal and requeue itself.
#   sudo apt-get install -y slurm-wlm munge && sudo bash tests/slurm/single_node.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
work=${WORK:-/tmp/tubemae-slurm}
rm -rf "$work" && mkdir -p "$work"/{state,spool,log}
host=$(hostname)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$work/slurm.conf" <<CONF
ClusterName=tubemae-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
KillWait=60
MinJobAge=600
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$work/slurm.conf
pgrep munged >/dev/null || { mkdir -p /run/munge && chown munge: /run/munge && \
                             sudo -u munge /usr/sbin/munged 2>/dev/null || /usr/sbin/munged -f; }
pkill -x slurmctld || true; pkill -x slurmd || true; sleep 1
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
trap 'pkill -x slurmctld; pkill -x slurmd' EXIT
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo

. launch/setup.sh >/dev/null
data=$work/data
python -m data.prep synthetic --out "$data" --count 64 --size 32 --frames 24 --workers 1 \
  --shard-samples 16 >/dev/null 2>&1
common=(pretrain --config launch/configs/pretrain/tiny_synthetic.yaml "data.shards=$data/train"
        data.num_frames=8 data.size=32 data.patch=8 model.num_frames=8 model.img_size=32
        model.patch_size=8 data.num_workers=1 train.steps=60 train.ckpt_every=5 log.every=5
        log.picture_every=0)

state() { scontrol show job "$1" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
wait_done() {
  for _ in $(seq 900); do
    s=$(state "$1"); case "$s" in COMPLETED|FAILED|CANCELLED|TIMEOUT) echo "$s"; return;; esac
    sleep 1
  done; echo "STUCK"
}
losses() { python -c "import json,sys; print({r['step']: r['loss'] for r in map(json.loads, open(sys.argv[1])) if 'loss' in r})" "$1/metrics.jsonl"; }

# 1. straight, then requeued mid-run from outside (from another directory: /)
a=$(cd / && sbatch --parsable -n1 -c "$cpus" "$repo/launch/slurm.sbatch" "${common[@]}" "run.dir=$work/straight")
[ "$(wait_done "$a")" = COMPLETED ] || { echo "FAIL: straight job"; exit 1; }
b=$(cd / && sbatch --parsable -n1 -c "$cpus" "$repo/launch/slurm.sbatch" "${common[@]}" "run.dir=$work/requeued")
until [ -f "$work/requeued/checkpoints/step00000020/COMPLETE" ]; do sleep 1; done
scontrol requeue "$b"
[ "$(wait_done "$b")" = COMPLETED ] || { echo "FAIL: requeued job"; exit 1; }
log=$(ls /tubemae-tubemae-"$b".out "$work"/../tubemae-tubemae-"$b".out 2>/dev/null | head -n1 || true)
[ "$(losses "$work/straight")" = "$(losses "$work/requeued")" ] || { echo "FAIL: losses differ"; exit 1; }
echo "PASS: a requeued job resumed and logged the straight run's losses exactly"
[ -n "$log" ] && grep -c "attempt" "$log" | xargs echo "attempts in one appended log:"

# 2. the time limit: the job checkpoints on the signal and requeues itself
c=$(cd / && sbatch --parsable -n1 -c "$cpus" --time=2 --signal=B:USR1@75 \
      "$repo/launch/slurm.sbatch" "${common[@]}" train.steps=100000 "run.dir=$work/limited")
for _ in $(seq 300); do [ "$(scontrol show job "$c" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')" -ge 1 ] && break; sleep 1; done
scontrol show job "$c" | grep -q "Restarts=[1-9]" || { echo "FAIL: no requeue at the time limit"; exit 1; }
ls "$work/limited/checkpoints" | grep -q step || { echo "FAIL: no checkpoint at the limit"; exit 1; }
scancel "$c"
echo "PASS: at the time limit the job checkpointed and requeued itself"
