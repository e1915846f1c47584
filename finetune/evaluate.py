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
        auc = float(np.nanmean(aucs))
        acc = float(np.mean(scores.argmax(1) == labels))
    return {"acc": acc, "auc": auc}


def topk(labels: np.ndarray, scores: np.ndarray, ks=(1, 5)) -> dict:
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(-np.asarray(scores), axis=1)
    return {f"top{k}": float(np.mean((order[:, :min(k, scores.shape[1])] ==
                                      labels[:, None]).any(1))) for k in ks}


def aggregate_views(index: np.ndarray, logits: np.ndarray, labels: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-view logits -> per-sample softmax scores averaged over views.
    Returns (sample index, scores (S, K), labels (S,)), sorted by index."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
    uniq, inverse = np.unique(index, return_inverse=True)
    sums = np.zeros((len(uniq), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(uniq))[:, None]
    lab = np.zeros(len(uniq), dtype=np.int64)
    lab[inverse] = labels
    return uniq, sums / counts, lab


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def confusion_picture(cm: np.ndarray, cell: int = 24) -> np.ndarray:
    """(K*cell, K*cell, 3) uint8: rows = true class, columns = predicted; darker = more of the
    row's samples."""
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    img = (255 * (1 - rows)).astype(np.uint8)
    img = np.repeat(np.repeat(img, cell, 0), cell, 1)
    pic = np.stack([img, img, np.full_like(img, 255)], -1)
    pic[::cell, :] = 128
    pic[:, ::cell] = 128
    return pic


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
