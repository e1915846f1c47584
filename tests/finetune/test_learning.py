"""Learning on the synthetic motion set, fixed seeds: pre-training on an unlabeled pool pays at
16 labels per class, probe accuracy rises with pre-training, and UniFormer and the UniFormer head
learn the task. The margins are the measured spread across seeds (see the README's figures)."""
import json
import os

import pytest

from data.prep.cli import main as prep
from finetune.study import main as study
from finetune.train import FinetuneConfig, train as finetune
from pretrain.config import load_config
from pretrain.train import train as pretrain

COMMON = ["data.num_workers=1", "log.progress=false"]
EPOCHS = "train.epochs=8"


@pytest.fixture(scope="module")
def ssl(tmp_path_factory):
    """An unlabeled pool of 600 clips, 16 labeled clips per class, 50 test clips per class;
    a tiny VideoMAE pre-trained on the pool (checkpoints at 200, 400, 600 steps)."""
    out = tmp_path_factory.mktemp("ssl")
    data = str(out / "data")
    assert prep(["synthetic", "--out", data, "--pool", "600", "--train-per-class", "16",
                 "--val-per-class", "8", "--test-per-class", "50", "--num-classes", "4",
                 "--size", "64", "--frames", "40", "--shard-samples", "128",
                 "--workers", "2"]) == 0
    summary = pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml", [
        *COMMON, f"data.shards={data}/pool", f"run.dir={out / 'pre'}", "log.picture_every=0"]))
    return out, data, summary["export"]


@pytest.mark.slow
def test_pretraining_pays_at_16_labels_per_class_in_every_seed(ssl):
    out, data, encoder = ssl
    assert study(["--set", data, "--encoder", encoder, "--out", str(out / "study"),
                  "--ks", "all", "--seeds", "0", "1", "2", "--methods", "finetune", "linear",
                  "--budget-run", str(out / "pre"), "--budget-k", "all",
                  *COMMON, EPOCHS]) == 0
    res = json.load(open(out / "study" / "results.json"))
    print(open(out / "study" / "results.md").read())
    ft, lin = res["finetune"]["all"], res["linear"]["all"]
    assert ft["wins"] == "3/3" and ft["gain"] >= 0.15, ft
    assert lin["wins"] == "3/3" and lin["gain"] >= 0.03, lin
    budget = json.load(open(out / "study" / "budget.json"))
    print(open(out / "study" / "budget.md").read())
    steps = [b["step"] for b in budget]
    assert steps == [0, 200, 400, 600]
    assert budget[-1]["linear"] > budget[0]["linear"]


@pytest.mark.slow
def test_uniformer_and_the_uniformer_head_learn_the_motion_classes(ssl):
    out, data, encoder = ssl
    accs = {}
    for name, recipe, init in (("uniformer", "synthetic_uniformer", ""),
                               ("head", "synthetic_uniformer_head", encoder)):
        cfg = load_config(f"launch/configs/finetune/{recipe}.yaml", [
            *COMMON, EPOCHS, f"data.shards={data}", f"run.dir={out / name}",
            f"run.init={init}", "data.repeats=4"], schema=FinetuneConfig)
        accs[name] = finetune(cfg)["test"]["acc"]
    print(f"test accuracy, 4 classes (chance 0.25): {accs}")
    assert accs["uniformer"] >= 0.40 and accs["head"] >= 0.40, accs
    assert os.path.isfile(out / "head" / "report.json")
