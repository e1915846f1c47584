"""Learning on the synthetic motion set, fixed seeds: pre-training helps, and tubelets (which
see motion inside a token) beat uniform frame sampling where motion defines the class."""
import pytest

from data.prep.cli import main as prep
from finetune.train import FinetuneConfig, train as finetune
from pretrain.config import load_config
from pretrain.train import train as pretrain


@pytest.mark.slow
def test_pretrained_beats_random_and_tubelet_beats_uniform(tmp_path):
    data = str(tmp_path / "data")
    assert prep(["synthetic", "--out", data, "--count", "320", "--num-classes", "4",
                 "--size", "64", "--frames", "40", "--shard-samples", "64",
                 "--workers", "2"]) == 0
    common = [f"data.shards={data}", "data.num_workers=1", "log.progress=false"]
    summary = pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml",
                                   common + [f"run.dir={tmp_path / 'pre'}",
                                             "log.picture_every=0"]))
    encoder = summary["export"]

    def run(name, init, tokenizer):
        cfg = load_config("launch/configs/finetune/synthetic_vivit.yaml",
                          common + [f"run.dir={tmp_path / name}", f"run.init={init}",
                                    f"model.tokenizer={tokenizer}"], schema=FinetuneConfig)
        return finetune(cfg)["test"]["acc"]

    pretrained = run("pre_tubelet", encoder, "tubelet")
    scratch = run("scratch_tubelet", "", "tubelet")
    uniform = run("scratch_uniform", "", "uniform")
    print(f"test accuracy: pre-trained {pretrained:.3f}, scratch {scratch:.3f}, "
          f"uniform {uniform:.3f}")
    assert pretrained >= scratch + 0.08
    assert scratch >= uniform + 0.15
