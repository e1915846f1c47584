"""The training order as a pure plan: which samples each step holds, which loader worker reads
them, in which order, and the seed of every clip, as functions of the seed, the run's
canonical layout, the layout reading it now and the shard counts alone, computed before any
byte is read. This is why a stream resumes exactly, on the same or another number of processes
and workers: a worker can start at any step (``data/stream.py`` keeps the count of samples
consumed)."""
from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass

import numpy as np


class LayoutError(ValueError):
    """A run cannot be read with this number of processes, batch or accumulation."""


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


def deal(units: list[Unit], epoch: int, seed: int, partitions: int,
         shuffle: bool) -> list[list[int]]:
    """The units (their indices) each partition reads in ``epoch``, in reading order: the
    units in a seeded random order (a new one each epoch), each given to the partition holding
    the fewest samples so far (ties: the fewest units, then the lowest number). Partitions end within one unit's
    samples of each other, however uneven the shards; a partition's samples are read as often
    as any other's only if the partitions are about equal, so balance is sampling fairness.
    Every partition gets a unit when there are at least as many units as partitions."""
    order = (np.random.default_rng([seed, epoch, 7919]).permutation(len(units)) if shuffle
             else np.arange(len(units)))
    out: list[list[int]] = [[] for _ in range(partitions)]
    heap = [(0, 0, p) for p in range(partitions)]     # (samples, units, partition)
    for i in order.tolist():
        load, n, p = heapq.heappop(heap)
        out[p].append(i)
        heapq.heappush(heap, (load + units[i].count, n + 1, p))
    return out


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


# -- The run's global order, whatever the number of processes and loader workers -------------
#
# A run fixes its canonical layout when it starts (``Canon``): its processes x loader workers
# are its *partitions*, each an endless sequence of sample positions (epoch after epoch: the
# units dealt to it, read through its shuffle buffer, exactly as one loader worker reads). The
# run's sample *slots* are numbered globally: micro-batch unit u takes ``chunk`` samples from
# each of the partitions (r, u mod workers), r = 0..ranks-1. An optimizer step is ``accum``
# units. Whatever layout reads the run later (``Layout``: another number of processes, workers,
# per-process batch or accumulation, with the same samples per step), rank r's micro-batch i of
# step t takes the slots t*G + (i*ranks + r)*batch ..., so every step holds the same samples.


