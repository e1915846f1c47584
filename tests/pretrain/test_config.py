import subprocess
import sys

import pytest

from pretrain.config import ConfigError, load_config, to_dict


def test_unknown_and_mistyped_keys_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert "data.batchsize" in str(e.value) and str(path) in str(e.value)
    assert "did you mean 'data.batch_size'" in str(e.value)
    path.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match="'train.steps'.*expected an integer"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(None, ["optim.lrr=1"])


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["optim.base_lr=1e-3", "optim.lr=null", "train.steps=7",
                             "data.scales=[1, 0.5]", "runtime.precision=bf16"])
    assert cfg.optim.base_lr == 1e-3 and cfg.optim.lr is None and cfg.train.steps == 7
    assert cfg.data.scales == (1, 0.5) and cfg.runtime.precision == "bf16"


def test_every_shipped_recipe_loads():
    import glob
    recipes = sorted(glob.glob("launch/configs/pretrain/*.yaml"))
    assert len(recipes) >= 5
    for r in recipes:
        cfg = load_config(r)
        assert (cfg.data.num_frames, cfg.data.size, cfg.data.patch, cfg.data.tubelet) == \
            (cfg.model.num_frames, cfg.model.img_size, cfg.model.patch_size,
             cfg.model.tubelet_size), r


def test_every_shipped_finetune_recipe_builds_its_model():
    import glob
    from finetune.models import build_model
    from finetune.train import FinetuneConfig
    recipes = sorted(glob.glob("launch/configs/finetune/*.yaml"))
    assert len(recipes) >= 6
    for r in recipes:
        cfg = load_config(r, ["model.num_classes=5"], schema=FinetuneConfig)
        assert cfg.model.num_frames == cfg.data.num_frames, r
        family = build_model(cfg.model).cfg.family
        assert family == cfg.model.family, r


def test_cli_rejects_a_bad_key_with_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pretrain", "--config",
                        "launch/configs/pretrain/tiny_synthetic.yaml", "model.depht=3"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown key 'model.depht'" in r.stderr and "model.depth" in r.stderr


@pytest.mark.parametrize("override,key", [
    ("data.batch_size=0", "data.batch_size"), ("data.batch_size=-4", "data.batch_size"),
    ("data.stride=0", "data.stride"), ("data.stride=-2", "data.stride"),
    ("data.mask_ratio=1.0", "data.mask_ratio"), ("data.mask_ratio=0", "data.mask_ratio"),
    ("train.steps=0", "train.steps"), ("train.ckpt_every=-1", "train.ckpt_every"),
    ("log.every=0", "log.every"), ("optim.lr=-1e-3", "optim.lr")])
def test_values_out_of_range_are_config_errors_naming_key_and_range(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}' in .* is .*; it must be"):
        load_config("launch/configs/pretrain/tiny_synthetic.yaml", [override])


def test_the_cli_refuses_a_bad_value_before_any_work(tmp_path):
    run_dir = tmp_path / "never"
    r = subprocess.run([sys.executable, "-m", "pretrain", "--config",
                        "launch/configs/pretrain/tiny_synthetic.yaml", "data.batch_size=0",
                        f"run.dir={run_dir}"], capture_output=True, text=True)
    assert r.returncode == 2 and "'data.batch_size'" in r.stderr and ">= 1" in r.stderr
    assert not run_dir.exists()


def test_compile_mode_is_checked_and_reaches_torch_compile():
    from pretrain.runtime.engine import compile_kwargs
    with pytest.raises(ConfigError, match="'runtime.compile_mode' .* 'fastest'; choose one of "
                                          "default, max-autotune-no-cudagraphs"):
        load_config(None, ["runtime.compile_mode=fastest"])
    cfg = load_config(None, ["runtime.compile=true",
                             "runtime.compile_mode=max-autotune-no-cudagraphs"])
    assert compile_kwargs(cfg.runtime) == {"dynamic": False,
                                           "mode": "max-autotune-no-cudagraphs"}
    assert compile_kwargs(load_config(None).runtime) == {"dynamic": False}


def test_overrides_may_follow_flags_that_take_several_values():
    import argparse
    from pretrain.config import parse_args_with_overrides
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", nargs="+")
    ap.add_argument("--out")
    ap.add_argument("overrides", nargs="*")
    args = parse_args_with_overrides(ap, ["a.b=1", "--ks", "4", "16", "model.patch_size=8",
                                          "--out", "runs/x=y", "c.d=[1, 2]"])
    assert args.ks == ["4", "16"] and args.out == "runs/x=y"
    assert args.overrides == ["a.b=1", "model.patch_size=8", "c.d=[1, 2]"]


