"""Process-group set-up from the environment that torchrun, the deepspeed launcher and SLURM
scripts provide (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain
``python -m ...`` is a world of one and needs no process group."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def where(self) -> str:
        """The device as a run's start line names it. On a CPU with the thread count: it sets
        the order in which sums are taken, so the same run with another OMP_NUM_THREADS gives
        other numbers (with the same count it repeats exactly)."""
        if self.device.type == "cpu":
            return f"cpu, {torch.get_num_threads()} thread(s)"
        return self.device.type


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("runtime.device=cuda but torch sees no CUDA device here; use "
                             "runtime.device=auto or cpu (or check CUDA_VISIBLE_DEVICES)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", comm_timeout: float = 600.0) -> Dist:
    """The process group of the processes a launcher started (none for one process). A
    collective that waits longer than ``comm_timeout`` seconds for a process (lost with its
    node, or hung) fails on the others: gloo's own timeout; NCCL's watchdog with asynchronous
    error handling, which aborts the communicator instead of leaving the GPUs spinning."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        bound = timedelta(seconds=comm_timeout)
        # groups made later without a timeout of their own (DeepSpeed's copy of the world
        # group, ours for host values) take torch's default, 30 minutes: the same bound there
        c10d = dist.distributed_c10d
        c10d.default_pg_timeout = bound
        if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), timedelta):
            c10d.default_pg_nccl_timeout = bound
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=bound)
    return Dist(rank, world, local, dev)


class LostProcess(RuntimeError):
    """Another process of the run is gone (its node lost, killed) or hung: the collectives
    failed. The message names it, the last complete checkpoint and how to resume."""


def is_comm_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because a peer is gone or silent."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "Connection reset", "Connection closed", "connection closed", "Broken pipe",
        "Timed out waiting", "NCCL communicator was aborted", "Watchdog caught collective",
        "ProcessGroupGloo", "gloo/transport", "Connection refused"))


ALIVE = "tubemae/alive-after-a-failed-collective/"


def lost_ranks(d: Dist, wait: float = 5.0) -> list[int] | None:
    """After a failed collective, the ranks that did not answer through the launcher's store
    within ``wait`` seconds (gone or hung), or None when the store itself is gone (it lives
    with node 0's launcher)."""
    import time
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=wait))
        store.set(f"{ALIVE}{d.rank}", "1")
        deadline = time.monotonic() + wait
        while True:
            answered = [r for r in range(d.world_size) if store.check([f"{ALIVE}{r}"])]
            if len(answered) == d.world_size or time.monotonic() > deadline:
                return [r for r in range(d.world_size) if r not in answered]
            time.sleep(0.2)
    except Exception:
        return None


def describe_ranks(ranks: list[int] | None) -> str:
    """'rank 1 (node 1)': the node from the launcher's processes per node."""
    if ranks is None:
        return "node 0 (its launcher holds the run's store, which no longer answers)"
    if not ranks:
        return "no process (every rank answered; the collective failed on the network)"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 0) or 0)
    parts = []
    for r in ranks:
        parts.append(f"rank {r}" + (f" (node {r // per_node})" if per_node else ""))
    return ", ".join(parts)


_CONTROL = {}


def _control_group():
    """A gloo group for the loop's small host-side values (flags, logged scalars): reducing
    them over NCCL would need device tensors and make the host wait for the device."""
    if dist.get_backend() == "gloo":
        return None  # the default group already is one
    if "group" not in _CONTROL:
        _CONTROL["group"] = dist.new_group(backend="gloo")
    return _CONTROL["group"]


def barrier(d: Dist):
    if d.world_size > 1:
        dist.barrier(group=_control_group())


def all_reduce_max(values: list[float], d: Dist) -> list[float]:
    """Element-wise max over ranks (flags: any rank set it)."""
    if d.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return t.tolist()


def all_reduce_mean(value: float, d: Dist) -> float:
    if d.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=_control_group())
    return t.item() / d.world_size


def all_gather_objects(obj, d: Dist) -> list:
    if d.world_size == 1:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj, group=_control_group())
    return out


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
        # DeepSpeed keeps a clone of the world group, stale once that group is destroyed: a
        # later DeepSpeed run in this process (a study's runs, the tests) failed to broadcast
        ds_groups = sys.modules.get("deepspeed.utils.groups")
        if ds_groups is not None:
            ds_groups._WORLD_GROUP = None
            ds_groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None
    _CONTROL.clear()
