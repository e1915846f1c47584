import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from finetune.evaluate import aggregate_views, medmnist_metrics, roc_auc, summarize, topk


def test_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        s = rng.integers(0, 5, 50) / 4.0  # many ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_official_binary_definitions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = softmax(rng.normal(size=(200, 2)) + 1.5 * np.eye(2)[y])
    m = medmnist_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert m["acc"] == pytest.approx(accuracy_score(y, p[:, 1] > 0.5))


def test_official_multiclass_definitions():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 11, 300)
    p = softmax(rng.normal(size=(300, 11)) + 2 * np.eye(11)[y])
    m = medmnist_metrics(y, p)
    ovr = np.mean([roc_auc_score(y == k, p[:, k]) for k in range(11)])
    assert m["auc"] == pytest.approx(ovr)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["acc"] == pytest.approx(accuracy_score(y, p.argmax(1)))


def test_views_are_averaged_after_softmax_and_topk():
    logits = np.array([[10.0, 0, 0], [0, 0.1, 0], [0, 0, 5], [0, 5, 0]])
    index = np.array([7, 7, 3, 3])
    labels = np.array([1, 1, 2, 2])
    idx, scores, lab = aggregate_views(index, logits, labels)
    assert idx.tolist() == [3, 7] and lab.tolist() == [2, 1]
    assert np.allclose(scores.sum(1), 1)
    # averaging logits would pick class 0 for sample 7; averaging probabilities too here, but
    # the scores are the mean of the two softmax vectors
    assert np.allclose(scores[1], (softmax(logits[:1]) + softmax(logits[1:2]))[0] / 2)
    t = topk(lab, scores, (1, 2))
    assert t["top1"] == 0.0 and t["top2"] == 1.0
    s = summarize("video", index, logits, labels)
    assert s["primary"] == s["top1"] and s["samples"] == 2
    assert np.array(s["confusion"]).sum() == 2
