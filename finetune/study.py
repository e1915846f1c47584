"""`python -m finetune.study`: does pre-training pay? A label-efficiency study in one command.

    python -m finetune.study --set runs/ssl/data --encoder runs/ssl/pretrain/export \\
        --config launch/configs/finetune/synthetic_vivit.yaml --out runs/ssl/study \\
        [--ks 4 16 64 all] [--seeds 0 1 2] [--methods finetune linear knn] \\
        [--inits pretrained scratch untrained] [--budget-run runs/ssl/pretrain] [--jobs 2] \\
        [section.key=value ...]

For every k (labels per class; ``all`` = the whole train split) and seed, a k-shot copy of the
set is drawn (``python -m data.prep subset``; nested over k for a seed), and the pre-trained
encoder and a random one (scratch) are each fine-tuned (the recipe, run.seed = seed) and probed
on frozen features (``finetune.probe``: linear and kNN). Every fine-tune sees about
``--clips-per-epoch`` clips per epoch (``data.repeats`` scales with the subset), so small k gets
as many steps as large k. Works for any prepared set with splits (MedMNIST3D included).

``--inits``: ``pretrained`` (--encoder) and ``scratch`` (the fine-tuning model's own random
init, as VideoMAE's scratch baselines) by default; ``untrained`` adds the pre-training model at
step 0 in the encoder's geometry (its init scheme differs from the fine-tuning model's): the
control for what pre-training itself added.

``--budget-run``: the pre-training run's checkpoints are exported and probed at k =
``--budget-k`` for every seed beside step 0 (the run's own initial weights, rebuilt from its
config and seed: ``pretrain.export --initial``): probe accuracy (mean +- std over seeds) against
pre-training steps (``--budget-steps`` picks some of them).

``--jobs N`` runs N fine-tunes or probes at once, each in its own process with cores/N threads:
small models train faster two at a time on two cores than one at a time on both.

Writes OUT/results.md (mean +- std over seeds, per-seed values, gain and wins), OUT/results.json,
OUT/accuracy_vs_labels.png (one line per init and method), OUT/budget.md and budget.png with
--budget-run, and one TensorBoard folder OUT/tb (every fine-tune run, and the study's summary
scalars against labels per class). Finished runs (report.json present) are reused: an
interrupted study resumes.
"""
from __future__ import annotations

if __name__ == "__main__":      # before the heavy imports: a Ctrl-C now is one line too
    from pretrain.runtime.cli import stop_while_starting
    stop_while_starting("finetune.study")

import argparse
import os
import signal
import sys
from dataclasses import dataclass

from .study_plan import budget_jobs, budget_tags, plan_jobs
from .study_report import METHODS, accuracy, budget_rows, per_class_count, summarize, \
    write_budget, write_results
from .plot import link_tb
from .study_run import (StopSignal, claim_run_dir, config_for, init_for, load_report,
                        run_key, run_pool, subset_for)

INITS = ("pretrained", "scratch", "untrained")


@dataclass(frozen=True)
class StudySpec:
    """What a study is: the set, the encoder and recipe, the grid (ks x seeds x inits x methods),
    where it writes, how many runs at once, and the optional budget curve."""
    set: str
    encoder: str
    config: str
    out: str
    ks: tuple = ("4", "16", "64", "all")
    seeds: tuple = (0, 1, 2)
    methods: tuple = METHODS
    inits: tuple = ("pretrained", "scratch")
    clips_per_epoch: int = 256
    jobs: int = 1
    budget_run: str | None = None
    budget_k: str = "16"
    budget_steps: tuple = ()
    overrides: tuple = ()


def run_study(spec: StudySpec) -> tuple[str, str | None]:
    """Run (or resume) every planned run, then write the results (and the budget curve);
    returns (results markdown, budget markdown or None)."""
    from data.manifest import load_shard_set
    tags = None
    if spec.budget_run:       # checked before any run, so a missing step stops it at once
        ckpts = os.path.join(spec.budget_run, "checkpoints")
        finished = [t for t in os.listdir(ckpts) if os.path.isfile(
            os.path.join(ckpts, t, "COMPLETE"))] if os.path.isdir(ckpts) else []
        tags = budget_tags(finished, spec.budget_steps, ckpts)
    jobs = plan_jobs(spec)
    configs = {j.run_dir: config_for(spec, subset_for(spec, j.k, j.seed), j.run_dir,
                                     init_for(spec, j.init, j.seed), j.seed) for j in jobs}
    claim_all(configs)
    run_pool([(j.what, configs[j.run_dir]) for j in jobs
              if load_report(os.path.join(j.run_dir, "report.json")) is None], spec.jobs)
    rows = {}
    for j in jobs:
        report = load_report(os.path.join(j.run_dir, "report.json"))
        if report is None:       # a fine-tune stopped by a signal writes no report
            raise StopSignal(signal.SIGTERM)
        if j.what == "finetune":
            link_tb(j.run_dir, os.path.join(spec.out, "tb", f"k{j.k}", j.init, f"s{j.seed}"))
            rows.setdefault((j.k, "finetune", j.init), {})[j.seed] = accuracy(report, "finetune")
        else:
            for m in ("linear", "knn"):
                if m in spec.methods:
                    rows.setdefault((j.k, m, j.init), {})[j.seed] = accuracy(report, m)
    full = load_shard_set(spec.set, "train")
    results = write_results(spec, summarize(rows),
                            per_class_count(full.num_samples, full.num_classes))
    return results, (budget(spec, tags) if spec.budget_run else None)


