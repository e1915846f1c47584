"""MedMNIST-format files as other tools write them: one-hot or float labels, a channel axis in
front, an empty split. Each is converted exactly or refused in one line, never misread."""
import numpy as np
import pytest

from data.manifest import load_shard_set
from data.prep.cli import main as prep
from data.shard_reader import decode_sample, leading_samples
from tests.conftest import make_medmnist_npz


def _write(path, **changes):
    arrays = make_medmnist_npz(str(path), n=(6, 3, 4), classes=3)
    want = {s: arrays[f"{s}_labels"].reshape(-1).astype(int) for s in ("train", "val", "test")}
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key])
    np.savez(path, **arrays)
    return arrays, want


def _labels(folder, split):
    ss = load_shard_set(str(folder / split))
    return [decode_sample(raw)[2] for raw in leading_samples(ss, ss.num_samples)]


def _prep(npz, out):
    return prep(["medmnist", str(npz), "--out", str(out)])


def test_one_hot_labels_become_the_class_of_their_one(tmp_path):
    one_hot = lambda lab: np.eye(3, dtype=np.uint8)[lab.reshape(-1)]        # noqa: E731
    _, want = _write(tmp_path / "x.npz", train_labels=one_hot, val_labels=one_hot,
                     test_labels=one_hot)
    assert _prep(tmp_path / "x.npz", tmp_path / "set") == 0
    for split in ("train", "val", "test"):
        assert _labels(tmp_path / "set", split) == want[split].tolist()


def test_whole_float_labels_are_taken_exactly(tmp_path):
    _, want = _write(tmp_path / "x.npz", train_labels=lambda lab: lab.astype(np.float32) + 0.0)
    assert _prep(tmp_path / "x.npz", tmp_path / "set") == 0
    assert _labels(tmp_path / "set", "train") == want["train"].tolist()


@pytest.mark.parametrize("change,message", [
    (lambda lab: lab.astype(np.float32) + 0.4, r"train_labels are float32 with values such as "
                                               r"\[.*0\.4.*not class numbers"),
    (lambda lab: np.ones((len(lab), 3), np.uint8), r"train_labels has 3 values per sample.*not "
                                                   r"one-hot.*multi-label"),
    (lambda lab: np.zeros((len(lab), 2), np.float32), r"train_labels has 2 values per sample"),
])
def test_labels_that_are_not_class_numbers_are_refused_in_one_line(tmp_path, capsys, change,
                                                                   message):
    _write(tmp_path / "x.npz", train_labels=change)
    assert _prep(tmp_path / "x.npz", tmp_path / "set") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "set" / "train").exists()


def test_a_channel_axis_in_front_is_taken_as_one_channel(tmp_path):
    arrays, _ = _write(tmp_path / "x.npz", **{f"{s}_images": (lambda a: a[:, None])
                                              for s in ("train", "val", "test")})
    assert arrays["train_images"].shape == (6, 1, 28, 28, 28)
    assert _prep(tmp_path / "x.npz", tmp_path / "set") == 0
    ss = load_shard_set(str(tmp_path / "set" / "train"))
    vol = decode_sample(next(iter(leading_samples(ss, 1))))[1]
    assert vol.shape == (28, 28, 28)
    assert np.array_equal(vol, arrays["train_images"][0, 0])


def test_an_empty_split_is_named(tmp_path, capsys):
    _write(tmp_path / "x.npz", val_images=lambda a: a[:0], val_labels=lambda a: a[:0])
    assert _prep(tmp_path / "x.npz", tmp_path / "set") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the val split is empty" in err, err
