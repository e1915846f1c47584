"""The study's results: a pure summary of the accuracies (mean +- std over seeds, gain and wins
over each baseline), and the writers of results.md/json, the plots and TensorBoard scalars."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from .plot import line_plot

METHODS = ("finetune", "linear", "knn")
COLOURS = {"pretrained": (31, 119, 180), "scratch": (214, 39, 40), "untrained": (44, 160, 44)}
LABELS = {"pretrained": "pre-trained", "scratch": "scratch",
          "untrained": "untrained (pre-training's init)"}
DASH = {"finetune": 0, "linear": 1, "knn": 2}
BASES = {"scratch": "", "untrained": "_untrained"}   # baseline -> suffix of gain/wins keys
TITLES = {"finetune": "Fine-tuning", "linear": "Linear probe (frozen)", "knn": "kNN (frozen)"}


def accuracy(report: dict, method: str) -> float:
    """Test accuracy of a fine-tune's report (``finetune``) or a probe's (``linear``, ``knn``)."""
    if method == "finetune":
        return float(report["test"]["acc"])
    return float(report[method]["test"]["acc"])


def summarize(rows: dict) -> dict:
    """{(k, method, init): {seed: acc}} -> {method: {k: {init: {mean, std, seeds}, gain[_b],
    wins[_b]}}}: the gains over each baseline are means of per-seed differences over the seeds
    both have."""
    out = {}
    for (k, m, init), by_seed in rows.items():
        v = np.array([by_seed[s] for s in sorted(by_seed)])
        out.setdefault(m, {}).setdefault(k, {})[init] = {
            "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "seeds": {int(s): by_seed[s] for s in sorted(by_seed)}}
    for m in out:
        for row in out[m].values():
            for base, suffix in BASES.items():
                if "pretrained" not in row or base not in row:
                    continue
                a, b = row["pretrained"]["seeds"], row[base]["seeds"]
                common = sorted(set(a) & set(b))
                row["gain" + suffix] = float(np.mean([a[s] - b[s] for s in common]))
                row["wins" + suffix] = f"{sum(a[s] > b[s] for s in common)}/{len(common)}"
    return out


def results_markdown(spec, s: dict) -> str:
    """results.md: one table per method, a row per k."""
    lines = [f"# Label efficiency: {spec.set}", "",
             f"pre-trained encoder `{spec.encoder}` vs scratch (the fine-tuning model's own "
             f"random init)" + (" and untrained (the pre-training model at step 0)"
                                if "untrained" in spec.inits else "") +
             f", seeds {list(spec.seeds)}; test accuracy, mean +- std over seeds.", ""]
    inits = spec.inits
    bases = [b for b in BASES if b in inits]
    for m in METHODS:
        if m not in s:
            continue
        lines += [f"## {TITLES[m]}", "",
                  "| labels per class | " + " | ".join(LABELS[i] for i in inits) + " | " +
                  " | ".join(f"gain over {b} | wins over {b}" for b in bases) +
                  f" | per seed ({' / '.join(inits)}) |",
                  "|---|" + "---|" * (len(inits) + 2 * len(bases) + 1)]
        for k in spec.ks:
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
                for i in inits) for sd in spec.seeds))
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(spec, s: dict, per_class: int) -> str:
    """results.md, results.json, accuracy_vs_labels.png and the summary scalars (TensorBoard,
    x = labels per class; ``all`` at ``per_class``); returns the markdown."""
    text = results_markdown(spec, s)
    os.makedirs(spec.out, exist_ok=True)
    with open(os.path.join(spec.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(spec.out, "results.json"), "w") as f:
        json.dump(s, f, indent=1)
    lines = [(COLOURS[init], DASH[m], [(i, s[m][k][init]["mean"], s[m][k][init]["std"])
                                      for i, k in enumerate(spec.ks)
                                      if m in s and k in s[m] and init in s[m][k]])
             for m in METHODS for init in spec.inits]
    line_plot(os.path.join(spec.out, "accuracy_vs_labels.png"), [str(k) for k in spec.ks], lines,
              "labels per class; test accuracy (0-1); solid fine-tune, - - linear, .. kNN",
              [(LABELS[i], COLOURS[i]) for i in spec.inits])
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(os.path.join(spec.out, "tb", "summary")) as tb:
        for m in s:
            for k, row in s[m].items():
                step = per_class if k == "all" else int(k)
                for init in spec.inits:
                    if init in row:
                        tb.add_scalar(f"study/{m}/{init}", row[init]["mean"], step)
    return text


def budget_rows(jobs: list[tuple], reports: dict, seeds) -> list[dict]:
    """Per step: linear and kNN accuracy, mean +- std over seeds and per seed. ``jobs`` are
    ``study_plan.budget_jobs``; ``reports`` maps a probe run dir to its report."""
    rows = []
    for step in dict.fromkeys(j[1] for j in jobs):
        mine = [reports[j[3]] for j in jobs if j[1] == step]
        row = {"step": step, "seeds": list(seeds)}
        for m in ("linear", "knn"):
            v = np.array([accuracy(r, m) for r in mine])
            row[m] = float(v.mean())
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            row[f"{m}_per_seed"] = [float(a) for a in v]
        rows.append(row)
    return rows


def write_budget(spec, rows: list[dict]) -> str:
    """budget.md, budget.json and budget.png; returns the markdown."""
    lines = [f"# Probe accuracy vs pre-training steps ({spec.budget_run}, k = {spec.budget_k}, "
             f"seeds {list(spec.seeds)}; step 0: the run's initial weights)", "",
             "| pre-training steps | linear probe | kNN | linear per seed |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['linear']:.3f} +- {r['linear_std']:.3f} | "
              f"{r['knn']:.3f} +- {r['knn_std']:.3f} | "
              f"{' '.join(f'{a:.3f}' for a in r['linear_per_seed'])} |" for r in rows]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(spec.out, "budget.md"), "w") as f:
        f.write(text)
    with open(os.path.join(spec.out, "budget.json"), "w") as f:
        json.dump(rows, f, indent=1)
    line_plot(os.path.join(spec.out, "budget.png"), [str(r["step"]) for r in rows],
              [(COLOURS["pretrained"], DASH[m], [(i, r[m], r[f"{m}_std"])
                                                 for i, r in enumerate(rows)])
               for m in ("linear", "knn")],
              f"pre-training steps (0: initial weights); test accuracy at k = {spec.budget_k}; "
              f"- - linear, .. kNN", [])
    return text


def per_class_count(num_samples: int, num_classes: int) -> int:
    return int(math.ceil(num_samples / max(1, num_classes)))