def claim_all(configs: dict):
    """A finished run is reused only for the same encoder (by content), config and data; any
    other is moved aside and run again."""
    for run_dir, cfg in configs.items():
        moved = claim_run_dir(run_dir, run_key(cfg))
        if moved:
            print(f"finetune.study: {run_dir} was made with another encoder, config or data; "
                  f"moved to {moved} and run again", file=sys.stderr)


def budget(spec: StudySpec, tags: list[str]) -> str:
    """Probe accuracy of the pre-training run's checkpoints ``tags`` and of its initial weights
    (step 0, rebuilt from its config and seed) at k = budget_k for every seed."""
    from pretrain.export import main as export
    jobs = budget_jobs(spec, tags)
    configs, exported = {}, set()
    for tag, _, seed, probe_dir in jobs:
        enc = os.path.join(spec.out, "budget", tag, "export")
        # Exported again on every run of the study, never reused by its path: the probes that
        # take it are reused only when its bytes are the same (run_key hashes the init), so
        # another --budget-run, or a checkpoint written again, is probed again.
        if enc not in exported:
            which = ["--initial"] if tag == "initial" else ["--tag", tag]
            if export([spec.budget_run, *which, "--out", enc]) != 0:
                raise RuntimeError(f"exporting {tag} of {spec.budget_run} failed")
            exported.add(enc)
        configs[probe_dir] = config_for(spec, subset_for(spec, spec.budget_k, seed), probe_dir,
                                        enc, seed)
    claim_all(configs)
    run_pool([("probe", configs[j[3]]) for j in jobs
              if load_report(os.path.join(j[3], "report.json")) is None], spec.jobs)
    reports = {j[3]: load_report(os.path.join(j[3], "report.json")) for j in jobs}
    return write_budget(spec, budget_rows(jobs, reports, spec.seeds))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="prepared folder with train/val/test")
    ap.add_argument("--encoder", required=True, help="the pre-trained encoder (export folder, "
                                                     "official or HF VideoMAE)")
    ap.add_argument("--config", default="launch/configs/finetune/synthetic_vivit.yaml")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ks", nargs="+", default=["4", "16", "64", "all"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=INITS,
                    help="pretrained (--encoder), scratch (the fine-tuning model's random init), "
                         "untrained (the pre-training model's init at step 0, our exports only)")
    ap.add_argument("--clips-per-epoch", type=int, default=256,
                    help="data.repeats is set so each epoch sees about this many clips")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each in its own process with cores/jobs threads (small "
                         "models train faster two at a time than one on two threads)")
    ap.add_argument("--budget-run", help="a pre-training run: probe each of its checkpoints")
    ap.add_argument("--budget-k", default="16")
    ap.add_argument("--budget-steps", nargs="+", type=int,
                    help="probe only the checkpoints of these steps (default: every one)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    from pretrain.runtime.config import parse_args_with_overrides
    args = parse_args_with_overrides(ap, argv)
    if args.jobs < 1:
        ap.error(f"--jobs takes a positive count, not {args.jobs}")
    for k in args.ks:
        if k != "all" and not (k.isdigit() and int(k) > 0):
            ap.error(f"--ks takes positive integers or 'all', not {k!r}")
    spec = StudySpec(set=args.set, encoder=args.encoder, config=args.config, out=args.out,
                     ks=tuple(args.ks), seeds=tuple(args.seeds), methods=tuple(args.methods),
                     inits=tuple(args.inits), clips_per_epoch=args.clips_per_epoch,
                     jobs=args.jobs, budget_run=args.budget_run, budget_k=args.budget_k,
                     budget_steps=tuple(args.budget_steps or ()),
                     overrides=tuple(args.overrides))

    def body() -> int:
        results, budget_text = run_study(spec)
        print(results)
        if budget_text:
            print(budget_text)
        print(f"results: {os.path.join(spec.out, 'results.md')}; plot: "
              f"{os.path.join(spec.out, 'accuracy_vs_labels.png')}; TensorBoard: tensorboard "
              f"--logdir {os.path.join(spec.out, 'tb')}")
        return 0
    from pretrain.runtime.cli import run_command
    return run_command("finetune.study", body)


if __name__ == "__main__":
    raise SystemExit(main())