@dataclass(frozen=True)
class Canon:
    """The layout a run started with; it defines the run's sample order for good."""
    ranks: int
    workers: int
    chunk: int     # samples each partition gives to one micro-batch unit
    accum: int

    @property
    def partitions(self) -> int:
        return self.ranks * self.workers

    @property
    def step_samples(self) -> int:
        return self.ranks * self.chunk * self.accum

    def locate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global slots -> (partition, index in that partition's endless sequence)."""
        unit_size = self.ranks * self.chunk
        u, rest = np.divmod(np.asarray(z, np.int64), unit_size)
        r, off = np.divmod(rest, self.chunk)
        c, lw = np.divmod(u, self.workers)
        return r * self.workers + lw, c * self.chunk + off

    def slot(self, p: int, k: np.ndarray) -> np.ndarray:
        """The inverse of ``locate`` for partition ``p``: its indices -> global slots."""
        r, lw = divmod(p, self.workers)
        c, off = np.divmod(np.asarray(k, np.int64), self.chunk)
        return (c * self.workers + lw) * (self.ranks * self.chunk) + r * self.chunk + off

    def consumed(self, samples: int) -> np.ndarray:
        """How many of each partition's samples the first ``samples`` slots hold."""
        unit_size = self.ranks * self.chunk
        whole, rem = divmod(samples, unit_size)
        p = np.arange(self.partitions)
        r, lw = np.divmod(p, self.workers)
        units = np.where(whole > lw, (whole - lw + self.workers - 1) // self.workers, 0)
        part = np.where(whole % self.workers == lw, np.clip(rem - r * self.chunk, 0, self.chunk), 0)
        return units * self.chunk + part

    def as_dict(self) -> dict:
        return {"ranks": self.ranks, "workers": self.workers, "chunk": self.chunk,
                "accum": self.accum}


@dataclass(frozen=True)
class Layout:
    """How the run is read now: processes, micro-batches per step, samples per micro-batch
    (per process) and loader workers per process."""
    ranks: int
    accum: int
    batch: int
    workers: int

    @property
    def step_samples(self) -> int:
        return self.ranks * self.accum * self.batch

    def slots(self, v: int, rank: int) -> np.ndarray:
        """The global slots of micro-batch ``v`` (counted from the run's start) of ``rank``."""
        t, i = divmod(v, self.accum)
        start = t * self.step_samples + (i * self.ranks + rank) * self.batch
        return np.arange(start, start + self.batch, dtype=np.int64)

    def owner(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global slots -> (rank, micro-batch number) that reads them."""
        t, y = np.divmod(np.asarray(z, np.int64), self.step_samples)
        i, r = np.divmod(y // self.batch, self.ranks)
        return r, t * self.accum + i


class PartitionOrders:
    """Each partition's endless sequence: epoch e deals the shuffled units to the partitions
    (``deal``) and reads each partition's through its shuffle buffer
    (``buffer_order``). Cached per epoch; the same for every process that asks."""

    def __init__(self, units: list[Unit], partitions: int, seed: int, buffer: int):
        self.units, self.partitions, self.seed, self.buffer = units, partitions, seed, buffer
        self._deals: dict = {}
        self._orders: dict = {}
        self._ends: dict = {}
        self._starts: dict = {}

    def units_of(self, p: int, epoch: int) -> list[Unit]:
        if epoch not in self._deals:
            if len(self._deals) > 4:
                self._deals.clear()
            self._deals[epoch] = deal(self.units, epoch, self.seed, self.partitions,
                                      self.buffer > 1)
        return [self.units[i] for i in self._deals[epoch][p]]

    def length(self, p: int, epoch: int) -> int:
        return sum(u.count for u in self.units_of(p, epoch))

    def order(self, p: int, epoch: int) -> np.ndarray:
        """Epoch ``epoch`` of partition ``p``: positions in its units, in the order read."""
        key = (p, epoch)
        if key not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            self._orders[key] = buffer_order(
                self.length(p, epoch), self.buffer,
                np.random.default_rng([self.seed, epoch, p, 104729]))
        return self._orders[key]

    def ends(self, p: int, epoch: int) -> np.ndarray:
        """Where each of partition ``p``'s units of epoch ``epoch`` ends, in positions."""
        key = (p, epoch)
        if key not in self._ends:
            if len(self._ends) > 64:
                self._ends.clear()
            self._ends[key] = np.cumsum([u.count for u in self.units_of(p, epoch)]).astype(int)
        return self._ends[key]

    def shard_at(self, p: int, epoch: int, pos: int) -> int:
        """The shard that holds position ``pos`` of partition ``p``'s epoch ``epoch``."""
        at = int(np.searchsorted(self.ends(p, epoch), pos, side="right"))
        return self.units_of(p, epoch)[at].shard

    def start(self, p: int, epoch: int) -> int:
        """Where epoch ``epoch`` of partition ``p`` starts in its endless sequence."""
        starts = self._starts.setdefault(p, [0])
        while len(starts) <= epoch:
            starts.append(starts[-1] + self.length(p, len(starts) - 1))
        return starts[epoch]

    def where(self, p: int, k: int) -> tuple[int, int, int]:
        """Index ``k`` of partition ``p``'s endless sequence -> (epoch, index in that epoch,
        where that epoch starts)."""
        starts = self._starts.setdefault(p, [0])
        while starts[-1] <= k:
            n = self.length(p, len(starts) - 1)
            if n == 0:
                raise ValueError(f"partition {p} holds no samples")
            starts.append(starts[-1] + n)
        epoch = bisect.bisect_right(starts, k) - 1
        return epoch, k - starts[epoch], starts[epoch]

    def epochs_done(self, p: int, k: int) -> float:
        """Epochs partition ``p`` has completed after ``k`` of its samples, as a fraction."""
        epoch, j, start = self.where(p, k)
        return epoch + j / self.length(p, epoch)


def worker_positions(canon: Canon, layout: Layout, orders: PartitionOrders, p: int, epoch: int,
                     rank: int, worker: int, v_from: int = 0,
                     v_to: int | None = None) -> np.ndarray:
    """The positions of partition ``p``'s epoch ``epoch`` that loader worker ``worker`` of
    ``rank`` reads under ``layout`` in its micro-batches ``v_from`` to ``v_to`` (worker w
    makes the micro-batches v with v mod workers == w), in the order it takes them."""
    order = orders.order(p, epoch)
    r, v = layout.owner(canon.slot(p, orders.start(p, epoch) + np.arange(len(order))))
    take = (r == rank) & (v % layout.workers == worker) & (v >= v_from)
    if v_to is not None:
        take &= v < v_to
    return order[take]
