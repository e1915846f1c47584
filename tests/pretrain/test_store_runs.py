"""Pre-training, fine-tuning and using a model with the data in object storage (moto's S3 server
and Python's http.server on 127.0.0.1, started and stopped here): the losses of the local run,
through a proxy that cuts connections too; a store that goes down mid-run ends it in one line
and the same command resumes it; no credential reaches the run folder or the logs."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.pretrain.conftest import subprocess_env, wait_for_step
from tests.pretrain.test_distributed import losses
from tests.storage import KEY_ID, SECRET, FaultyProxy, HttpServer, s3_env

pytestmark = pytest.mark.slow


def pretrain_cmd(recipe, run_dir, *overrides, patience=5):
    """The command of every run here: 32 steps, 2 loader workers, a checkpoint every 4."""
    return [sys.executable, "-m", "pretrain", "--config", recipe, f"run.dir={run_dir}",
            "log.picture_every=0", "data.num_workers=2", f"data.store_patience={patience}",
            "train.steps=32", "train.ckpt_every=4", *overrides]


def pretrain(recipe, run_dir, *overrides, env=None):
    return subprocess.run(pretrain_cmd(recipe, run_dir, *overrides), capture_output=True,
                          text=True, timeout=600, env=subprocess_env(**(env or {})))


def secret_free(run_dir, *texts):
    """Neither the secret key nor the key id in any file of the run folder or any output."""
    for text in texts:
        assert SECRET not in text and KEY_ID not in text
    for root, _, files in os.walk(run_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            assert SECRET.encode() not in data and KEY_ID.encode() not in data, name


@pytest.fixture(scope="module")
def local_losses(synthetic_set, tmp_path_factory):
    """The run every run below must equal: the same recipe on the local folder."""
    folder = tmp_path_factory.mktemp("local")
    recipe = _recipe(folder, synthetic_set)
    r = pretrain(recipe, str(folder / "run"))
    assert r.returncode == 0, r.stderr[-3000:]
    return recipe, losses(str(folder / "run"))


def _recipe(folder, shards):
    import yaml
    recipe = {
        "run": {"seed": 0},
        "data": {"shards": shards, "batch_size": 4, "stride": 2, "mask_ratio": 0.75,
                 "shuffle_buffer": 8, "repeats": 2},
        "model": {"preset": "vit_tiny", "img_size": 32, "patch_size": 8, "num_frames": 8,
                  "tubelet_size": 2, "drop_path": 0.0},
        "optim": {"lr": 1.0e-3, "warmup_steps": 2},
        "runtime": {"engine": "plain", "precision": "fp32"},
        "log": {"every": 1, "progress": False},
    }
    path = str(folder / "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return path


def test_pretraining_from_s3_and_http_gives_the_local_losses_through_cut_connections(
        local_losses, synthetic_set, moto, tmp_path):
    recipe, want = local_losses
    moto.bucket("runs")
    moto.upload(synthetic_set, "s3://runs/syn")
    web = HttpServer(os.path.dirname(synthetic_set), ranges=True)
    proxy = FaultyProxy(moto.port, seed=3, cut=0.6, error=0.1, refuse=0.1,
                        cut_bytes=(3000, 40000))
    try:
        runs = {
            "s3": ("s3://runs/syn", s3_env(moto.endpoint)),
            "http": (f"{web.url}/{os.path.basename(synthetic_set)}", {}),
            "s3-faulty": ("s3://runs/syn", s3_env(proxy.url)),
        }
        for name, (url, env) in runs.items():
            run_dir = str(tmp_path / name)
            r = pretrain(recipe, run_dir, f"data.shards={url}",
                         f"data.cache_dir={tmp_path / 'cache' / name}", env=env)
            assert r.returncode == 0, (name, r.stderr[-3000:])
            assert losses(run_dir) == want, name
            secret_free(run_dir, r.stdout, r.stderr)
            with open(os.path.join(run_dir, "config.yaml")) as f:
                assert url in f.read()
        # visualize takes a set in a store too (its test split)
        r = subprocess.run([sys.executable, "-m", "pretrain.visualize", str(tmp_path / "s3"),
                            "s3://runs/syn", "--out", str(tmp_path / "pictures")],
                           capture_output=True, text=True, timeout=300,
                           env=subprocess_env(**s3_env(moto.endpoint)))
        assert r.returncode == 0 and os.listdir(tmp_path / "pictures"), r.stderr[-3000:]
    finally:
        proxy.stop()
        web.stop()
    print(f"faulty proxy: {proxy.counts}")
    assert proxy.counts["cut"] >= 5, proxy.counts


def test_a_store_that_goes_down_ends_the_run_in_one_line_and_the_same_command_resumes(
        local_losses, synthetic_set, moto, tmp_path):
    recipe, want = local_losses
    moto.bucket("down")
    moto.upload(synthetic_set, "s3://down/syn")
    proxy = FaultyProxy(moto.port)
    run_dir = str(tmp_path / "run")
    env = s3_env(proxy.url)
    cmd = pretrain_cmd(recipe, run_dir, "data.shards=s3://down/syn", patience=3)
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env(**env))
        wait_for_step(run_dir, 2, timeout=300, proc=p)
        proxy.down = True            # from step 2 on, every connection is refused
        t0 = time.time()
        out, err = p.communicate(timeout=300)
        took = time.time() - t0
        assert p.returncode == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("pretrain: error:")]
        assert len(lines) == 1, err[-3000:]
        assert "s3://down/syn/train/shard-" in lines[0] and "store_patience" in lines[0]
        assert "Traceback" not in err
        print(f"store down: the run ended {took:.1f} s after the proxy went down")
        assert took < 60
        done = sorted(t for t in os.listdir(os.path.join(run_dir, "checkpoints"))
                      if os.path.isfile(os.path.join(run_dir, "checkpoints", t, "COMPLETE")))
        assert done and done[-1] < "step00000032"
        secret_free(run_dir, out, err)
        proxy.down = False           # back: the same command continues from the checkpoint
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                           env=subprocess_env(**env))
    finally:
        proxy.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {run_dir} at step" in r.stderr
    assert losses(run_dir) == want


def test_fine_tuning_and_using_a_model_on_a_set_in_s3(synthetic_set, moto, tmp_path):
    """finetune reads its three splits from S3; predict, features, preview and visualize take
    s3:// sets; each gives what it gives on the local folder."""
    from tests.finetune.conftest import write_ft_recipe
    moto.bucket("ftset")
    moto.upload(synthetic_set, "s3://ftset/syn")
    env = subprocess_env(**s3_env(moto.endpoint))

    def run(*args):
        r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                           timeout=600, env=env)
        assert r.returncode == 0, (args, r.stderr[-3000:])
        return r

    recipe, _ = write_ft_recipe(tmp_path, "s3://ftset/syn", train={"epochs": 1})
    ft = str(tmp_path / "ft")
    run("finetune", "--config", recipe, f"run.dir={ft}")
    report = json.load(open(os.path.join(ft, "report.json")))
    for where, name in (("s3://ftset/syn/test", "remote"),
                        (os.path.join(synthetic_set, "test"), "local")):
        run("finetune.predict", ft, where, "--out", str(tmp_path / f"{name}.jsonl"))
        run("finetune.features", ft, where, "--out", str(tmp_path / f"{name}.npy"))
    metrics = json.load(open(tmp_path / "remote.metrics.json"))
    assert metrics["top1"] == report["test"]["top1"]
    remote = [json.loads(line) for line in open(tmp_path / "remote.jsonl")]
    local = [json.loads(line) for line in open(tmp_path / "local.jsonl")]
    assert [r["top_k"] for r in remote] == [r["top_k"] for r in local]
    import numpy as np
    assert np.array_equal(np.load(tmp_path / "remote.npy"), np.load(tmp_path / "local.npy"))
    r = run("data.preview", "s3://ftset/syn", "--json", "--num-frames", "8", "--stride", "2",
            "--size", "32", "--patch", "8")
    assert json.loads(r.stdout.strip().splitlines()[-1])["num_samples"] > 0
    secret_free(ft, r.stdout, r.stderr)


