import json
import os
import subprocess
import sys

import numpy as np
import pytest

from finetune.train import FinetuneConfig, train
from pretrain.config import load_config


def test_finetune_evaluates_keeps_the_best_and_reports(ft_recipe):
    recipe, run_dir = ft_recipe
    report = train(load_config(recipe, ["optim.mixup=0.8", "optim.cutmix=1.0"],
                               schema=FinetuneConfig))
    on_disk = json.load(open(os.path.join(run_dir, "report.json")))
    assert on_disk["best"]["epoch"] == report["best"]["epoch"]
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    test = on_disk["test"]
    assert test["samples"] == 9 and {"acc", "auc", "top1", "top5"} <= set(test)
    assert sum(r["samples"] for r in test["per_class"]) == 9
    assert [r["class"] for r in test["per_class"]] == on_disk["classes"]
    assert np.array(test["confusion"]).sum() == 9
    assert on_disk["config"]["optim"]["mixup"] == 0.8 and on_disk["init"] is None
    ckpts = os.listdir(os.path.join(run_dir, "checkpoints"))
    assert on_disk["best"]["tag"] in ckpts            # the best is never pruned
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(run_dir, "tb"), size_guidance={"images": 4}).Reload()
    assert {"val/confusion", "test/confusion"} <= set(acc.Tags()["images"])
    assert "val/auc" in acc.Tags()["scalars"]


def test_cli_names_bad_keys_and_missing_splits(ft_recipe, tmp_path):
    recipe, _ = ft_recipe
    r = subprocess.run([sys.executable, "-m", "finetune", "--config", recipe, "--init", "none",
                        "model.tokeniser=t2t"], capture_output=True, text=True)
    assert r.returncode == 2 and "model.tokeniser" in r.stderr and "model.tokenizer" in r.stderr
    r = subprocess.run([sys.executable, "-m", "finetune", "--config", recipe, "--init", "none",
                        f"data.shards={tmp_path}"], capture_output=True, text=True)
    assert r.returncode == 2 and "splits" in r.stderr


def test_compare_writes_a_table_curves_and_one_tensorboard_folder(synthetic_set, ft_recipe,
                                                                  tmp_path):
    recipe, _ = ft_recipe
    import yaml
    from finetune.compare import main as compare
    tree = yaml.safe_load(open(recipe))
    tree["model"] = {"family": "uniformer", "preset": "uniformer_tiny", "img_size": 32,
                     "num_frames": 8}
    (tmp_path / "uniformer.yaml").write_text(yaml.safe_dump(tree))
    out = tmp_path / "cmp"
    assert compare(["--sets", synthetic_set, "--config", recipe, "--out", str(out),
                    "--uniformer-config", str(tmp_path / "uniformer.yaml"),
                    "train.epochs=1"]) == 0
    md = (out / "results.md").read_text()
    for row in ("uniformer", "uniformer_head"):
        report = json.load(open(out / "set" / row / "report.json"))
        assert report["model"]["family"] == row and f"| {row} |" in md
    for tok in ("uniform", "tubelet", "t2t"):
        assert f"| {tok} |" in md
        assert (out / "tb" / "set" / tok).exists()
    assert "epochs to converge" in md
    from PIL import Image
    assert Image.open(out / "curves.png").size[0] > 100


