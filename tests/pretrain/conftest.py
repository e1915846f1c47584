import os
import time

import pytest
import yaml


@pytest.fixture
def tiny_recipe(synthetic_set, tmp_path):
    """A recipe for the tiny model on the shared synthetic set; returns (path, run_dir)."""
    run_dir = str(tmp_path / "run")
    recipe = {
        "run": {"dir": run_dir, "seed": 0},
        "data": {"shards": synthetic_set, "batch_size": 4, "num_workers": 0,
                 "stride": 2, "mask_ratio": 0.75,
                 "shuffle_buffer": 8, "repeats": 2},
        "model": {"preset": "vit_tiny", "img_size": 32, "patch_size": 8, "num_frames": 8,
                  "tubelet_size": 2, "drop_path": 0.1},
        "optim": {"lr": 1.0e-3, "warmup_steps": 2},
        "runtime": {"engine": "plain", "precision": "fp32"},
        "log": {"every": 1, "picture_every": 3, "progress": False},
        "train": {"steps": 6, "ckpt_every": 3},
    }
    path = str(tmp_path / "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return path, run_dir


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def wait_for_step(run_dir, step, timeout=240, proc=None):
    """Until ``run_dir``'s metrics.jsonl holds ``step`` lines; with ``proc``, also return when
    that process has ended (its exit is then the test's to check)."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(metrics) and len(open(metrics).read().splitlines()) >= step:
            return
        if proc is not None and proc.poll() is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {run_dir} within {timeout} s")
