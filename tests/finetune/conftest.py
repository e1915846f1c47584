import pytest
import yaml


def write_ft_recipe(folder, shards: str, **sections) -> tuple[str, str]:
    """The small ViViT fine-tuning recipe (fp32, pinned) on ``shards``, written to
    ``folder/ft.yaml`` with each of ``sections`` merged into its section; returns (path,
    run_dir)."""
    run_dir = str(folder / "ft")
    recipe = {
        "run": {"dir": run_dir, "seed": 0},
        "data": {"shards": shards, "batch_size": 8, "num_workers": 0,
                 "stride": 2, "flip": False, "mask": "none", "shuffle_buffer": 8,
                 "test_clips": 2, "test_crops": 3},
        "model": {"variant": 1, "tokenizer": "tubelet", "preset": "vit_tiny", "img_size": 32,
                  "patch_size": 8, "num_frames": 8, "tubelet_size": 2},
        "optim": {"lr": 1.0e-3, "warmup_epochs": 1},
        "runtime": {"engine": "plain", "precision": "fp32"},
        "log": {"every": 2, "progress": False},
        "train": {"epochs": 2},
    }
    for name, values in sections.items():
        recipe[name].update(values)
    path = str(folder / "ft.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return path, run_dir


@pytest.fixture
def ft_recipe(synthetic_set, tmp_path):
    return write_ft_recipe(tmp_path, synthetic_set)
