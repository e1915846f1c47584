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

import argparse
import contextlib
import json
import math
import os
import sys

import numpy as np

from .plot import line_plot, link_tb

INITS = ("pretrained", "scratch", "untrained")
METHODS = ("finetune", "linear", "knn")
COLOURS = {"pretrained": (31, 119, 180), "scratch": (214, 39, 40), "untrained": (44, 160, 44)}
LABELS = {"pretrained": "pre-trained", "scratch": "scratch",
          "untrained": "untrained (pre-training's init)"}
DASH = {"finetune": 0, "linear": 1, "knn": 2}
BASES = {"scratch": "", "untrained": "_untrained"}   # baseline -> suffix of gain/wins keys


def _load(path: str) -> dict | None:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def accuracy(report: dict, method: str) -> float:
    if method == "finetune":
        return float(report["test"]["acc"])
    return float(report[method]["test"]["acc"])


def _step(tag: str) -> int:
    """A checkpoint tag's step: 'step00000200' -> 200."""
    return int("".join(c for c in tag if c.isdigit()) or 0)


def _worker_init(threads: int):
    import torch
    torch.set_num_threads(threads)


def _execute(what: str, cfg) -> None:
    """One fine-tune or probe run (in the study's process or a pool worker)."""
    from .probe import run_probe
    from .train import train
    if what == "probe":
        run_probe(cfg)
    elif train(cfg).get("stopped_by_signal"):
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts():
    """Within: SIGTERM raises KeyboardInterrupt in this (main) thread, as SIGINT does."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def per_class_count(shards: str) -> int:
    from data.manifest import load_shard_set
    s = load_shard_set(shards, "train")
    return int(math.ceil(s.num_samples / max(1, s.num_classes)))


class Study:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.rows: dict = {}     # (k, method, init) -> {seed: acc}

    def data_for(self, k: str, seed: int) -> str:
        if k == "all":
            return self.args.set
        from data.prep.subset import make_subset
        out = os.path.join(self.out, "data", f"k{k}_s{seed}")
        if not _load(os.path.join(out, "train", "manifest.json")):
            make_subset(self.args.set, out, int(k), seed)
        return out

    def config(self, shards: str, run_dir: str, init: str, seed: int, extra=()):
        from pretrain.config import load_config
        from .train import FinetuneConfig
        from data.manifest import load_shard_set
        n = load_shard_set(shards, "train").num_samples
        repeats = max(1, round(self.args.clips_per_epoch / max(1, n)))
        return load_config(self.args.config, [
            f"data.repeats={repeats}", *self.args.overrides, *extra, f"data.shards={shards}",
            f"run.dir={run_dir}", f"run.init={init}", f"run.seed={seed}"],
            schema=FinetuneConfig)

    def untrained_encoder(self, seed: int) -> str:
        """The pre-training model's encoder at step 0 (its own initialisation, seeded by
        ``seed``) in the geometry of --encoder: the control that tells what pre-training added
        beyond the init scheme (the fine-tuning models start new layers differently)."""
        from pretrain.export import export_encoder
        from pretrain.model import ModelConfig, initial_model
        out = os.path.join(self.out, "untrained", f"s{seed}")
        if os.path.isfile(os.path.join(out, "encoder.safetensors")):
            return out
        src = self.args.encoder
        meta = _load(os.path.join(src if os.path.isdir(src) else os.path.dirname(src),
                                  "encoder.json"))
        if not meta or meta.get("format") != "tubemae-encoder":
            raise ValueError(f"--inits untrained builds the pre-training model in the geometry "
                             f"of --encoder, read from its encoder.json; {src} has none (it "
                             f"works with our exports)")
        model = initial_model(ModelConfig(**meta["model"]), seed)
        export_encoder(model.state_dict(), model.cfg, out, {"untrained": True, "seed": seed,
                                                            "geometry_of": src})
        return out

    def jobs_for(self, k: str, seed: int) -> list[tuple]:
        """The runs of one (k, seed): (k, seed, init name, what, run dir, config), with ``what``
        'finetune' or 'probe' (one probe run gives linear and kNN)."""
        shards = self.data_for(k, seed)
        jobs = []
        for init_name in self.args.inits:
            init = {"pretrained": self.args.encoder, "scratch": "",
                    "untrained": self.untrained_encoder(seed) if init_name == "untrained"
                    else ""}[init_name]
            base = os.path.join(self.out, "runs", f"k{k}", init_name, f"s{seed}")
            whats = (["finetune"] if "finetune" in self.args.methods else []) + \
                (["probe"] if {"linear", "knn"} & set(self.args.methods) else [])
            for what in whats:
                run_dir = os.path.join(base, what)
                jobs.append((k, seed, init_name, what, run_dir,
                             self.config(shards, run_dir, init, seed)))
        return jobs

    def run(self, jobs: list[tuple]):
        """Run every job without a report (``--jobs`` at once), then read all the reports."""
        self._pool([(j[3], j[5]) for j in jobs
                    if _load(os.path.join(j[4], "report.json")) is None])
        for k, seed, init_name, what, run_dir, _ in jobs:
            report = _load(os.path.join(run_dir, "report.json"))
            if report is None:   # a fine-tune stopped by a signal writes no report
                raise KeyboardInterrupt
            if what == "finetune":
                link_tb(run_dir, os.path.join(self.out, "tb", f"k{k}", init_name,
                                                    f"s{seed}"))
                self.rows.setdefault((k, "finetune", init_name), {})[seed] = \
                    accuracy(report, "finetune")
            else:
                for m in ("linear", "knn"):
                    if m in self.args.methods:
                        self.rows.setdefault((k, m, init_name), {})[seed] = accuracy(report, m)

    def _pool(self, todo: list[tuple], fn=None):
        """Run (what, config) jobs through ``fn`` (default: fine-tune or probe), ``--jobs`` at
        once in spawned processes with cores/jobs threads each, or in this process. A SIGTERM
        or SIGINT to this process is passed on to the workers (a fine-tune checkpoints and
        stops; the same command resumes) and raises KeyboardInterrupt here."""
        fn = fn or _execute
        if self.args.jobs > 1 and len(todo) > 1:
            import concurrent.futures as cf
            import multiprocessing as mp
            threads = max(1, (os.cpu_count() or 1) // self.args.jobs)
            with cf.ProcessPoolExecutor(self.args.jobs, mp_context=mp.get_context("spawn"),
                                        initializer=_worker_init,
                                        initargs=(threads,)) as pool, _sigterm_interrupts():
                futures = []
                try:
                    futures = [pool.submit(fn, what, cfg) for what, cfg in todo]
                    for f in cf.as_completed(futures):
                        f.result()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    for proc in list((getattr(pool, "_processes", None) or {}).values()):
                        if proc.is_alive():
                            proc.terminate()
                    raise
        else:
            for what, cfg in todo:
                fn(what, cfg)

    def summary(self) -> dict:
        out = {}
        for (k, m, init), by_seed in self.rows.items():
            v = np.array([by_seed[s] for s in sorted(by_seed)])
            out.setdefault(m, {}).setdefault(k, {})[init] = {
                "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "seeds": {int(s): by_seed[s] for s in sorted(by_seed)}}
        for m in out:
            for k, row in out[m].items():
                for base, suffix in BASES.items():
                    if "pretrained" not in row or base not in row:
                        continue
                    a, b = row["pretrained"]["seeds"], row[base]["seeds"]
                    common = sorted(set(a) & set(b))
                    row["gain" + suffix] = float(np.mean([a[s] - b[s] for s in common]))
                    row["wins" + suffix] = f"{sum(a[s] > b[s] for s in common)}/{len(common)}"
        return out

    def write(self):
        s = self.summary()
        lines = [f"# Label efficiency: {self.args.set}", "",
                 f"pre-trained encoder `{self.args.encoder}` vs scratch (the fine-tuning "
                 f"model's own random init)" + (" and untrained (the pre-training model at step "
                                                "0)" if "untrained" in self.args.inits else "") +
                 f", seeds {self.args.seeds}; test accuracy, mean +- std over seeds.", ""]
        for m in METHODS:
            if m not in s:
                continue
            title = {"finetune": "Fine-tuning", "linear": "Linear probe (frozen)",
                     "knn": "kNN (frozen)"}[m]
            inits = self.args.inits
            bases = [b for b in BASES if b in inits]
            lines += [f"## {title}", "",
                      "| labels per class | " + " | ".join(LABELS[i] for i in inits) + " | " +
                      " | ".join(f"gain over {b} | wins over {b}" for b in bases) +
                      f" | per seed ({' / '.join(inits)}) |",
                      "|---|" + "---|" * (len(inits) + 2 * len(bases) + 1)]
            for k in self.args.ks:
                row = s[m].get(k)
                if not row:
                    continue
                cells = [f"{row[i]['mean']:.3f} +- {row[i]['std']:.3f}" if i in row else "-"
                         for i in inits]
                for b in bases:
                    cells += [f"{row.get('gain' + BASES[b], float('nan')):+.3f}",
                              row.get("wins" + BASES[b], "-")]
                cells.append(" ".join("/".join(
                    f"{row[i]['seeds'].get(sd, float('nan')):.3f}" if i in row else "-"
                    for i in inits) for sd in self.args.seeds))
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
            lines.append("")
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "results.md"), "w") as f:
            f.write("\n".join(lines))
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(s, f, indent=1)
        self.plot(s, os.path.join(self.out, "accuracy_vs_labels.png"))
        self.scalars(s)
        return "\n".join(lines)

    def plot(self, s: dict, path: str):
        ks = self.args.ks
        lines = [(COLOURS[init], DASH[m], [(i, s[m][k][init]["mean"], s[m][k][init]["std"])
                                          for i, k in enumerate(ks)
                                          if m in s and k in s[m] and init in s[m][k]])
                 for m in METHODS for init in self.args.inits]
        line_plot(path, [str(k) for k in ks], lines, "labels per class; test accuracy (0-1); "
                  "solid fine-tune, - - linear, .. kNN",
                  [(LABELS[i], COLOURS[i]) for i in self.args.inits])

    def scalars(self, s: dict):
        from torch.utils.tensorboard import SummaryWriter
        full = per_class_count(self.args.set)
        with SummaryWriter(os.path.join(self.out, "tb", "summary")) as tb:
            for m in s:
                for k, row in s[m].items():
                    step = full if k == "all" else int(k)
                    for init in self.args.inits:
                        if init in row:
                            tb.add_scalar(f"study/{m}/{init}", row[init]["mean"], step)

    def budget_tags(self) -> list[str]:
        """The finished checkpoints of --budget-run to probe (--budget-steps, or all): checked
        before the study runs, so a missing step stops it at once."""
        ckpts = os.path.join(self.args.budget_run, "checkpoints")
        tags = sorted((t for t in os.listdir(ckpts) if os.path.isfile(
            os.path.join(ckpts, t, "COMPLETE"))), key=_step) if os.path.isdir(ckpts) else []
        if not tags:
            raise FileNotFoundError(f"{ckpts} holds no finished checkpoints to probe")
        if self.args.budget_steps:
            by_step = {_step(t): t for t in tags}
            missing = [n for n in self.args.budget_steps if n not in by_step]
            if missing:
                raise FileNotFoundError(
                    f"{ckpts} has no finished checkpoint at step(s) {missing}; it has "
                    f"{sorted(by_step)} (train.ckpt_every and train.keep_last decide which)")
            tags = [by_step[n] for n in sorted(set(self.args.budget_steps))]
        return tags

    def budget(self, tags: list[str]) -> str:
        """Probe accuracy of the pre-training run's checkpoints ``tags`` and of its initial
        weights (step 0, rebuilt from its config and seed) at k = --budget-k for every seed:
        the mean +- std over seeds against steps."""
        from pretrain.export import main as export
        jobs, steps = [], []
        for tag in ["initial", *tags]:
            enc = os.path.join(self.out, "budget", tag, "export")
            if not os.path.isfile(os.path.join(enc, "encoder.safetensors")):
                which = ["--initial"] if tag == "initial" else ["--tag", tag]
                if export([self.args.budget_run, *which, "--out", enc]) != 0:
                    raise RuntimeError(f"exporting {tag} of {self.args.budget_run} failed")
            steps.append(0 if tag == "initial" else _step(tag))
            for seed in self.args.seeds:
                run_dir = os.path.join(self.out, "budget", tag, f"s{seed}", "probe")
                jobs.append((steps[-1], seed, run_dir, self.config(
                    self.data_for(self.args.budget_k, seed), run_dir, enc, seed)))
        self._pool([("probe", j[3]) for j in jobs
                    if _load(os.path.join(j[2], "report.json")) is None])
        rows = []
        for step in steps:
            reports = [_load(os.path.join(j[2], "report.json")) for j in jobs if j[0] == step]
            row = {"step": step, "seeds": self.args.seeds}
            for m in ("linear", "knn"):
                v = np.array([accuracy(r, m) for r in reports])
                row[m] = float(v.mean())
                row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                row[f"{m}_per_seed"] = [float(a) for a in v]
            rows.append(row)
        lines = [f"# Probe accuracy vs pre-training steps ({self.args.budget_run}, "
                 f"k = {self.args.budget_k}, seeds {self.args.seeds}; step 0: the run's "
                 f"initial weights)", "",
                 "| pre-training steps | linear probe | kNN | linear per seed |",
                 "|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['linear']:.3f} +- {r['linear_std']:.3f} | "
                  f"{r['knn']:.3f} +- {r['knn_std']:.3f} | "
                  f"{' '.join(f'{a:.3f}' for a in r['linear_per_seed'])} |" for r in rows]
        text = "\n".join(lines) + "\n"
        with open(os.path.join(self.out, "budget.md"), "w") as f:
            f.write(text)
        with open(os.path.join(self.out, "budget.json"), "w") as f:
            json.dump(rows, f, indent=1)
        line_plot(os.path.join(self.out, "budget.png"), [str(r["step"]) for r in rows],
                  [(COLOURS["pretrained"], DASH[m], [(i, r[m], r[f"{m}_std"])
                                                     for i, r in enumerate(rows)])
                   for m in ("linear", "knn")],
                  f"pre-training steps (0: initial weights); test accuracy at k = "
                  f"{self.args.budget_k}; - - linear, .. kNN", [])
        return text


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
    from pretrain.config import parse_args_with_overrides
    args = parse_args_with_overrides(ap, argv)
    if args.jobs < 1:
        ap.error(f"--jobs takes a positive count, not {args.jobs}")
    for k in args.ks:
        if k != "all" and not (k.isdigit() and int(k) > 0):
            ap.error(f"--ks takes positive integers or 'all', not {k!r}")
    from data.manifest import DataSetError
    from pretrain.config import ConfigError
    study = Study(args)
    try:
        tags = study.budget_tags() if args.budget_run else []
        study.run([job for k in args.ks for seed in args.seeds
                   for job in study.jobs_for(k, seed)])
        print(study.write())
        if args.budget_run:
            print(study.budget(tags))
    except (ConfigError, DataSetError, FileNotFoundError, ValueError) as e:
        print(f"finetune.study: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finetune.study: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    print(f"results: {os.path.join(args.out, 'results.md')}; plot: "
          f"{os.path.join(args.out, 'accuracy_vs_labels.png')}; TensorBoard: tensorboard "
          f"--logdir {os.path.join(args.out, 'tb')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
