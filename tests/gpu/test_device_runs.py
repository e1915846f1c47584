"""Whole commands on each device: pre-training stopped by SIGTERM and resumed, a fine-tune and
what users do with it (predict, features, the HuggingFace export), NVDEC, and two processes."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.gpu.conftest import DEVICES, cuda_missing, gpus_missing, needs_cuda
from tests.pretrain.conftest import subprocess_env
from tests.pretrain.test_train import losses, run_cli

pytestmark = pytest.mark.gpu

# (device, precision, compile). The CPU case is exact; on CUDA, bf16 and atomics in the
# backward pass make two runs of the same steps differ in the last bits, which grow over steps.
PRETRAIN = [pytest.param(("cpu", "fp32", False), id="cpu-fp32", marks=pytest.mark.slow),
            pytest.param(("cuda", "bf16", False), id="cuda-bf16", marks=needs_cuda),
            pytest.param(("cuda", "bf16", True), id="cuda-bf16-compiled", marks=needs_cuda)]
GPU_LOSS_RTOL = 0.02     # relative, any logged step of 20; a wrong resume is off by far more


@pytest.mark.parametrize("case", PRETRAIN)
def test_pretraining_stopped_by_sigterm_resumes_as_the_straight_run(case, tiny_recipe, tmp_path):
    """20 steps straight; the same run sent SIGTERM after step 8 (by the loop's fault injection,
    so the signal lands on a step however fast steps are) checkpoints, exits 143, and the same
    command resumes to step 20. Every logged loss of the two runs agrees: bit for bit on the
    CPU, within GPU_LOSS_RTOL on CUDA (nondeterministic kernels)."""
    device, precision, compiled = case
    recipe, _ = tiny_recipe
    env = {"DS_ACCELERATOR": "cuda"} if device == "cuda" else {}
    common = [f"runtime.device={device}", f"runtime.precision={precision}",
              f"runtime.compile={str(compiled).lower()}", "train.steps=20", "train.ckpt_every=5",
              "log.every=1", "log.picture_every=0", "data.num_workers=2"]
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    r = run_cli(recipe, f"run.dir={straight}", *common, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(rf"1 process\(es\) on {device}\b.*precision {precision}", r.stderr), \
        r.stderr[-2000:]
    r = run_cli(recipe, f"run.dir={cut}", *common, env={**env, "TUBEMAE_KILL_AFTER_STEP": "8:TERM"},
                timeout=900)
    assert r.returncode == 143, r.stderr[-3000:]
    assert "checkpoint saved" in r.stderr
    tag = open(os.path.join(cut, "checkpoints", "latest")).read().strip()
    saved = int(tag[len("step"):])
    assert 8 <= saved < 20
    r = run_cli(recipe, f"run.dir={cut}", *common, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stderr and f"at step {saved}" in r.stderr
    a, b = losses(straight), losses(cut)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    print(f"{device} {precision} compile={compiled}: resumed at step {saved}; largest relative "
          f"loss difference {worst:.2e}")
    if device == "cpu":
        assert a == b
    else:
        assert worst < GPU_LOSS_RTOL, (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_fine_tune_predict_features_and_hf_export_on_the_device(device, synthetic_set, tmp_path,
                                                                  capsys):
    """A ViViT fine-tune on ``device`` (bf16 on CUDA), then what users do with it on the same
    device: predict on the test split gives the run's report.json test metrics exactly (the same
    stream, batches and precision); features are one finite row per sample and agree with the
    CPU's; the HuggingFace export loads in transformers and classifies on the device."""
    from finetune.__main__ import main as finetune
    from finetune.export import main as export
    from finetune.features import main as features
    from finetune.predict import main as predict
    from tests.finetune.conftest import write_ft_recipe
    precision = "bf16" if device == "cuda" else "fp32"
    path, run_dir = write_ft_recipe(tmp_path, synthetic_set,
                                    data={"num_workers": 2, "test_clips": 2, "test_crops": 2},
                                    model={"norm_layout": "pooled"},
                                    runtime={"device": device, "precision": precision})
    assert finetune(["--config", path, "--init", "none"]) == 0
    assert f"on {device}" in capsys.readouterr().err
    report = json.load(open(os.path.join(run_dir, "report.json")))
    test = os.path.join(synthetic_set, "test")
    out = tmp_path / "preds.jsonl"
    assert predict([run_dir, test, "--device", device, "--out", str(out)]) == 0
    metrics = json.load(open(tmp_path / "preds.metrics.json"))
    for key in ("samples", "top1", "top5", "acc"):
        assert metrics[key] == report["test"][key], (key, metrics, report["test"])
    feats = {}
    for where in dict.fromkeys([device, "cpu"]):
        f = tmp_path / f"feats_{where}.npy"
        assert features([run_dir, test, "--device", where, "--out", str(f)]) == 0
        feats[where] = np.load(f)
    a, b = feats[device], feats["cpu"]
    assert a.shape[0] == report["test"]["samples"] and np.isfinite(a).all()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()         # fp32 features; TF32 convolutions on CUDA
    hf = tmp_path / "hf"
    assert export([run_dir, "--out", str(tmp_path / "model"), "--hf", str(hf)]) == 0
    from transformers import VideoMAEForVideoClassification
    model = VideoMAEForVideoClassification.from_pretrained(str(hf)).to(device).eval()
    cfg = model.config
    clip = torch.randn(1, cfg.num_frames, cfg.num_channels, cfg.image_size, cfg.image_size,
                       device=device)
    with torch.no_grad():
        logits = model(pixel_values=clip).logits
    assert logits.shape == (1, len(report["classes"])) and torch.isfinite(logits).all()


