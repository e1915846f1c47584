"""launch/run.sh: a machine that should have GPUs but shows torch none gets a loud warning."""
import os
import subprocess

import pytest


def run_sh(env_extra):
    env = {**os.environ, **env_extra}
    # a bad key stops the job right after the launcher's checks, before any training
    return subprocess.run(["bash", "launch/run.sh", "pretrain", "--config",
                           "launch/configs/pretrain/tiny_synthetic.yaml", "model.depht=3"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_run_sh_warns_loudly_when_expected_gpus_are_missing():
    r = run_sh({"CUDA_VISIBLE_DEVICES": "0,1", "NPROC": "1"})
    assert "WARNING: torch sees no GPU" in r.stderr and "CUDA_VISIBLE_DEVICES=0,1" in r.stderr
    assert "1 process(es) x 1 node(s), CPU" in r.stderr
    assert r.returncode != 0 and "model.depht" in r.stderr


def test_run_sh_is_quiet_on_a_machine_without_gpus():
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS")}
    env["NPROC"] = "1"
    r = subprocess.run(["bash", "launch/run.sh", "pretrain", "--config",
                        "launch/configs/pretrain/tiny_synthetic.yaml", "model.depht=3"],
                       capture_output=True, text=True, env=env, timeout=300)
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode:
        assert "WARNING" not in r.stderr


def test_every_console_script_has_help_with_an_example():
    """Each ``tubemae-*`` entry point of pyproject.toml imports, and its --help shows at least
    one example command line."""
    import contextlib
    import importlib
    import io
    import tomllib

    import pytest
    with open("pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert {"tubemae-predict", "tubemae-features", "tubemae-export-model", "tubemae-visualize",
            "tubemae-convert"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            getattr(importlib.import_module(module), func)(["--help"])
        assert e.value.code == 0, name
        text = out.getvalue()
        assert "example" in text.lower() or text.count("python -m") >= 2, name
