"""The data plan at a size no machine here can run: 64 nodes x 8 GPUs x 10 loader workers over
Kinetics-sized metadata (240,000 samples in 2,000 shards of uneven size). The plan is pure, so
the workers' own computation (``worker_positions``, what each loader worker reads) is checked
for every worker: every sample once per epoch, with the run moved mid-epoch from 512 to 384 to
640 processes. Planning times: ``python tests/bench/bench_plan.py``."""
from __future__ import annotations

import numpy as np

from data.plan import Canon, Layout, PartitionOrders, first_sample_numbers, plan_units, \
    worker_positions

SHARDS, SAMPLES, WORKERS = 2000, 240_000, 10
# 7,680 samples a step: 15 per process on 512, 20 on 384, 12 on 640
CANON = Canon(ranks=512, workers=WORKERS, chunk=15, accum=1)
LAYOUTS = [Layout(512, 1, 15, WORKERS), Layout(384, 1, 20, WORKERS), Layout(640, 1, 12, WORKERS)]
CHANGES = [0, 10, 20]         # the step each layout takes over at


def kinetics_counts(seed: int = 0) -> list[int]:
    """2,000 shard sizes between about 60 and 180 samples, 240,000 in all."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(60, 181, SHARDS)
    counts = np.floor(counts * SAMPLES / counts.sum()).astype(int)
    counts[: SAMPLES - counts.sum()] += 1
    assert counts.sum() == SAMPLES
    return counts.tolist()


def plan(seed: int = 0):
    counts = kinetics_counts(seed)
    units = plan_units(counts, CANON.partitions)
    return counts, units, PartitionOrders(units, CANON.partitions, seed, 256)


def epoch_owners(orders: PartitionOrders):
    """Every (partition, index) of each partition's first epoch, its global slot, and the
    layout, rank and micro-batch that reads it when the run changes layout at CHANGES."""
    lengths = np.array([orders.length(p, 0) for p in range(CANON.partitions)])
    parts = np.repeat(np.arange(CANON.partitions), lengths)
    ks = np.concatenate([np.arange(n) for n in lengths])
    slots = np.concatenate([CANON.slot(p, np.arange(n)) for p, n in enumerate(lengths)])
    step = slots // CANON.step_samples
    which = np.searchsorted(CHANGES, step, side="right") - 1
    rank, micro = np.empty_like(slots), np.empty_like(slots)
    for i, layout in enumerate(LAYOUTS):
        sel = which == i
        rank[sel], micro[sel] = layout.owner(slots[sel])
    return lengths, parts, ks, slots, which, rank, micro


def test_every_worker_of_512_384_and_640_ranks_reads_each_sample_once_per_epoch():
    counts, units, orders = plan()
    lengths, parts, ks, slots, which, rank, micro = epoch_owners(orders)
    # the canonical order: one slot per (partition, index), distinct
    assert len(np.unique(slots)) == len(slots) == SAMPLES
    p_back, k_back = CANON.locate(slots)
    assert np.array_equal(p_back, parts) and np.array_equal(k_back, ks)
    # each worker's own computation, for every worker that reads in each layout's stretch
    first = first_sample_numbers(counts)
    seen = []
    for i, layout in enumerate(LAYOUTS):
        v_from = CHANGES[i] * layout.accum
        v_to = CHANGES[i + 1] * layout.accum if i + 1 < len(CHANGES) else None
        sel = which == i
        groups = np.unique(np.stack([parts[sel], rank[sel], micro[sel] % WORKERS]), axis=1)
        for p, r, w in groups.T.tolist():
            pos = worker_positions(CANON, layout, orders, p, 0, r, w, v_from, v_to)
            us = orders.units_of(p, 0)
            ends = np.cumsum([u.count for u in us])
            at = np.searchsorted(ends, pos, side="right")
            before = np.concatenate([[0], ends])[at]
            shard = np.array([us[a].shard for a in at])
            part = np.array([us[a].part for a in at])
            parts_of = np.array([us[a].parts for a in at])
            member = (pos - before) * parts_of + part
            seen.append(first[shard] + member)
    seen = np.concatenate(seen)
    assert len(seen) == SAMPLES and np.array_equal(np.sort(seen), np.arange(SAMPLES))
    # in every step each process of each layout reads its batch, no more, no less
    for layout in LAYOUTS:
        z = np.arange(3 * CANON.step_samples)
        r, v = layout.owner(z)
        per = np.bincount((v // layout.accum) * layout.ranks + r)
        assert per.min() == per.max() == layout.batch * layout.accum
    # the partitions' epochs are within one unit of each other (sampling fairness)
    biggest_unit = max(u.count for u in units)
    assert lengths.max() - lengths.min() <= biggest_unit
