"""Learning on the synthetic motion set, fixed seeds: tubelets (which see motion inside a
token) beat uniform frame sampling where motion defines the class; UniFormer and the UniFormer
head learn the classes; and on the label-efficiency layout (an unlabeled pool, 16 labels per
class) the pre-trained encoder beats a random init, fine-tuned and probed, and the probe rises
with pre-training steps. Margins are the spread measured over seeds (README)."""
import json

import pytest

from data.prep.cli import main as prep
from finetune.study import main as study
from finetune.train import FinetuneConfig, train as finetune
from pretrain.config import load_config
from pretrain.train import train as pretrain

# The claims below were measured with 16-pixel patches (4 x 4 tokens a frame), which keep the
# test within minutes, and a LayerNorm before the head; the recipes' 8-pixel patches and
# BatchNorm head are the quick start's.
COMMON = ["data.num_workers=1", "log.progress=false", "model.patch_size=16"]


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """320 clips of 4 motion classes (224 train / 48 val / 48 test) and a tiny VideoMAE
    pre-trained on them for 100 steps."""
    tmp = tmp_path_factory.mktemp("motion")
    data = str(tmp / "data")
    assert prep(["synthetic", "--out", data, "--count", "320", "--num-classes", "4",
                 "--size", "64", "--frames", "40", "--shard-samples", "64",
                 "--workers", "2"]) == 0
    common = [f"data.shards={data}", *COMMON]
    summary = pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml",
                                   common + [f"run.dir={tmp / 'pre'}", "train.steps=100",
                                             "train.ckpt_every=100", "log.picture_every=0"]))
    return tmp, common + ["model.head_norm=layer"], summary["export"]


@pytest.mark.slow
def test_tubelet_beats_uniform_frame_sampling(motion):
    """Where motion is the class, tubelets (two frames a token) beat one frame a token, both
    from scratch, in the recipe's 12 epochs (with 8, both stayed at chance: 0.21-0.25 over run
    seeds 0/1/2). (That pre-training pays is the label-efficiency test's claim below.)"""
    tmp, common, _ = motion

    def run(name, tokenizer):
        cfg = load_config("launch/configs/finetune/synthetic_vivit.yaml",
                          common + [f"run.dir={tmp / name}", "run.init=",
                                    f"model.tokenizer={tokenizer}"], schema=FinetuneConfig)
        return finetune(cfg)["test"]["acc"]

    scratch, uniform = run("scratch_tubelet", "tubelet"), run("scratch_uniform", "uniform")
    print(f"test accuracy from scratch: tubelet {scratch:.3f}, uniform {uniform:.3f}")
    assert scratch >= uniform + 0.15


@pytest.mark.slow
def test_uniformer_and_the_uniformer_head_learn_the_motion_classes(motion):
    tmp, common, encoder = motion
    accs = {}
    for name, recipe, init, epochs in (("uniformer", "synthetic_uniformer", "", 4),
                                       ("head", "synthetic_uniformer_head", encoder, 8)):
        cfg = load_config(f"launch/configs/finetune/{recipe}.yaml",
                          common + [f"train.epochs={epochs}", f"run.dir={tmp / name}",
                                    f"run.init={init}"], schema=FinetuneConfig)
        accs[name] = finetune(cfg)["test"]["acc"]
    print(f"test accuracy, 4 classes (chance 0.25): {accs}")
    assert accs["uniformer"] >= MARGIN["uniformer"] and accs["head"] >= MARGIN["head"], accs


# Test accuracy over run seeds 0/1/2 on this set (48 test clips, chance 0.25): UniFormer-tiny
# from scratch, 4 epochs, 0.708 / 0.521 / 0.667; the head from the 100-step encoder, 8 epochs,
# 0.500 / 0.458 / 0.479. (With 6 epochs and 12 epochs from a 300-step encoder: 0.771 / 0.708 /
# 0.729 and 0.563 / 0.583 / 0.583, for 100 s more.) The bars sit about 0.1 below the lowest
# seed (one standard error on 48 clips is about 0.07) and 2.3 standard errors above chance.
MARGIN = {"uniformer": 0.40, "head": 0.39}


