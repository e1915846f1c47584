"""The training order as a pure plan: which worker reads which samples, in which order, and the
seed of every clip, as functions of (seed, epoch, rank, worker) and the shard counts alone,
computed before any byte is read. This is why a stream resumes exactly: a worker can restart at
any position of its planned order (``data/stream.py`` keeps the positions)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Unit:
    """What one worker reads: every ``parts``-th sample of a shard starting at ``part``."""
    shard: int
    part: int
    parts: int
    count: int


def plan_units(counts: list[int], total_workers: int) -> list[Unit]:
    """Cut shards into units so that there are at least as many units as workers.

    With enough shards a unit is a whole shard; with fewer, each shard is split by sample
    number, and each worker reads the whole tar but keeps only its part.
    """
    parts = max(1, math.ceil(total_workers / max(len(counts), 1)))
    return [Unit(s, p, parts, len(range(p, n, parts)))
            for s, n in enumerate(counts) for p in range(parts)]


def worker_units(units: list[Unit], epoch: int, seed: int, worker: int, total: int,
                 shuffle: bool) -> list[Unit]:
    """The units global worker ``worker`` of ``total`` reads in ``epoch``, in reading order."""
    order = (np.random.default_rng([seed, epoch, 7919]).permutation(len(units)) if shuffle
             else np.arange(len(units)))
    return [units[i] for i in order[worker::total]]


def buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order (a permutation of 0..n-1) of a shuffle buffer of ``size`` fed 0..n-1.

    The buffer fills up, then each new item replaces a random slot whose item is emitted; at the
    end the rest comes out in random order. Only positions are shuffled, never bytes.
    """
    if size <= 1 or n <= 1:
        return np.arange(n)
    fill = min(size, n)
    buf = list(range(fill))
    draws = rng.integers(0, fill, max(n - fill, 0))
    out = np.empty(n, np.int64)
    for k, item in enumerate(range(fill, n)):
        j = draws[k]
        out[k] = buf[j]
        buf[j] = item
    tail = rng.permutation(fill)
    out[n - fill:] = np.asarray(buf)[tail]
    return out


def clip_seed(seed: int, epoch: int, shard: int, member: int, repeat: int) -> list[int]:
    """The seed of one clip: its crop and mask do not depend on which worker made it."""
    return [seed, epoch, shard, member, repeat]


def first_sample_numbers(counts: list[int]) -> np.ndarray:
    """Global number of each shard's first sample (manifest order), from the shards' counts."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(int)