@pytest.mark.slow
def test_killed_and_resumed_finetune_equals_the_straight_run(ft_recipe, tmp_path):
    recipe, _ = ft_recipe
    from tests.pretrain.conftest import subprocess_env

    def run(run_dir, **env):
        return subprocess.run([sys.executable, "-m", "finetune", "--config", recipe, "--init",
                               "none", f"run.dir={run_dir}", "data.num_workers=2",
                               "log.every=5"],
                              capture_output=True, text=True, env=subprocess_env(**env))
    straight, cut = tmp_path / "a", tmp_path / "b"
    r = run(straight)
    assert r.returncode == 0, r.stderr
    # the loop both stages share: step lines at every log step and at the last one, an ETA,
    # and the closing summary
    assert "step 5/12 loss" in r.stderr and "step 12/12 loss" in r.stderr and "eta" in r.stderr
    assert "finetune: summary: steps 0->12" in r.stderr
    # the window after an evaluation counts neither the evaluation nor the waits before it
    rows = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    waits = [row["data_wait"] for row in rows if "data_wait" in row]
    assert len(waits) == 3 and all(0 <= w <= 1 for w in waits), waits
    # 45 samples / batch 8 = 6 steps per epoch: killed mid-epoch 2, resumed from epoch 1
    assert run(cut, TUBEMAE_KILL_AFTER_STEP="8").returncode != 0
    r = run(cut)
    assert r.returncode == 0 and "resuming at step 6" in r.stderr
    assert "finetune: summary: steps 6->12" in r.stderr
    a = json.load(open(straight / "report.json"))
    b = json.load(open(cut / "report.json"))
    strip = lambda h: [{k: v for k, v in row.items() if k != "wall_s"} for row in h]
    assert strip(a["history"]) == strip(b["history"])
    assert a["test"] == b["test"]


def test_medmnist_straight_from_the_official_npz_file(tmp_path, capsys):
    from tests.conftest import make_medmnist_npz
    npz = str(tmp_path / "nodulemnist3d.npz")
    make_medmnist_npz(npz, n=(16, 6, 6), classes=2)
    cfg = load_config("launch/configs/finetune/medmnist3d_vivit.yaml", [
        f"data.shards={npz}", f"run.dir={tmp_path / 'run'}", "data.batch_size=8",
        "data.num_workers=0", "model.preset=vit_tiny", "runtime.precision=fp32",
        "train.epochs=1", "log.progress=false"], schema=FinetuneConfig)
    report = train(cfg)
    assert report["task"] == "volume" and report["test"]["samples"] == 6
    assert report["classes"] == ["benign", "malignant"]
    assert os.path.isfile(tmp_path / "run" / "data" / "nodulemnist3d" / "test" / "manifest.json")
    # the epoch and closing lines name the metric that chose the epoch: AUC for volumes
    err = capsys.readouterr().err
    assert f"best epoch 1 (val auc {report['best']['primary']:.4f})" in err
    assert "(best epoch 1 by val auc)" in err


def test_a_nan_step_is_skipped_and_counted_without_waiting_and_a_streak_stops(ft_recipe,
                                                                              monkeypatch):
    import pytest
    import torch
    from finetune.vivit import ViViT
    recipe, run_dir = ft_recipe
    real, calls = ViViT.forward, {"n": 0}

    def forward(self, x):
        out = real(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3 or calls.get("always"):
                out = out * float("nan")
        return out
    monkeypatch.setattr(ViViT, "forward", forward)
    report = train(load_config(recipe, ["train.epochs=1", "log.every=1"],
                               schema=FinetuneConfig))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert max(r.get("nonfinite_total", 0) for r in rows) == 1
    train_rows = [r for r in rows if r.get("split") == "train"]
    # the window of step 3 held only the skipped step; every later step trains on finite weights
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows if r["step"] != 3)
    assert report["test"]["samples"] == 9
    calls["always"] = True
    with pytest.raises(RuntimeError, match="NaN or inf 5 times in a row"):
        train(load_config(recipe, ["train.epochs=2", "log.every=1",
                                   f"run.dir={run_dir}_nan"], schema=FinetuneConfig))


