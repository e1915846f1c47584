"""`python -m finetune.compare`: the model comparison over several data sets: ViViT with its
three tokenisers (uniform frame sampling, tubelet embedding, 3D tokens-to-token), UniFormer, and
the ViT encoder armed with UniFormer blocks (uniformer_head), with the same data, optimiser and
schedule settings.

    python -m finetune.compare --sets shards/organ28 shards/nodule28 ... \\
        --config launch/configs/finetune/medmnist3d_vivit.yaml \\
        --uniformer-config launch/configs/finetune/medmnist3d_uniformer.yaml \\
        --out runs/compare [--models tubelet uniformer ...] [k=v ...]

Rows: ``uniform``, ``tubelet``, ``t2t`` run --config with that tokeniser; ``uniformer_head`` runs
--config with model.family=uniformer_head (the tubelet encoder plus the UniFormer blocks);
``uniformer`` runs --uniformer-config (its model section has the UniFormer geometry). The k=v
overrides apply to every row. Each (set, row) is a fine-tuning run under OUT/<set>/<row>, all
logging into one TensorBoard folder (OUT/tb, runs named <set>/<row>). Writes OUT/results.md
(best validation ACC/AUC, test ACC/AUC, epochs to converge, wall time) and OUT/curves.png
(validation AUC per epoch). Runs start from scratch unless --init is given (a ViT encoder: it
goes to the ViViT and uniformer_head rows; --uniformer-init goes to the UniFormer row). A row
whose report.json exists is reused, so an interrupted comparison resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .plot import link_tb, panels_plot

TOKENIZERS = ("uniform", "tubelet", "t2t")
ROWS = (*TOKENIZERS, "uniformer", "uniformer_head")
COLOURS = {"uniform": (214, 39, 40), "tubelet": (31, 119, 180), "t2t": (44, 160, 44),
           "uniformer": (148, 103, 189), "uniformer_head": (255, 127, 14)}


def epochs_to_converge(history: list, key: str = "auc", within: float = 0.01) -> int:
    """First epoch whose validation metric is within ``within`` of the run's best."""
    best = max(h[key] for h in history)
    return next(h["epoch"] for h in history if h[key] >= best - within)


def draw_curves(results: dict, path: str, key: str = "auc", size=(360, 240)):
    """One panel per data set: validation ``key`` per epoch for each model (PNG)."""
    panels = []
    for name, runs in results.items():
        epochs = max((len(rep["history"]) for rep in runs.values()), default=0)
        lines = [(COLOURS[tok], 0, [(j, r[key], 0.0) for j, r in enumerate(rep["history"])])
                 for tok, rep in runs.items()]
        panels.append((list(range(1, epochs + 1)), lines, f"{name}: val {key} / epoch",
                       [(tok, COLOURS[tok]) for tok in runs]))
    panels_plot(path, panels, size)


def table(results: dict) -> str:
    lines = ["| data set | model | best val ACC | best val AUC | test ACC | test AUC | "
             "epochs to converge | wall time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for tok, rep in runs.items():
            b, t = rep["best"], rep["test"]
            lines.append(f"| {name} | {tok} | {b['acc']:.3f} | {b['auc']:.3f} | {t['acc']:.3f} | "
                         f"{t['auc']:.3f} | {epochs_to_converge(rep['history'])} | "
                         f"{rep['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", required=True, help="prepared folders (with splits)")
    ap.add_argument("--config", default="launch/configs/finetune/medmnist3d_vivit.yaml")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--uniformer-config",
                    default="launch/configs/finetune/medmnist3d_uniformer.yaml",
                    help="the recipe of the uniformer row")
    ap.add_argument("--models", "--tokenizers", nargs="+", default=list(ROWS), choices=ROWS,
                    help="rows to run (default: all)")
    ap.add_argument("--init", default="", help="optional ViT encoder (ViViT, uniformer_head)")
    ap.add_argument("--uniformer-init", default="", help="optional UniFormer checkpoint")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    from pretrain.runtime.config import parse_args_with_overrides
    args = parse_args_with_overrides(ap, argv)
    from pretrain.runtime.config import ConfigError, load_config
    from .train import FinetuneConfig, train

    results = {}
    for path in args.sets:
        name = os.path.basename(os.path.normpath(path))
        results[name] = {}
        for tok in args.models:
            run_dir = os.path.join(args.out, name, tok)
            common = [*args.overrides, f"data.shards={path}", f"run.dir={run_dir}"]
            if tok == "uniformer":
                recipe, extra = args.uniformer_config, [f"run.init={args.uniformer_init}"]
            elif tok == "uniformer_head":
                recipe, extra = args.config, ["model.family=uniformer_head",
                                              "model.tokenizer=tubelet", f"run.init={args.init}"]
            else:
                recipe, extra = args.config, [f"model.tokenizer={tok}", f"run.init={args.init}"]
            try:
                cfg = load_config(recipe, [*common, *extra], schema=FinetuneConfig)
            except ConfigError as e:
                print(f"finetune.compare: error: {e}", file=sys.stderr)
                return 2
            report_path = os.path.join(run_dir, "report.json")
            if os.path.isfile(report_path):  # finished earlier: reuse (the study resumes)
                with open(report_path) as f:
                    results[name][tok] = json.load(f)
                continue
            results[name][tok] = train(cfg)
            link_tb(run_dir, os.path.join(args.out, "tb", name, tok))
    os.makedirs(args.out, exist_ok=True)
    md = table(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    draw_curves(results, os.path.join(args.out, "curves.png"))
    print(md)
    print(f"curves: {os.path.join(args.out, 'curves.png')}; TensorBoard: "
          f"tensorboard --logdir {os.path.join(args.out, 'tb')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
