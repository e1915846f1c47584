import pytest
import yaml


@pytest.fixture
def ft_recipe(synthetic_set, tmp_path):
    run_dir = str(tmp_path / "ft")
    recipe = {
        "run": {"dir": run_dir, "seed": 0},
        "data": {"shards": synthetic_set, "batch_size": 8, "num_workers": 0,
                 "stride": 2, "flip": False, "mask": "none", "shuffle_buffer": 8,
                 "test_clips": 2, "test_crops": 3},
        "model": {"variant": 1, "tokenizer": "tubelet", "preset": "vit_tiny", "img_size": 32,
                  "patch_size": 8, "num_frames": 8, "tubelet_size": 2},
        "optim": {"lr": 1.0e-3, "warmup_epochs": 1},
        "runtime": {"engine": "plain", "precision": "fp32"},
        "log": {"every": 2, "progress": False},
        "train": {"epochs": 2},
    }
    path = str(tmp_path / "ft.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return path, run_dir
