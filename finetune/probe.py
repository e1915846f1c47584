"""`python -m finetune.probe`: how good are an encoder's frozen features? Linear probe and kNN.

    python -m finetune.probe --config launch/configs/finetune/synthetic_vivit.yaml \\
        --init runs/quickstart/pretrain/export [section.key=value ...]     # or --init none

The model section of the recipe builds the encoder (as fine-tuning does; ``--init`` takes our
export, an official or HF VideoMAE file, ``none`` for a random encoder seeded by run.seed). Every
sample of train, val and test is seen once as ``data.test_clips x data.test_crops`` views (no
augmentation); its feature is the pooled feature before the head (ViViT: mean of the normed
tokens; UniFormer: pooled last stage; UniFormer head: the gated fusion), averaged over views.
  linear  features standardised on train; multinomial logistic regression (full batch L-BFGS)
          for each L2 strength in a grid, the one best on val is tested;
  kNN     cosine similarity to the train features, the k nearest vote with weights
          exp(sim / 0.07); k in {1, 5, 10, 20} (<= the train size) chosen on val.
Writes run.dir/report.json (test ACC/AUC/top-1 of both, the choices made) and prints a line.
"""
from __future__ import annotations

if __name__ == "__main__":      # before the heavy imports: a Ctrl-C now is one line too
    from pretrain.runtime.cli import stop_while_starting
    stop_while_starting("finetune.probe")

import dataclasses
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
KNN_GRID = (1, 5, 10, 20)
KNN_TEMPERATURE = 0.07


def extract(model, data_cfg, split: str, device) -> tuple[np.ndarray, np.ndarray]:
    """(features (S, D) averaged over views, labels (S,)), ordered by sample index: what
    ``finetune.features`` writes for the same split."""
    from data.manifest import load_shard_set
    from .features import shard_set_features
    feats, labels, _ = shard_set_features(model, data_cfg, load_shard_set(data_cfg.shards, split),
                                          device)
    return feats, labels


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, l2: float) -> tuple:
    """Multinomial logistic regression, mean cross-entropy + l2 * |W|^2 / 2, full-batch L-BFGS."""
    torch.manual_seed(0)
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def knn_scores(train_x, train_y, x, classes: int, k: int) -> np.ndarray:
    """Weighted kNN class scores (N, K) on cosine similarity, normalised to sum to one."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True).clip(1e-12)
    q = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sim = q @ a.T
    k = min(k, len(train_y))
    top = np.argsort(-sim, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, top, 1) / KNN_TEMPERATURE)
    scores = np.zeros((len(x), classes))
    np.add.at(scores, (np.repeat(np.arange(len(x)), k), train_y[top].reshape(-1)),
              weights.reshape(-1))
    return scores / scores.sum(1, keepdims=True)


def metrics(kind: str, labels: np.ndarray, scores: np.ndarray) -> dict:
    """The fine-tuning report's metrics for per-sample class probabilities."""
    from .evaluate import summarize
    logits = np.log(np.clip(scores, 1e-12, None))
    return summarize(kind, np.arange(len(labels)), logits, labels)


def probe(features: dict, classes: int, kind: str) -> dict:
    """features {split: (x, y)} -> {'linear': {...}, 'knn': {...}} with the val-chosen settings
    and val/test metrics."""
    (tx, ty), (vx, vy), (sx, sy) = features["train"], features["val"], features["test"]
    mu, sd = tx.mean(0), tx.std(0) + 1e-6
    tx, vx, sx = (tx - mu) / sd, (vx - mu) / sd, (sx - mu) / sd
    out = {}
    best = None
    for l2 in L2_GRID:
        w, b = fit_linear(tx, ty, classes, l2)
        val = metrics(kind, vy, _softmax(vx @ w + b))
        if best is None or val["primary"] > best[0]["primary"]:
            best = (val, l2, w, b)
    val, l2, w, b = best
    out["linear"] = {"l2": l2, "val": _without_confusion(val), "test": _without_confusion(
        metrics(kind, sy, _softmax(sx @ w + b)))}
    best = None
    for k in KNN_GRID:
        val = metrics(kind, vy, knn_scores(tx, ty, vx, classes, k))
        if best is None or val["primary"] > best[0]["primary"]:
            best = (val, k)
    val, k = best
    out["knn"] = {"k": min(k, len(ty)), "val": _without_confusion(val),
                  "test": _without_confusion(metrics(kind, sy, knn_scores(tx, ty, sx, classes, k)))}
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _without_confusion(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "confusion"}


def run_probe(cfg) -> dict:
    """Probe ``cfg.run.init`` (or a random encoder) on cfg.data.shards; writes the report."""
    from data.atomic import write_text_atomic
    from data.manifest import load_shard_set
    from data.prep.medmnist import resolve_shards
    from pretrain.runtime.config import to_dict
    from .init import probe_model, report_counts, take_export_geometry
    from .config import check_recipe, check_splits
    from .train import json_default
    t0 = time.time()
    cfg = take_export_geometry(cfg)
    cfg.data = replace(cfg.data, mask="none")
    cfg.data.shards = resolve_shards(cfg.data.shards, os.path.join(cfg.run.dir, "data"))
    check_splits(cfg.data.shards)
    train_set = load_shard_set(cfg.data.shards, "train")
    check_recipe(cfg, train_set.num_classes)
    model, init_report = probe_model(cfg, train_set.num_classes)
    device = torch.device("cuda" if cfg.runtime.device in ("auto", "cuda") and
                          torch.cuda.is_available() else "cpu")
    model.to(device)
    features = {split: extract(model, cfg.data, split, device)
                for split in ("train", "val", "test")}
    result = probe(features, train_set.num_classes, train_set.kind)
    report = {"run_dir": os.path.abspath(cfg.run.dir), "kind": "probe", "task": train_set.kind,
              "classes": train_set.classes, "init": cfg.run.init or None,
              "init_report": report_counts(init_report),
              "samples": {s: int(len(features[s][1])) for s in features},
              "feature_dim": int(features["train"][0].shape[1]), **result,
              "model": dataclasses.asdict(model.cfg), "config": to_dict(cfg),
              "wall_s": round(time.time() - t0, 2)}
    os.makedirs(cfg.run.dir, exist_ok=True)
    write_text_atomic(os.path.join(cfg.run.dir, "report.json"),
                      json.dumps(report, indent=1, default=json_default))
    print(f"probe: {cfg.run.init or 'random encoder'}: linear test acc "
          f"{result['linear']['test']['acc']:.4f} (l2 {result['linear']['l2']:g}), kNN test "
          f"acc {result['knn']['test']['acc']:.4f} (k {result['knn']['k']}); "
          f"{cfg.run.dir}/report.json", file=sys.stderr)
    return report


def main(argv=None) -> int:
    from pretrain.runtime.cli import recipe_args, run_command
    args = recipe_args("python -m finetune.probe", __doc__, argv,
                       init_help="encoder to probe, or 'none' for a random one")
    from .config import config_from_cli

    def body() -> int:
        run_probe(config_from_cli(args.config, args.init, args.overrides))
        return 0
    return run_command("finetune.probe", body)


if __name__ == "__main__":
    raise SystemExit(main())