@pytest.mark.skipif(cuda_missing() is not None, reason=cuda_missing() or "")
def test_nvdec_decodes_the_cpu_decoders_frames():
    """NVDEC (PyNvVideoCodec) against the CPU decoder on videos of several sizes: within 1
    level of 255 on average and 3 at most (2026-11-23 on an H100: 0.65 and 2)."""
    pytest.importorskip("PyNvVideoCodec", reason="PyNvVideoCodec is not installed (NVDEC)")
    from data.decode import decode_frames, encode_video
    from data.nvdec import NvdecDecoder
    rng = np.random.default_rng(0)
    dec = NvdecDecoder(0)
    diffs = []
    for h, w in ((90, 160), (240, 320), (256, 456)):
        frames = rng.integers(0, 255, (12, h, w, 3), dtype=np.uint8)
        video = encode_video(list(frames), fps=25)
        got = dec.frames(video, lambda n: np.arange(0, n, 2))
        want = decode_frames(video, list(range(0, 12, 2)))
        diffs.append(np.abs(got.astype(float) - want.astype(float)).ravel())
    d = np.concatenate(diffs)
    assert dec.cpu_fallbacks == 0
    assert d.mean() < 1.0 and d.max() <= 3, (d.mean(), d.max())


@pytest.mark.skipif(gpus_missing(2) is not None, reason=gpus_missing(2) or "")
def test_two_processes_with_nccl_and_zero_1(tiny_recipe, tmp_path):
    """Two processes on two GPUs (torchrun, NCCL), DeepSpeed ZeRO-1, bf16: the run finishes,
    says so on its start line, and its losses are finite."""
    recipe, _ = tiny_recipe
    run_dir = str(tmp_path / "two")
    env = subprocess_env(DS_ACCELERATOR="cuda")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "pretrain", "--config", recipe,
                        f"run.dir={run_dir}", "runtime.device=cuda", "runtime.engine=deepspeed",
                        "runtime.zero_stage=1", "runtime.precision=bf16", "train.steps=6",
                        "log.picture_every=0"], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es) on cuda" in r.stderr, r.stderr[-2000:]
    assert all(np.isfinite(v) for v in losses(run_dir).values())