def label_efficiency(tmp, seed: int = 0, budget=(10, 30)) -> dict:
    """The quick start's recipes (8-pixel patches, BatchNorm head) on a smaller layout: 60
    pre-training steps on 600 unlabeled clips (a checkpoint every 10), then one
    ``finetune.study`` at 16 labelled clips per class, tested on 200 clips: fine-tuning (8
    epochs of 128 clips) and a linear probe, each from the encoder and from a random init
    (scratch); and the budget curve: the linear probe with all 64 labels per class of the run's
    initial weights (step 0) and of its checkpoints at ``budget`` steps. ``seed`` seeds the
    data, the pre-training and the study. Returns test accuracies."""
    data = str(tmp / "data")
    assert prep(["synthetic", "--out", data, "--pool", "600", "--train-per-class", "64",
                 "--val-per-class", "8", "--test-per-class", "50", "--num-classes", "4",
                 "--size", "64", "--frames", "40", "--shard-samples", "64",
                 "--workers", "2", "--seed", str(seed)]) == 0
    encoder = pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml", [
        f"data.shards={data}/pool", f"run.dir={tmp / 'pre'}", "train.steps=60",
        "train.ckpt_every=10", "train.keep_last=6", "log.picture_every=0",
        f"run.seed={seed}", f"data.seed={seed}", *COMMON[:2]]))["export"]
    assert study(["--set", data, "--encoder", encoder, "--ks", "16", "--seeds", str(seed),
                  "--jobs", "2", "--out", str(tmp / "study"), "--methods", "finetune", "linear",
                  "--clips-per-epoch", "128", "--budget-run", str(tmp / "pre"),
                  "--budget-k", "all", "--budget-steps", *map(str, budget),
                  "train.epochs=8"]) == 0
    res = json.load(open(tmp / "study" / "results.json"))
    acc = {m: {i: res[m]["16"][i]["mean"] for i in ("pretrained", "scratch")}
           for m in ("finetune", "linear")}
    acc["budget"] = {r["step"]: r["linear"] for r in json.load(open(tmp / "study" / "budget.json"))}
    return acc


@pytest.mark.slow
def test_pretraining_pays_at_16_labels_per_class_and_the_probe_rises_with_steps(tmp_path):
    acc = label_efficiency(tmp_path)
    print(f"test accuracy, 4 classes: {acc}")
    assert acc["finetune"]["pretrained"] >= acc["finetune"]["scratch"] + GAIN["finetune"], acc
    assert acc["linear"]["pretrained"] >= acc["linear"]["scratch"] + GAIN["linear"], acc
    budget = acc["budget"]
    assert budget[30] >= budget[0] + GAIN["30 over 0"], acc
    assert budget[30] >= budget[10] + GAIN["30 over 10"], acc


# The same test with seeds 0 / 1 / 2 (`label_efficiency(tmp, seed, (10, 20, 30, 60))`), test
# accuracy on 200 clips:
#   k = 16, fine-tuned, pre-trained / scratch   0.600 / 0.310, 0.515 / 0.230, 0.455 / 0.255
#                                               gains 0.29, 0.285, 0.20
#   k = 16, linear probe, pre-trained / scratch 0.520 / 0.245, 0.470 / 0.240, 0.470 / 0.260
#                                               gains 0.275, 0.23, 0.21
#   budget, linear probe with all 64 labels per class, steps 0 (the run's initial weights) /
#   10 / 20 / 30 / 60:  0.680 / 0.765 / 0.800 / 0.815 / 0.825
#                       0.700 / 0.745 / 0.785 / 0.790 / 0.770
#                       0.710 / 0.660 / 0.730 / 0.785 / 0.780
# Step 30 beats step 0 by 0.135 / 0.09 / 0.075 and step 10 by 0.05 / 0.045 / 0.125 (on the
# 200-step layout with 400 test clips it beat both by 0.075-0.08); steps 0 -> 10 do not rise
# in seed 2 and nothing rises after 30 (README, "Does pre-training pay?"). The bars sit at
# about half the smallest gain (one standard error of a difference on 200 clips is about 0.04,
# less for probes of the same clips). CPU numerics only: no GPU was at hand to measure the
# spread there.
GAIN = {"finetune": 0.10, "linear": 0.10, "30 over 0": 0.04, "30 over 10": 0.02}
