"""How much memory a batch needs, against what this process may use, checked before a run: a
batch that cannot fit is refused in one line instead of growing a loader worker until the
OOM killer ends it."""
from __future__ import annotations

import resource


def memory_available() -> tuple[int, str]:
    """(bytes this process may still take, where that limit comes from): the least of the
    kernel's MemAvailable, the cgroup's memory.max less its current use (a container, a SLURM
    job) and the address-space limit (``ulimit -v``, ``prlimit --as``)."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap.isdigit():
            with open("/sys/fs/cgroup/memory.current") as f:
                used = int(f.read().strip())
            limits.append((max(0, int(cap) - used), "the cgroup's memory.max"))
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1):
        mapped = 0
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        mapped = int(line.split()[1]) * 1024
        except OSError:
            pass
        limits.append((max(0, soft - mapped), "the address-space limit (ulimit -v) less what "
                                              "this process has mapped"))
    return min(limits) if limits else (1 << 62, "no limit found")


def batch_bytes(batch_size: int, channels: int, frames: int, side: int) -> int:
    """The least a training batch takes: its clips (B, C, T, S, S) as the loader's uint8, the
    trainer's copy of them and the model's float32 input (1 + 1 + 4 bytes a value)."""
    return batch_size * channels * frames * side * side * 6


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_batch_memory(cfg, channels: int, available: tuple[int, str] | None = None):
    """Refuse ``data.batch_size`` when one batch alone needs more memory than is available
    (``memory_available``), naming both figures and the batch size that would fit."""
    side = cfg.size or 224
    need = batch_bytes(cfg.batch_size, channels, cfg.num_frames, side)
    free, where = available or memory_available()
    if need > free:
        fits = max(1, free // batch_bytes(1, channels, cfg.num_frames, side))
        raise ValueError(
            f"data.batch_size={cfg.batch_size} needs at least {gib(need)} for one batch "
            f"({channels} x {cfg.num_frames} x {side} x {side} clips, as uint8 and float32), "
            f"more than the {gib(free)} of memory available ({where}); use a smaller "
            f"data.batch_size (about {fits} at most here), with runtime.grad_accum for "
            f"a larger effective batch")
