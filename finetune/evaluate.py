"""Metrics: the official MedMNIST evaluator's ACC and AUC, top-k accuracy over multi-view test
predictions, confusion matrices.

MedMNIST (as its evaluator defines them), from softmax scores (N, K):
  binary       AUC = ROC AUC of score[:, 1]; ACC = mean(score[:, 1] > 0.5 == label)
  multi-class  AUC = mean over classes of the one-vs-rest ROC AUC; ACC = mean(argmax == label)
Video: views of a sample (clips x crops) are averaged after softmax, then top-1 / top-5.
"""
from __future__ import annotations

import numpy as np
import torch


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``labels`` for ``scores`` (ties count one half),
    the Mann-Whitney statistic; NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def medmnist_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """{'acc', 'auc'} as the official evaluator computes them; ``scores`` are softmax
    probabilities (N, K)."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[1] == 2:
        auc = roc_auc(labels == 1, scores[:, 1])
        acc = float(np.mean((scores[:, 1] > 0.5) == (labels == 1)))
    else:
        aucs = [roc_auc(labels == k, scores[:, k]) for k in range(scores.shape[1])]
        auc = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
        acc = float(np.mean(scores.argmax(1) == labels))
    return {"acc": acc, "auc": auc}


def topk(labels: np.ndarray, scores: np.ndarray, ks=(1, 5)) -> dict:
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(-np.asarray(scores), axis=1)
    return {f"top{k}": float(np.mean((order[:, :min(k, scores.shape[1])] ==
                                      labels[:, None]).any(1))) for k in ks}


def mean_per_sample(index: np.ndarray, values: np.ndarray, labels: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-view rows -> their mean per sample. Returns (sample index, means (S, ...),
    labels (S,)), sorted by index."""
    uniq, inverse = np.unique(index, return_inverse=True)
    sums = np.zeros((len(uniq), *np.shape(values)[1:]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(uniq)).reshape(-1, *[1] * (sums.ndim - 1))
    lab = np.zeros(len(uniq), dtype=np.int64)
    lab[inverse] = labels
    return uniq, sums / counts, lab


def aggregate_views(index: np.ndarray, logits: np.ndarray, labels: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-view logits -> per-sample softmax scores averaged over views.
    Returns (sample index, scores (S, K), labels (S,)), sorted by index."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
    return mean_per_sample(index, probs, labels)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def confusion_picture(cm: np.ndarray, names: list | None = None, title: str = "") -> np.ndarray:
    """A readable confusion matrix (H, W, 3) uint8: rows = true class, columns = predicted,
    colour = the fraction of the row's samples (so rare classes show as clearly as common
    ones), the count written in each cell, class names on both axes, per-class recall at the
    right. Past 40 classes the cells are too small for text: colours and a title only."""
    from PIL import Image, ImageDraw
    k = cm.shape[0]
    names = [str(n) for n in (names or range(k))]
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    text = k <= 40
    cell = 28 if text else max(4, 800 // k)
    left = 8 + 6 * min(18, max(len(n) for n in names)) if text else 10
    top, right = 34 + (6 * min(18, max(len(n) for n in names)) if text else 0), 60
    title = title or (f"confusion ({int(cm.sum())} samples; rows true, columns predicted; "
                      f"colour = share of the row)")
    width = max(left + k * cell + right, 8 + 6 * len(title))
    img = Image.new("RGB", (width, top + k * cell + 24), "white")
    d = ImageDraw.Draw(img)
    d.text((4, 4), title, fill=(0, 0, 0))
    for i in range(k):
        for j in range(k):
            v = float(rows[i, j])
            colour = (int(255 - 225 * v), int(255 - 160 * v), 255)
            x, y = left + j * cell, top + i * cell
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour,
                        outline=(200, 200, 200) if text else None)
            if text and cm[i, j]:
                d.text((x + 3, y + 8), str(int(cm[i, j])), fill=(255, 255, 255) if v > 0.55
                       else (0, 0, 0))
        if text:
            d.text((4, top + i * cell + 8), names[i][:18], fill=(0, 0, 0))
            d.text((left + k * cell + 4, top + i * cell + 8), f"{rows[i, i]:.0%}",
                   fill=(0, 0, 0))
    if text:  # predicted-class names, written downwards above the columns
        for j, n in enumerate(names):
            for c, ch in enumerate(n[:18]):
                d.text((left + j * cell + 10, 18 + 6 * c), ch, fill=(0, 0, 0))
    return np.asarray(img)


def per_class(cm: np.ndarray, names: list | None = None) -> list[dict]:
    """Per class: test samples, accuracy (recall), precision and F1 from a confusion matrix."""
    out = []
    for i in range(cm.shape[0]):
        support, predicted, hit = int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i])
        recall = hit / support if support else float("nan")
        precision = hit / predicted if predicted else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
        out.append({"class": names[i] if names else i, "samples": support, "accuracy": recall,
                    "precision": precision, "f1": f1})
    return out


def stream_outputs(fn, data, split: str | None = None, shard_set=None, rank: int = 0,
                   world_size: int = 1, bar=None) -> tuple[np.ndarray, np.ndarray | None,
                                                        np.ndarray]:
    """The one evaluation loop: ``fn`` (a batch's videos -> outputs) over every view of a split
    (``EvalStream`` of ``data``, this rank's share), without gradients. Returns per view
    (sample index, outputs as float numpy or None when this rank had nothing, labels);
    ``bar`` (a ``Progress``) counts samples. Train's validation and test, predict's and
    features' prepared sets, and the probe all read a split through it."""
    from data.stream import EvalStream
    stream = EvalStream(data, split, rank, world_size, shard_set=shard_set)
    views = 1 if stream.shard_set.kind == "volume" else data.test_clips * data.test_crops
    idx, outs, labels = [], [], []
    with torch.no_grad():
        for batch in stream:
            outs.append(fn(batch["video"]).float().cpu().numpy())
            idx.append(batch["index"].numpy())
            labels.append(batch["label"].numpy())
            if bar is not None:
                bar.update(len(batch["index"]) / views)
    if not idx:
        return np.zeros(0, np.int64), None, np.zeros(0, np.int64)
    return np.concatenate(idx), np.concatenate(outs), np.concatenate(labels)


def summarize(kind: str, index, logits, labels) -> dict:
    """Metrics of one split: MedMNIST ACC/AUC for volumes, top-1/top-5 for videos (plus
    ACC/AUC for binary tasks), all on per-sample view-averaged softmax scores."""
    idx, scores, lab = aggregate_views(np.asarray(index), np.asarray(logits), np.asarray(labels))
    out = {"samples": int(len(idx))}
    out.update(medmnist_metrics(lab, scores))
    out.update(topk(lab, scores))
    out["confusion"] = confusion_matrix(lab, scores.argmax(1), scores.shape[1]).tolist()
    out["primary"] = out["auc"] if kind == "volume" else out["top1"]
    return out
