"""Learning on the synthetic motion set, fixed seeds: tubelets (which see motion inside a
token) beat uniform frame sampling where motion defines the class; UniFormer and the UniFormer
head learn the classes; and on the quick start's label-efficiency layout (an unlabeled pool,
16 labels per class) the pre-trained encoder fine-tunes to near the top and far above scratch,
in fp32 and in bf16. Margins are the spread measured over
seeds (docs/label-efficiency.md)."""
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


def quick_start_encoder(tmp, precision: str, seed: int = 0, data_name: str = "data",
                        pre_name: str | None = None) -> tuple[str, str]:
    """(the quick start's set at ``seed`` under ``tmp``: a pool of 2,000 unlabelled clips, 64
    labelled clips per class, 400 test clips; made once) and the export of 300 pre-training
    steps on its pool with ``precision`` pinned. Also used by tests/bench/bench_head_layout.py."""
    data = str(tmp / data_name)
    if not (tmp / data_name / "test" / "manifest.json").exists():
        assert prep(["synthetic", "--out", data, "--pool", "2000", "--train-per-class", "64",
                     "--val-per-class", "16", "--test-per-class", "100", "--num-classes", "4",
                     "--size", "64", "--frames", "40", "--shard-samples", "128",
                     "--workers", "2", "--seed", str(seed)]) == 0
    run_dir = tmp / (pre_name or f"pre_{precision}")
    encoder = pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml", [
        f"data.shards={data}/pool", f"run.dir={run_dir}",
        "train.steps=300", "train.ckpt_every=300", "log.picture_every=0", f"run.seed={seed}",
        f"runtime.precision={precision}", *COMMON[:2]]))["export"]
    return data, encoder


def pays_in_fine_tuning(tmp, precision: str, seed: int = 0) -> dict:
    """The quick start at ``seed`` with ``precision`` pinned in both stages: its set (a pool of
    2,000 unlabelled clips, 64 labelled clips per class, 400 test clips), 300 pre-training
    steps on the pool, then one ``finetune.study`` at 16 labels per class fine-tuning (12
    epochs of 256 clips, no layer-wise decay) from the pre-trained encoder and from scratch.
    Then the linear probe of the same encoder and of the pre-training model's untrained init.
    Returns test accuracies {init: acc, "probe_" + init: acc}."""
    data, encoder = quick_start_encoder(tmp, precision, seed)
    out = tmp / f"study_{precision}"
    assert study(["--set", data, "--encoder", encoder, "--ks", "16", "--seeds", str(seed),
                  "--jobs", "2", "--out", str(out), "--methods", "finetune",
                  "--inits", "pretrained", "scratch", "--clips-per-epoch", "256",
                  f"runtime.precision={precision}"]) == 0
    res = json.load(open(out / "results.json"))
    acc = {i: res["finetune"]["16"][i]["mean"] for i in ("pretrained", "scratch")}
    probes = tmp / f"probe_{precision}"
    assert study(["--set", data, "--encoder", encoder, "--ks", "16", "--seeds", str(seed),
                  "--jobs", "2", "--out", str(probes), "--methods", "linear",
                  "--inits", "pretrained", "untrained", f"runtime.precision={precision}"]) == 0
    res = json.load(open(probes / "results.json"))
    return {**acc, **{f"probe_{i}": res["linear"]["16"][i]["mean"]
                      for i in ("pretrained", "untrained")}}


@pytest.fixture(scope="module")
def quick_start_set(tmp_path_factory):
    return tmp_path_factory.mktemp("pays")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_pretrained_encoder_fine_tunes_to_the_top_in_both_numerics(quick_start_set,
                                                                       precision):
    """Fine-tuned at 16 labels per class, the 300-step encoder reaches the accuracy and the
    gain over scratch measured at this seed in both numerics, and its frozen features probe
    better than the pre-training model's untrained init (docs/label-efficiency.md).
    Against that untrained init no fine-tuning margin is asserted: the control reaches
    0.965-1.000 in 5 of 6 seeds and numerics and 0.777 in the sixth."""
    acc = pays_in_fine_tuning(quick_start_set, precision)
    print(f"test accuracy, 16 labels per class, {precision}: {acc}")
    assert acc["pretrained"] >= MIN_ACC, acc
    assert acc["pretrained"] >= acc["scratch"] + GAIN, acc
    assert acc["probe_pretrained"] >= acc["probe_untrained"] + PROBE_GAIN, acc


# Measured with the test's layout (`pays_in_fine_tuning` is the run of docs/label-efficiency.md and its
# experiments, table "at 16 labels per class"), data / pre-training / fine-tuning seeds 0 / 1 / 2,
# test accuracy on 400 clips:
#   bf16  pre-trained 0.980 / 0.990 / 0.983, scratch 0.713 / 0.680 / 0.453 (gains +0.267 /
#         +0.310 / +0.530)
#   fp32  pre-trained 0.925 / 0.995 / 0.932, scratch 0.637 / 0.802 / 0.477 (gains +0.288 /
#         +0.193 / +0.455)
# Linear probe at 16 labels per class (`--methods linear --inits pretrained untrained`), the
# pre-trained encoder against the pre-training model's untrained init:
#   bf16  0.507 / 0.537 / 0.430 against 0.395 / 0.415 / 0.370 (gains +0.112 / +0.122 / +0.060)
#   fp32  0.510 / 0.603 / 0.455 against 0.395 / 0.328 / 0.428 (gains +0.115 / +0.275 / +0.028)
# The bars sit below the lowest of the six (0.925, +0.193 and +0.028); this test runs seed 0.
# CPU numerics only: no GPU was lent to measure them there.
MIN_ACC, GAIN, PROBE_GAIN = 0.9, 0.15, 0.025