def test_a_run_stopped_on_local_data_continues_on_the_same_set_copied_to_s3(
        local_losses, synthetic_set, moto, tmp_path):
    """data.shards may change on resume to a place that holds the same set (every shard's
    name and sha256): the run continues there with the uninterrupted run's losses; another
    set is refused, naming the key."""
    import signal
    recipe, want = local_losses
    moto.bucket("moved")
    moto.upload(synthetic_set, "s3://moved/syn")
    run_dir = str(tmp_path / "run")
    cmd = pretrain_cmd(recipe, run_dir)
    env = subprocess_env(**s3_env(moto.endpoint))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env)
    wait_for_step(run_dir, 6, timeout=300, proc=p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-3000:]
    other = tmp_path / "other"
    from data.prep.cli import main as prep_main
    assert prep_main(["synthetic", "--out", str(other), "--count", "64", "--num-classes", "4",
                      "--size", "32", "--frames", "24", "--shard-samples", "8", "--workers",
                      "0", "--seed", "1"]) == 0
    moto.upload(str(other), "s3://moved/other")
    r = subprocess.run([*cmd, "data.shards=s3://moved/other"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 2 and "data.shards:" in r.stderr, r.stderr[-3000:]
    r = subprocess.run([*cmd, "data.shards=s3://moved/syn"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {run_dir} at step" in r.stderr
    assert losses(run_dir) == want
