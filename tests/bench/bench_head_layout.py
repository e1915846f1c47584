"""The fine-tuning head layouts on the quick start's label-efficiency layout, over seeds: today's
default (norm on the tokens, pool, fc_norm; a BatchNorm before the head) against the official
VideoMAE fine-tuning layout that transformers' VideoMAEForVideoClassification holds (pool, then
one LayerNorm: ``model.norm_layout=pooled model.head_norm=layer``).

For each seed: the quick start's set (a pool of 2,000 unlabelled clips, 64 labelled clips per
class, 400 test clips), 300 pre-training steps on the pool, then ``finetune.study`` at 16
labels per class (12 epochs of 256 clips) from that encoder with each layout. Prints a table
and one JSON line; ``--out`` keeps the runs.

    python tests/bench/bench_head_layout.py --seeds 0 1 2 --precision bf16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.bench.report import add_results_arg  # noqa: E402

LAYOUTS = {"default (tokens, batch)": [],
           "pooled, layer (HF-exportable)": ["model.norm_layout=pooled", "model.head_norm=layer"]}


def one_seed(root: str, seed: int, precision: str) -> dict:
    from pathlib import Path

    from finetune.study import main as study
    from tests.finetune.test_learning import quick_start_encoder
    data, encoder = quick_start_encoder(Path(root), precision, seed, data_name=f"data{seed}",
                                        pre_name=f"pre{seed}_{precision}")
    out = {}
    for i, (name, overrides) in enumerate(LAYOUTS.items()):
        where = os.path.join(root, f"study{seed}_{precision}_{i}")
        assert study(["--set", data, "--encoder", encoder, "--ks", "16", "--seeds", str(seed),
                      "--jobs", "2", "--out", where, "--methods", "finetune",
                      "--inits", "pretrained", "--clips-per-epoch", "256",
                      f"runtime.precision={precision}", *overrides]) == 0
        res = json.load(open(os.path.join(where, "results.json")))
        out[name] = res["finetune"]["16"]["pretrained"]["mean"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", help="keep the sets and runs here (default: a temporary folder)")
    add_results_arg(ap)
    args = ap.parse_args(argv)
    root = args.out or tempfile.mkdtemp(prefix="head_layout_")
    t0 = time.time()
    rows = {s: one_seed(root, s, args.precision) for s in args.seeds}
    print(f"\ntest accuracy at 16 labels per class, {args.precision}, seeds {args.seeds}")
    print(f"{'layout':<32} " + " ".join(f"seed {s:<3}" for s in args.seeds) + "   mean")
    summary = {}
    for name in LAYOUTS:
        accs = [rows[s][name] for s in args.seeds]
        summary[name] = accs
        print(f"{name:<32} " + " ".join(f"{a:8.3f}" for a in accs) +
              f"   {sum(accs) / len(accs):.3f}")
    from tests.bench.report import Tables
    tables = Tables("head_layout", args.results)
    tables.add("head_layout", f"Test accuracy at 16 labels per class of the fine-tuning head "
               f"layouts, one 300-step encoder per seed, {args.precision}",
               ["layout", *[f"seed {s}" for s in args.seeds], "mean"],
               [[name, *accs, round(sum(accs) / len(accs), 3)] for name, accs in summary.items()])
    tables.save()
    print(json.dumps({"bench": "head_layout", "precision": args.precision, "seeds": args.seeds,
                      "accuracy": summary, "wall_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
