"""`python -m finetune.study`: does pre-training pay? A label-efficiency study in one command.

    python -m finetune.study --set runs/ssl/data --encoder runs/ssl/pretrain/export \\
        --config launch/configs/finetune/synthetic_vivit.yaml --out runs/ssl/study \\
        [--ks 4 16 64 all] [--seeds 0 1 2] [--methods finetune linear knn] \\
        [--budget-run runs/ssl/pretrain] [section.key=value ...]

For every k (labels per class; ``all`` = the whole train split) and seed, a k-shot copy of the
set is drawn (``python -m data.prep subset``; nested over k for a seed), and the pre-trained
encoder and a random one (scratch) are each fine-tuned (the recipe, run.seed = seed) and probed
on frozen features (``finetune.probe``: linear and kNN). Every fine-tune sees about
``--clips-per-epoch`` clips per epoch (``data.repeats`` scales with the subset), so small k gets
as many steps as large k. Works for any prepared set with splits (MedMNIST3D included).

``--budget-run``: the pre-training run's checkpoints are exported and probed at k =
``--budget-k`` (seed 0) beside a random encoder (step 0): probe accuracy against pre-training steps.

Writes OUT/results.md (mean +- std over seeds, per-seed values, gain and wins), OUT/results.json,
OUT/accuracy_vs_labels.png (one line per init and method), OUT/budget.md and budget.png with
--budget-run, and one TensorBoard folder OUT/tb (every fine-tune run, and the study's summary
scalars against labels per class). Finished runs (report.json present) are reused: an
interrupted study resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

INITS = ("pretrained", "scratch")
METHODS = ("finetune", "linear", "knn")
COLOURS = {"pretrained": (31, 119, 180), "scratch": (214, 39, 40)}
DASH = {"finetune": 0, "linear": 1, "knn": 2}


def _load(path: str) -> dict | None:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def accuracy(report: dict, method: str) -> float:
    if method == "finetune":
        return float(report["test"]["acc"])
    return float(report[method]["test"]["acc"])


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

    def run_one(self, k: str, seed: int):
        from .probe import run_probe
        from .train import train
        shards = self.data_for(k, seed)
        for init_name in INITS:
            init = self.args.encoder if init_name == "pretrained" else ""
            base = os.path.join(self.out, "runs", f"k{k}", init_name, f"s{seed}")
            if "finetune" in self.args.methods:
                run_dir = os.path.join(base, "finetune")
                report = _load(os.path.join(run_dir, "report.json"))
                if report is None:
                    report = train(self.config(shards, run_dir, init, seed))
                    if report.get("stopped_by_signal"):
                        raise KeyboardInterrupt
                self._link_tb(run_dir, os.path.join(self.out, "tb", f"k{k}", init_name,
                                                    f"s{seed}"))
                self.rows.setdefault((k, "finetune", init_name), {})[seed] = \
                    accuracy(report, "finetune")
            if {"linear", "knn"} & set(self.args.methods):
                run_dir = os.path.join(base, "probe")
                report = _load(os.path.join(run_dir, "report.json"))
                if report is None:
                    report = run_probe(self.config(shards, run_dir, init, seed))
                for m in ("linear", "knn"):
                    if m in self.args.methods:
                        self.rows.setdefault((k, m, init_name), {})[seed] = accuracy(report, m)

    @staticmethod
    def _link_tb(run_dir: str, where: str):
        os.makedirs(os.path.dirname(where), exist_ok=True)
        if not os.path.lexists(where):
            os.symlink(os.path.abspath(os.path.join(run_dir, "tb")), where)

    def summary(self) -> dict:
        out = {}
        for (k, m, init), by_seed in self.rows.items():
            v = np.array([by_seed[s] for s in sorted(by_seed)])
            out.setdefault(m, {}).setdefault(k, {})[init] = {
                "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "seeds": {int(s): by_seed[s] for s in sorted(by_seed)}}
        for m in out:
            for k, row in out[m].items():
                if set(INITS) <= set(row):
                    a, b = row["pretrained"]["seeds"], row["scratch"]["seeds"]
                    common = sorted(set(a) & set(b))
                    row["gain"] = float(np.mean([a[s] - b[s] for s in common]))
                    row["wins"] = f"{sum(a[s] > b[s] for s in common)}/{len(common)}"
        return out

    def write(self):
        s = self.summary()
        lines = [f"# Label efficiency: {self.args.set}", "",
                 f"pre-trained encoder `{self.args.encoder}` vs scratch (random init), "
                 f"seeds {self.args.seeds}; test accuracy, mean +- std over seeds.", ""]
        for m in METHODS:
            if m not in s:
                continue
            title = {"finetune": "Fine-tuning", "linear": "Linear probe (frozen)",
                     "knn": "kNN (frozen)"}[m]
            lines += [f"## {title}", "",
                      "| labels per class | pre-trained | scratch | gain | pre-trained wins | "
                      "per seed (pre-trained / scratch) |", "|---|---|---|---|---|---|"]
            for k in self.args.ks:
                row = s[m].get(k)
                if not row:
                    continue
                cell = {i: f"{row[i]['mean']:.3f} +- {row[i]['std']:.3f}" if i in row else "-"
                        for i in INITS}
                seeds = " ".join(
                    f"{row['pretrained']['seeds'].get(sd, float('nan')):.3f}/"
                    f"{row['scratch']['seeds'].get(sd, float('nan')):.3f}"
                    for sd in self.args.seeds) if set(INITS) <= set(row) else ""
                lines.append(f"| {k} | {cell['pretrained']} | {cell['scratch']} | "
                             f"{row.get('gain', float('nan')):+.3f} | {row.get('wins', '-')} | "
                             f"{seeds} |")
            lines.append("")
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "results.md"), "w") as f:
            f.write("\n".join(lines))
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(s, f, indent=1)
        self.plot(s, os.path.join(self.out, "accuracy_vs_labels.png"))
        self.scalars(s)
        return "\n".join(lines)

    def plot(self, s: dict, path: str, size=(520, 320)):
        from PIL import Image, ImageDraw
        w, h = size
        pad = 44
        img = Image.new("RGB", (w, h), "white")
        d = ImageDraw.Draw(img)
        d.rectangle([pad, 10, w - 10, h - pad], outline=(0, 0, 0))
        ks = self.args.ks
        xs = {k: pad + (w - pad - 10) * (i + 0.5) / len(ks) for i, k in enumerate(ks)}
        y = lambda v: 10 + (h - pad - 10) * (1 - min(max(v, 0.0), 1.0))  # noqa: E731
        for k in ks:
            d.text((xs[k] - 8, h - pad + 4), str(k), fill=(0, 0, 0))
        d.text((pad, h - pad + 18), "labels per class; test accuracy (0-1); solid fine-tune, "
                                    "- - linear, .. kNN", fill=(0, 0, 0))
        for v in (0.25, 0.5, 0.75, 1.0):
            d.text((4, y(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
        for m in METHODS:
            for init in INITS:
                pts = [(xs[k], y(s[m][k][init]["mean"])) for k in ks
                       if m in s and k in s[m] and init in s[m][k]]
                for a, b in zip(pts, pts[1:]):
                    self._segment(d, a, b, COLOURS[init], DASH[m])
                for (px, py), k in zip(pts, ks):
                    sd = s[m][k][init]["std"] * (h - pad - 10)
                    d.line([(px, py - sd), (px, py + sd)], fill=COLOURS[init])
                    d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=COLOURS[init])
        d.text((pad + 6, 14), "pre-trained", fill=COLOURS["pretrained"])
        d.text((pad + 6, 28), "scratch", fill=COLOURS["scratch"])
        img.save(path)

    @staticmethod
    def _segment(d, a, b, colour, dash: int):
        if dash == 0:
            d.line([a, b], fill=colour, width=2)
            return
        n = 24
        for i in range(n):
            if (i % 2) if dash == 1 else (i % 3):
                continue
            p = (a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n)
            q = (a[0] + (b[0] - a[0]) * (i + 1) / n, a[1] + (b[1] - a[1]) * (i + 1) / n)
            d.line([p, q], fill=colour, width=2)

    def scalars(self, s: dict):
        from torch.utils.tensorboard import SummaryWriter
        full = per_class_count(self.args.set)
        with SummaryWriter(os.path.join(self.out, "tb", "summary")) as tb:
            for m in s:
                for k, row in s[m].items():
                    step = full if k == "all" else int(k)
                    for init in INITS:
                        if init in row:
                            tb.add_scalar(f"study/{m}/{init}", row[init]["mean"], step)

    def budget(self) -> str:
        """Probe accuracy of the pre-training run's checkpoints (and a random encoder)."""
        from pretrain.export import main as export
        from .probe import run_probe
        ckpts = os.path.join(self.args.budget_run, "checkpoints")
        tags = sorted((t for t in os.listdir(ckpts) if os.path.isfile(
            os.path.join(ckpts, t, "COMPLETE"))), key=lambda t: int("".join(
                c for c in t if c.isdigit()) or 0)) if os.path.isdir(ckpts) else []
        if not tags:
            raise FileNotFoundError(f"{ckpts} holds no finished checkpoints to probe")
        shards = self.data_for(self.args.budget_k, 0)
        rows = []
        for tag in [None, *tags]:
            name = tag or "random"
            enc = ""
            if tag:
                enc = os.path.join(self.out, "budget", name, "export")
                if not os.path.isfile(os.path.join(enc, "encoder.safetensors")):
                    if export([self.args.budget_run, "--tag", tag, "--out", enc]) != 0:
                        raise RuntimeError(f"exporting {tag} of {self.args.budget_run} failed")
            run_dir = os.path.join(self.out, "budget", name, "probe")
            report = _load(os.path.join(run_dir, "report.json")) or run_probe(
                self.config(shards, run_dir, enc, 0))
            step = int("".join(c for c in tag if c.isdigit())) if tag else 0
            rows.append((step, accuracy(report, "linear"), accuracy(report, "knn")))
        lines = [f"# Probe accuracy vs pre-training steps ({self.args.budget_run}, "
                 f"k = {self.args.budget_k}, seed 0)", "",
                 "| pre-training steps | linear probe | kNN |", "|---|---|---|"]
        lines += [f"| {st} | {lin:.3f} | {knn:.3f} |" for st, lin, knn in rows]
        text = "\n".join(lines) + "\n"
        with open(os.path.join(self.out, "budget.md"), "w") as f:
            f.write(text)
        with open(os.path.join(self.out, "budget.json"), "w") as f:
            json.dump([{"step": st, "linear": lin, "knn": knn} for st, lin, knn in rows], f)
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
    ap.add_argument("--clips-per-epoch", type=int, default=256,
                    help="data.repeats is set so each epoch sees about this many clips")
    ap.add_argument("--budget-run", help="a pre-training run: probe each of its checkpoints")
    ap.add_argument("--budget-k", default="16")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_args(argv)
    for k in args.ks:
        if k != "all" and not (k.isdigit() and int(k) > 0):
            ap.error(f"--ks takes positive integers or 'all', not {k!r}")
    from data.manifest import DataSetError
    from pretrain.config import ConfigError
    study = Study(args)
    try:
        for k in args.ks:
            for seed in args.seeds:
                study.run_one(k, seed)
        print(study.write())
        if args.budget_run:
            print(study.budget())
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