def test_a_nan_streak_in_finetuning_exits_3_in_one_line_and_stops_the_loader_workers(
        ft_recipe, monkeypatch, capsys):
    """The NaN policy is the loop's, so fine-tuning ends as pre-training does: exit 3 and one
    line naming the intact checkpoint, no traceback, and no loader worker left running."""
    import time
    import psutil
    from finetune.__main__ import main
    from finetune.vivit import ViViT
    recipe, run_dir = ft_recipe
    real = ViViT.forward
    monkeypatch.setattr(ViViT, "forward",
                        lambda self, x: real(self, x) * (float("nan") if self.training else 1.0))
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}    # e.g. a resource tracker
    rc = main(["--config", recipe, "--init", "none", "train.epochs=2", "log.every=1",
               "data.num_workers=2"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "finetune: error: the loss was NaN or inf 5 times in a row (up to step 5)" in err
    assert "(none yet) is intact" in err and "Traceback" not in err
    time.sleep(0.5)
    alive = [c for c in me.children(recursive=True) if c.pid not in before and
             c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [c.cmdline() for c in alive]


def test_a_really_full_disk_while_fine_tuning_is_one_line(ft_recipe, small_fs):
    from tests.pretrain.conftest import subprocess_env
    recipe, _ = ft_recipe
    r = subprocess.run([sys.executable, "-m", "finetune", "--config", recipe, "--init", "none",
                        f"run.dir={small_fs / 'ft'}", "data.num_workers=2", "train.epochs=1"],
                       capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune: error: could not write") and "Traceback" not in r.stderr
    assert not list(small_fs.rglob("*.tmp"))


def test_ctrl_c_while_the_command_is_still_importing_is_one_line_and_130(monkeypatch, capsys):
    """A Ctrl-C (or SIGINT to the group) that lands while the command imports torch and the
    trainer: one line and exit 130, not a KeyboardInterrupt traceback (found by the drill)."""
    import types
    from finetune.__main__ import main

    class Importing(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt
    monkeypatch.setitem(sys.modules, "finetune.train", Importing("finetune.train"))
    assert main(["--config", "launch/configs/finetune/synthetic_vivit.yaml", "--init",
                 "none"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "finetune: interrupted; run the same command to resume"]


def _children_left(me, before: set) -> list:
    import time
    import psutil
    time.sleep(0.5)
    return [c.cmdline() for c in me.children(recursive=True) if c.pid not in before and
            c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def _ctrl_c(times: int):
    import os
    import signal
    for _ in range(times):          # the second lands while the first is being handled
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_final_test_phase(ft_recipe, monkeypatch, capfd, presses):
    """One Ctrl-C while the best checkpoint is being tested lets the test finish (a line says
    so) and the report is written; a second one stops at once: one line, exit 130, no loader
    worker left, and the same command then writes the report (found hanging after a
    traceback)."""
    import json
    import os
    import psutil
    import finetune.train as ft
    from finetune.__main__ import main
    recipe, run_dir = ft_recipe
    real = ft.evaluate

    def evaluate(engine, cfg, split, *a, **k):
        if split == "test":
            _ctrl_c(presses)
        return real(engine, cfg, split, *a, **k)
    monkeypatch.setattr(ft, "evaluate", evaluate)
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    args = ["--config", recipe, "--init", "none", "train.epochs=1", "data.num_workers=2"]
    rc = main(args)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert _children_left(me, before) == []
    report = os.path.join(run_dir, "report.json")
    if presses == 1:
        assert rc == 0, err
        assert "finishing the test first; Ctrl-C again to stop now" in err
        assert os.path.isfile(report)
        return
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "finetune: interrupted; run the same command to resume"
    assert not os.path.exists(report)
    monkeypatch.setattr(ft, "evaluate", real)
    assert main(args) == 0
    with open(report) as f:
        assert json.load(f)["test"]["samples"] > 0


def test_two_ctrl_c_in_a_row_while_training_stop_at_once_and_the_rerun_resumes(
        ft_recipe, monkeypatch, capfd):
    """Two Ctrl-C in a row in the middle of a step: the run stops at once (the first alone
    would checkpoint at the step's end) with one line and exit 130, its loader workers gone,
    and the same command resumes from the last checkpoint to the end (found hanging)."""
    import os
    import psutil
    from finetune.__main__ import main
    from finetune.train import FinetuneStage
    recipe, run_dir = ft_recipe
    real, calls = FinetuneStage.forward, []

    def forward(self, batch):
        calls.append(1)
        if len(calls) == 6:
            _ctrl_c(2)
        return real(self, batch)
    monkeypatch.setattr(FinetuneStage, "forward", forward)
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    args = ["--config", recipe, "--init", "none", "train.epochs=2", "data.num_workers=2"]
    rc = main(args)
    err = capfd.readouterr().err
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "finetune: interrupted; run the same command to resume"
    assert "Traceback" not in err
    assert _children_left(me, before) == []
    monkeypatch.setattr(FinetuneStage, "forward", real)
    assert main(args) == 0
    assert os.path.isfile(os.path.join(run_dir, "report.json"))