def test_the_clip_geometry_is_stated_once_in_the_model_section(capsys):
    import glob
    cfg = load_config("launch/configs/pretrain/tiny_synthetic.yaml",
                      ["model.img_size=112", "model.patch_size=16", "model.num_frames=8"])
    d = cfg.data
    assert (d.size, d.patch, d.num_frames, d.tubelet) == (112, 16, 8, 2)   # the stream follows
    assert d.token_grid() == (4, 7, 7)
    saved = to_dict(cfg)["data"]
    assert not {"num_frames", "size", "patch", "tubelet"} & set(saved)    # not written twice
    # no shipped recipe states it in the data section
    import yaml
    for recipe in glob.glob("launch/configs/*/*.yaml"):
        data = yaml.safe_load(open(recipe)).get("data", {})
        assert not {"num_frames", "size", "patch", "tubelet"} & set(data), recipe
    # an old key: one line naming the new key when it agrees, an error naming both when not
    capsys.readouterr()
    cfg = load_config("launch/configs/pretrain/tiny_synthetic.yaml", ["data.num_frames=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["config: 'data.num_frames' in launch/configs/pretrain/tiny_synthetic.yaml + "
                   "overrides is the model's now ('model.num_frames', 16); drop it"]
    with pytest.raises(ConfigError, match=r"'data.patch' in .* is 16 but 'model.patch_size' is "
                                          r"8: .* drop data.patch and set model.patch_size"):
        load_config("launch/configs/pretrain/tiny_synthetic.yaml", ["data.patch=16"])


@pytest.mark.parametrize("override,match", [
    ("optim.lr=.nan", r"'optim.lr' .* is nan; it must be a finite number"),
    ("optim.lr=.inf", r"'optim.lr' .* is inf; it must be a finite number"),
    ("optim.weight_decay=.nan", r"'optim.weight_decay' .* is nan"),
    ("optim.betas=[0.9, .nan]", r"'optim.betas' .* is nan"),
    ("model.drop_path=1.5", r"'model.drop_path' .* is 1.5; it must be >= 0 and < 1"),
    ("data.scales=[]", r"'data.scales' .* is \[\]; it must list one or more crop scales"),
    ("data.scales=[1.0, 1.5]", r"'data.scales' .* must list one or more crop scales in \(0, 1\]"),
    ("data.scales=[1, 0.5", r"override 'data.scales=\[1, 0.5': .* is not a value"),
])
def test_non_finite_and_nonsensical_values_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("launch/configs/pretrain/tiny_synthetic.yaml", [override])


@pytest.mark.parametrize("override,match", [
    ("optim.layer_decay=0", r"'optim.layer_decay' .* is 0.0; it must be > 0"),
    ("optim.layer_decay=-0.5", r"'optim.layer_decay' .* must be > 0"),
    ("optim.label_smoothing=2", r"'optim.label_smoothing' .* is 2.0; it must be >= 0 and < 1"),
    ("optim.lr=.nan", r"'optim.lr' .* is nan"),
])
def test_fine_tuning_values_out_of_range_are_config_errors(override, match):
    from finetune.train import FinetuneConfig
    with pytest.raises(ConfigError, match=match):
        load_config("launch/configs/finetune/synthetic_vivit.yaml", [override],
                    schema=FinetuneConfig)


@pytest.mark.parametrize("text,match", [
    ("", r"is empty; start from a recipe in launch/configs/"),
    ("# only a comment\n", r"is empty"),
    ("- run\n- data\n", r"the top level of .* must be a mapping of sections .*, not a list"),
    ("data:\n\tbatch_size: 4\n", r"is not valid YAML at line 2, column 1: .*tabs"),
])
def test_a_broken_recipe_file_is_one_config_error(tmp_path, text, match):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(str(path), ["train.steps=3"])


def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = subprocess.run([sys.executable, "-m", "pretrain", "--config",
                        "launch/configs/pretrain/tiny_synthetic.yaml", "runtime.device=cuda",
                        f"run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "pretrain: error: runtime.device=cuda but torch sees no CUDA device here")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text,lines", [
    ("optim:\n  lr: 1.0e-3\n  weight_decay: 0.05\n  lr: 3.0e-4\n", (2, 4)),
    ("train:\n  steps: 10\ndata:\n  batch_size: 4\ntrain:\n  epochs: 2\n", (1, 5)),
    ("data:\n  scales: [1, 0.5]\n  batch_size: 4\n  batch_size: 4\n", (3, 4)),
])
def test_a_key_or_section_given_twice_is_refused_naming_both_lines(tmp_path, text, lines):
    """YAML keeps the last of two equal keys without a word: a second ``lr:`` would win and a
    second ``train:`` section would drop the first. Refused, for pre-training and fine-tuning
    recipes alike, in one line naming the two lines."""
    from finetune.train import FinetuneConfig
    path = tmp_path / "r.yaml"
    path.write_text(text)
    for schema in (None, FinetuneConfig):
        with pytest.raises(ConfigError, match=rf"{path}: '\w+' is given twice, at lines "
                                              rf"{lines[0]} and {lines[1]}: keep one"):
            load_config(str(path), schema=schema)
    r = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "given twice" in r.stderr and "Traceback" not in r.stderr
