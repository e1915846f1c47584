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


def test_confusion_picture_is_labelled_and_per_class_metrics_add_up():
    from finetune.evaluate import confusion_picture, per_class
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    names = ["left-slow", "left-fast", "absent"]
    pic = confusion_picture(cm, names)
    assert pic.dtype == np.uint8 and pic.shape[2] == 3 and min(pic.shape[:2]) > 120
    # the rare class's hit cell is as dark as its share says, not washed out by the big class
    rows = per_class(cm, names)
    assert [r["samples"] for r in rows] == [10, 4, 0]
    assert rows[0]["accuracy"] == 0.8 and abs(rows[0]["precision"] - 8 / 9) < 1e-12
    assert rows[1]["accuracy"] == 0.75 and rows[1]["precision"] == 0.6
    assert np.isnan(rows[2]["accuracy"]) and rows[2]["class"] == "absent"
    big = confusion_picture(np.eye(60, dtype=int))        # many classes: colours only
    assert big.shape[0] > 400
