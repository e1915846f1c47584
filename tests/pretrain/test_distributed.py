"""Two processes under torchrun with DeepSpeed ZeRO on the CPU (gloo)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.pretrain.conftest import subprocess_env


def torchrun(recipe, run_dir, *overrides, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "pretrain", "--config", recipe, f"run.dir={run_dir}",
           "runtime.engine=deepspeed", "train.steps=4", "train.ckpt_every=2",
           "log.picture_every=0", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(**(env or {})),
                          timeout=600)


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.slow
@pytest.mark.parametrize("stage,precision", [(1, "fp32"), (2, "fp32"), (3, "bf16")])
def test_two_process_zero_trains_checkpoints_and_resumes_exactly(tiny_recipe, tmp_path, stage,
                                                                 precision):
    recipe, _ = tiny_recipe
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    zero = f"runtime.zero_stage={stage}"
    r = torchrun(recipe, straight, zero, f"runtime.precision={precision}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"2 process\(es\) on cpu, \d+ thread\(s\), engine deepspeed", r.stderr)
    tag = os.path.join(straight, "checkpoints", "step00000004")
    assert {"rank0.pt", "rank1.pt", "COMPLETE"} <= set(os.listdir(tag))
    assert len(losses(straight)) == 4
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(straight).values())
    assert os.path.isfile(os.path.join(straight, "export", "encoder.safetensors"))
    if stage != 1:
        return
    # every run of the comparison pins its precision: ``auto`` would differ between CPUs
    pinned = f"runtime.precision={precision}"
    r = torchrun(recipe, cut, zero, pinned, env={"TUBEMAE_KILL_AFTER_STEP": "3"})
    assert r.returncode != 0
    r = torchrun(recipe, cut, zero, pinned)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(straight) == losses(cut)
