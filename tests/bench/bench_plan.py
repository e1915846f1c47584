"""Planning the data order at cluster size: 64 nodes x 8 GPUs x 10 loader workers (5,120
partitions) over 240,000 samples in 2,000 shards of uneven size, the run moved from 512 to 384
to 640 processes mid-epoch (``tests/data/test_plan_scale.py`` checks the same plan).

Prints a table and one JSON line:
- how long one loader worker takes to plan its first epoch (the deal of the units, its
  partitions' order, the positions it reads), and all 5,120 workers' planning in sequence;
- balance: samples per partition in an epoch (max/min), with this deal (greedy by samples, in
  a seeded random order) and with dealing the shuffled units round-robin, at 5,120 partitions
  and at 640 (64 nodes x 10 workers); every process reads the same samples per step.

    python tests/bench/bench_plan.py
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.bench.report import Tables, add_results_arg  # noqa: E402
from data.plan import PartitionOrders, plan_units, worker_positions  # noqa: E402
from tests.data.test_plan_scale import CANON, LAYOUTS, WORKERS, kinetics_counts  # noqa: E402


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_arg(ap)
    args = ap.parse_args(argv)
    counts = kinetics_counts(0)
    t0 = time.perf_counter()
    units = plan_units(counts, CANON.partitions)
    orders = PartitionOrders(units, CANON.partitions, 0, 256)
    orders.units_of(0, 0)
    deal_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pos = worker_positions(CANON, LAYOUTS[0], orders, 0, 0, 0, 0)
    one_worker_s = deal_s + time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in range(CANON.partitions):
        r, w = divmod(p, WORKERS)
        worker_positions(CANON, LAYOUTS[0], orders, p, 0, r, w)
    all_workers_s = deal_s + time.perf_counter() - t0
    balance = {}
    for partitions in (CANON.partitions, 640):     # 64 nodes x 10 workers: ~3 shards each
        us = plan_units(counts, partitions)
        greedy = np.array([PartitionOrders(us, partitions, 0, 256).length(p, 0)
                           for p in range(partitions)])
        rr = np.zeros(partitions, int)
        for i, u in enumerate(np.random.default_rng([0, 0, 7919]).permutation(len(us))):
            rr[i % partitions] += us[u].count
        balance[f"{partitions} partitions: greedy"] = round(float(greedy.max() / greedy.min()), 3)
        balance[f"{partitions} partitions: round-robin"] = round(float(rr.max() / rr.min()), 3)
    row = {"partitions": CANON.partitions, "shards": len(counts), "samples": int(sum(counts)),
           "units": len(units), "plan_one_worker_s": round(one_worker_s, 3),
           "plan_all_workers_s": round(all_workers_s, 2),
           "epoch_samples_per_partition_max_min": balance,
           "samples_per_process_per_step": {f"{lay.ranks} processes": lay.batch
                                            for lay in LAYOUTS}}
    flat = [(k + ("" if kk is None else " " + kk), vv) for k, v in row.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])]
    print(f"{'what':<64} {'value':>10}")
    for k, v in flat:
        print(f"{k:<64} {str(v):>10}")
    tables = Tables("plan", args.results, argv=None if argv is None else [__file__, *argv])
    tables.add("plan", f"The data plan at {CANON.partitions} partitions over {len(counts):,} "
               f"uneven shards ({int(sum(counts)):,} samples): planning time, balance of the "
               f"greedy deal against round-robin", ["what", "value"], flat)
    tables.save()
    print(json.dumps(row))


if __name__ == "__main__":
    main()
