"""launch/run.sh: a machine that should have GPUs but shows torch none gets a loud warning."""
import os
import subprocess


def run_sh(env_extra):
    env = {**os.environ, **env_extra}
    # a bad key stops the job right after the launcher's checks, before any training
    return subprocess.run(["bash", "launch/run.sh", "pretrain", "--config",
                           "launch/configs/pretrain/tiny_synthetic.yaml", "model.depht=3"],
                          capture_output=True, text=True, env=env, timeout=300)


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
