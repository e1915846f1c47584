"""k-shot subsets, frozen-feature probes and the label-efficiency study's bookkeeping."""
import json
import os

import numpy as np
import pytest

from data.manifest import load_shard_set
from data.prep.cli import main as prep
from data.prep.subset import choose, read_samples
from finetune.probe import knn_scores, probe


def test_subsets_are_balanced_seeded_and_nested(synthetic_set, tmp_path):
    labels = [i % 4 for i in range(45)]
    a, b = choose(labels, 3, seed=0), choose(labels, 3, seed=1)
    assert sorted(np.bincount([labels[i] for i in a])) == [3, 3, 3, 3]
    assert a != b and a == choose(labels, 3, seed=0)
    assert set(a) <= set(choose(labels, 6, seed=0))          # k=3 inside k=6, same seed
    out = str(tmp_path / "k2")
    assert prep(["subset", synthetic_set, "--per-class", "2", "--seed", "0", "--out", out]) == 0
    train = load_shard_set(out, "train")
    assert train.num_samples == 8 and train.classes == load_shard_set(synthetic_set).classes
    got = read_samples(train)
    src = {s["__key__"]: s for s in read_samples(load_shard_set(synthetic_set, "train"))}
    assert all(s == src[s["__key__"]] for s in got)            # bytes unchanged
    assert load_shard_set(out, "test").num_samples == load_shard_set(synthetic_set,
                                                                      "test").num_samples
    assert prep(["subset", str(tmp_path), "--per-class", "2", "--out", str(tmp_path / "x")]) == 2


def test_the_label_efficiency_layout_has_an_unlabeled_pool(tmp_path):
    out = str(tmp_path / "set")
    assert prep(["synthetic", "--out", out, "--pool", "12", "--train-per-class", "2",
                 "--val-per-class", "1", "--test-per-class", "3", "--num-classes", "4",
                 "--size", "32", "--frames", "8", "--hard", "--workers", "0"]) == 0
    pool = load_shard_set(os.path.join(out, "pool"))
    assert pool.num_samples == 12 and pool.classes == []
    assert {int(s["cls"]) for s in read_samples(pool)} == {-1}
    for split, n in (("train", 8), ("val", 4), ("test", 12)):
        s = load_shard_set(out, split)
        labels = [int(x["cls"]) for x in read_samples(s)]
        assert s.num_samples == n and sorted(np.bincount(labels)) == [n // 4] * 4
    keys = [x["__key__"] for sp in ("pool", "train", "val", "test")
            for x in read_samples(load_shard_set(os.path.join(out, sp)))]
    assert len(keys) == len(set(keys))                         # disjoint clips
    from data.preview import main as preview                   # the quick start draws the pool
    assert preview([os.path.join(out, "pool"), "--num-frames", "4", "--stride", "2",
                    "--size", "32", "--patch", "8", "--batch", "2"]) == 0


def test_probes_separate_separable_features_and_pick_settings_on_val():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))

    def split(n):
        y = np.arange(n) % 3
        return centres[y] + rng.normal(0, 1, (n, 8)), y
    feats = {"train": split(30), "val": split(30), "test": split(60)}
    out = probe(feats, 3, "video")
    assert out["linear"]["test"]["acc"] > 0.9 and out["knn"]["test"]["acc"] > 0.9
    assert out["linear"]["l2"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    noise = {s: (rng.normal(0, 1, x.shape), y) for s, (x, y) in feats.items()}
    assert probe(noise, 3, "video")["linear"]["test"]["acc"] < 0.6
    s = knn_scores(feats["train"][0], feats["train"][1], feats["test"][0], 3, 5)
    assert np.allclose(s.sum(1), 1.0)


def test_probe_cli_writes_a_report_for_an_export_and_a_random_encoder(synthetic_set, ft_recipe,
                                                                     tmp_path):
    import torch
    from finetune.probe import main as probe_main
    from pretrain.export import export_encoder
    from pretrain.model import ModelConfig, VideoMAE
    recipe, _ = ft_recipe
    m = VideoMAE(ModelConfig(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8))
    export_encoder(m.state_dict(), m.cfg, str(tmp_path / "export"), {})
    for init, name in ((str(tmp_path / "export"), "pre"), ("none", "rand")):
        assert probe_main(["--config", recipe, "--init", init,
                           f"run.dir={tmp_path / name}"]) == 0
        r = json.load(open(tmp_path / name / "report.json"))
        assert r["samples"] == {"train": 45, "val": 10, "test": 9}
        assert r["feature_dim"] == 96 and 0 <= r["linear"]["test"]["acc"] <= 1
    assert r["init"] is None
    del torch


@pytest.mark.slow
def test_study_runs_resumes_and_writes_tables_plot_and_budget(synthetic_set, ft_recipe,
                                                              tmp_path, capsys):
    from finetune.study import main as study
    from pretrain.config import load_config
    from pretrain.train import train as pretrain
    recipe, _ = ft_recipe
    pre = pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml", [
        f"data.shards={synthetic_set}/train", f"run.dir={tmp_path / 'pre'}",
        "model.num_frames=8",
        "model.img_size=32", "model.patch_size=8", "train.steps=4", "train.ckpt_every=2",
        "data.num_workers=0", "log.progress=false", "log.picture_every=0"]))
    args = ["--set", synthetic_set, "--encoder", pre["export"], "--config", recipe,
            "--out", str(tmp_path / "study"), "--ks", "2", "all", "--seeds", "0", "1",
            "--clips-per-epoch", "16", "--budget-run", str(tmp_path / "pre"),
            "--budget-k", "2", "train.epochs=1"]
    assert study([*args, "--jobs", "2", "--inits", "pretrained", "scratch", "untrained"]) == 0
    out = tmp_path / "study"
    res = json.load(open(out / "results.json"))
    assert set(res) == {"finetune", "linear", "knn"}
    row = res["finetune"]["2"]
    assert set(row["pretrained"]["seeds"]) == {"0", "1"} and "gain" in row
    assert "gain_untrained" in row and "wins_untrained" in row
    # the untrained control: the pre-training model's step-0 encoder in the export's geometry
    from pretrain.model import ModelConfig, VideoMAE
    from safetensors.torch import load_file
    import torch
    torch.manual_seed(1)
    export_dir = pre["export"] if os.path.isdir(pre["export"]) else os.path.dirname(pre["export"])
    meta = json.load(open(os.path.join(export_dir, "encoder.json")))
    want = VideoMAE(ModelConfig(**meta["model"])).state_dict()
    got = load_file(str(out / "untrained" / "s1" / "encoder.safetensors"))
    assert all(torch.equal(got[k], want["encoder." + k]) for k in got)
    assert "| 2 |" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_labels.png").stat().st_size > 1000
    budget = json.load(open(out / "budget.json"))
    assert [b["step"] for b in budget] == [0, 2, 4]
    assert (out / "budget" / "initial" / "s0" / "probe" / "report.json").is_file()
    assert all(len(b["linear_per_seed"]) == 2 for b in budget)      # every seed probed
    assert (out / "budget.png").stat().st_size > 1000
    assert os.path.islink(out / "tb" / "k2" / "pretrained" / "s0")
    # everything finished is reused: a second call (in this process) trains nothing
    mtime = os.path.getmtime(out / "runs" / "k2" / "scratch" / "s1" / "finetune" /
                             "report.json")
    assert study(args) == 0
    assert os.path.getmtime(out / "runs" / "k2" / "scratch" / "s1" / "finetune" /
                            "report.json") == mtime
    with pytest.raises(SystemExit):
        study([*args[:10], "--ks", "zero"])
    # some of the checkpoints only; a step without one is named with those there are
    assert study([*args, "--budget-steps", "4"]) == 0
    assert [b["step"] for b in json.load(open(out / "budget.json"))] == [0, 4]
    assert study([*args, "--budget-steps", "3"]) == 2
    assert "no finished checkpoint at step(s) [3]; it has [2, 4]" in capsys.readouterr().err
    # another pre-training run with the same checkpoint names: probed again, not reused by
    # the export's path (the probes of the first run's step 4 were there already)
    probe4 = next((out / "budget").glob("*4/s0/probe/report.json"))
    mtime = os.path.getmtime(probe4)
    assert study([*args, "--budget-steps", "4"]) == 0
    assert os.path.getmtime(probe4) == mtime                      # same run: reused
    pretrain(load_config("launch/configs/pretrain/tiny_synthetic.yaml", [
        f"data.shards={synthetic_set}/train", f"run.dir={tmp_path / 'pre2'}", "run.seed=7",
        "model.num_frames=8", "model.img_size=32", "model.patch_size=8", "train.steps=4",
        "train.ckpt_every=2", "data.num_workers=0", "log.progress=false",
        "log.picture_every=0"]))
    other = [a if a != str(tmp_path / "pre") else str(tmp_path / "pre2") for a in args]
    capsys.readouterr()
    assert study([*other, "--budget-steps", "4"]) == 0
    assert os.path.getmtime(probe4) != mtime
    src = json.loads((probe4.parents[2] / "export" / "encoder.json").read_text())["source"]
    assert src["run_dir"] == str(tmp_path / "pre2")
    assert f"{probe4.parent} was made with another encoder" in capsys.readouterr().err


def _sleep_job(what, seconds):
    import time
    time.sleep(seconds)


def _threads_job(what, out):
    import torch
    with open(os.path.join(out, what), "w") as f:
        f.write(str(torch.get_num_threads()))


def test_a_run_gets_the_same_threads_alone_as_in_the_pool(tmp_path, monkeypatch):
    """The thread count sets the order of sums, so a study resumed with one run left (run in
    the study's own process) must give that run the threads it would have had in the pool:
    cores / jobs. The study's own thread count is back afterwards."""
    import torch
    from finetune.study_run import run_pool
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run_pool([("pool_a", str(tmp_path)), ("pool_b", str(tmp_path))], jobs=2,
                 fn=_threads_job)
        run_pool([("alone", str(tmp_path))], jobs=2, fn=_threads_job)
        assert torch.get_num_threads() == 3
        run_pool([("one_job", str(tmp_path))], jobs=1, fn=_threads_job)
    finally:
        torch.set_num_threads(before)
    counts = {p.name: int(p.read_text()) for p in tmp_path.iterdir()}
    assert counts == {"pool_a": 2, "pool_b": 2, "alone": 2, "one_job": 3}, counts


@pytest.mark.slow
def test_a_sigterm_to_the_study_stops_its_pool_workers(tmp_path):
    """SIGTERM to the study's process (a scheduler, `kill PID`) interrupts it and terminates the
    workers it spawned, instead of leaving them to finish their runs."""
    import signal
    import threading
    import time
    import psutil
    from finetune.study_run import run_pool
    me = psutil.Process()
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(8.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        # a job that ignores the stop (it installs no handler) is killed after the grace
        run_pool([("sleep", 60), ("sleep", 60), ("sleep", 60)], jobs=2, fn=_sleep_job,
                 grace=3.0)
    timer.cancel()
    assert time.time() - t0 < 30
    time.sleep(0.5)
    workers = [c for c in me.children(recursive=True) if c.is_running() and
               c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline())]
    assert workers == []              # (multiprocessing's resource tracker may stay; no worker)
    assert signal.getsignal(signal.SIGTERM) == before      # the old handler is back


def test_the_study_plan_and_summary_are_pure_functions_of_the_spec():
    from finetune.study import StudySpec
    from finetune.study_plan import budget_tags, plan_jobs
    from finetune.study_report import summarize
    spec = StudySpec(set="s", encoder="e", config="c", out="o", ks=("4", "all"), seeds=(0, 1),
                     methods=("finetune", "linear"), inits=("pretrained", "scratch"))
    jobs = plan_jobs(spec)
    assert len(jobs) == 2 * 2 * 2 * 2 and jobs == plan_jobs(spec)
    assert [(j.k, j.seed, j.init, j.what) for j in jobs[:4]] == [
        ("4", 0, "pretrained", "finetune"), ("4", 0, "pretrained", "probe"),
        ("4", 0, "scratch", "finetune"), ("4", 0, "scratch", "probe")]
    assert jobs[0].run_dir == os.path.join("o", "runs", "k4", "pretrained", "s0", "finetune")
    assert [j.what for j in plan_jobs(StudySpec("s", "e", "c", "o", methods=("knn",)))][:1] == \
        ["probe"]
    tags = ["step00000020", "step00000010", "step00000030"]
    assert budget_tags(tags, (), "ck") == ["step00000010", "step00000020", "step00000030"]
    assert budget_tags(tags, (30, 10), "ck") == ["step00000010", "step00000030"]
    with pytest.raises(FileNotFoundError, match=r"no finished checkpoint at step\(s\) \[15\]; "
                                                r"it has \[10, 20, 30\]"):
        budget_tags(tags, (15,), "ck")
    s = summarize({("4", "finetune", "pretrained"): {0: 0.75, 1: 0.5},
                   ("4", "finetune", "scratch"): {0: 0.25, 1: 0.5}})
    row = s["finetune"]["4"]
    assert row["pretrained"]["mean"] == 0.625 and row["scratch"]["mean"] == 0.375
    assert row["gain"] == 0.25 and row["wins"] == "1/2"
    assert abs(row["pretrained"]["std"] - 0.1767766952966369) < 1e-12


def test_a_study_rerun_with_another_encoder_in_place_runs_again(synthetic_set, ft_recipe,
                                                                 tmp_path, capsys):
    """The same --out and --encoder path, but the encoder re-exported in place: the old runs
    are not reused (their numbers would be the old encoder's); they are moved aside and the
    runs made again. With nothing changed, everything is reused."""
    from finetune.study import main as study
    from pretrain.export import export_encoder
    from pretrain.model import ModelConfig, initial_model
    recipe, _ = ft_recipe
    mcfg = ModelConfig(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8,
                       tubelet_size=2)
    enc = str(tmp_path / "enc")
    export_encoder(initial_model(mcfg, 0).state_dict(), mcfg, enc, {})
    out = tmp_path / "study"
    args = ["--set", synthetic_set, "--encoder", enc, "--config", recipe, "--out", str(out),
            "--ks", "2", "--seeds", "0", "--methods", "linear", "--inits", "pretrained"]
    report = out / "runs" / "k2" / "pretrained" / "s0" / "probe" / "report.json"
    assert study(args) == 0
    first = report.read_text()
    mtime = os.path.getmtime(report)
    assert study(args) == 0 and os.path.getmtime(report) == mtime      # reused
    export_encoder(initial_model(mcfg, 1).state_dict(), mcfg, enc, {})  # in place
    capsys.readouterr()
    assert study(args) == 0
    assert "was made with another encoder, config or data; moved to" in capsys.readouterr().err
    stale = out / "runs" / "k2" / "pretrained" / "s0" / "probe.stale1" / "report.json"
    assert stale.read_text() == first                                    # kept, not lost
    assert report.read_text() != first                                   # made again


def test_ctrl_c_in_the_probe_is_one_line_and_exit_130(ft_recipe, monkeypatch, capsys):
    import finetune.probe as probe_module

    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(probe_module, "run_probe", interrupted)
    recipe, _ = ft_recipe
    assert probe_module.main(["--config", recipe, "--init", "none"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["finetune.probe: interrupted; run the same command to resume"]


@pytest.mark.slow
def test_a_group_sigterm_stops_a_two_job_study_at_checkpoints_and_the_rerun_matches(
        synthetic_set, ft_recipe, tmp_path):
    """SIGTERM to the study's whole process group (SLURM, a terminal) while its two fine-tunes
    train: both checkpoint and the study exits 143; the same command then finishes with the
    results of a study that was never stopped."""
    import signal
    import subprocess
    import sys
    import time
    from tests.pretrain.conftest import subprocess_env
    recipe, _ = ft_recipe

    def cmd(out):
        return [sys.executable, "-m", "finetune.study", "--set", synthetic_set, "--encoder",
                "none", "--config", recipe, "--out", str(out), "--ks", "2", "--seeds", "0",
                "1", "--methods", "finetune", "--inits", "scratch", "--jobs", "2",
                "--clips-per-epoch", "32", "train.epochs=4", "log.every=1",
                "data.num_workers=1"]
    env = subprocess_env()
    straight = subprocess.run(cmd(tmp_path / "straight"), capture_output=True, text=True,
                              env=env, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "cut"
    p = subprocess.Popen(cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
    runs = [out / "runs" / "k2" / "scratch" / f"s{s}" / "finetune" for s in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not all(
            (r / "metrics.jsonl").is_file() and len(open(r / "metrics.jsonl").readlines()) >= 2
            for r in runs):
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-3000:]
    assert "finetune.study: stopped by signal 15" in err and "Traceback" not in err
    assert all((r / "checkpoints" / "latest").is_file() for r in runs), err[-3000:]
    again = subprocess.run(cmd(out), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at step" in again.stderr
    a = json.load(open(tmp_path / "straight" / "results.json"))
    b = json.load(open(out / "results.json"))
    assert a == b


@pytest.mark.parametrize("module,signame", [("finetune.probe", "SIGINT"),
                                            ("finetune.study", "SIGINT"),
                                            ("finetune.probe", "SIGTERM")])
def test_a_signal_while_the_command_imports_is_one_line(tmp_path, module, signame):
    """A Ctrl-C (or SIGTERM) that lands while ``python -m finetune.probe`` or
    ``finetune.study`` still imports numpy and torch: one line and exit 130 (143), not a
    traceback from inside the import. numpy is replaced by a module that signals its importer."""
    import subprocess
    import sys
    from tests.pretrain.conftest import subprocess_env
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        f"import os, signal, time\nos.kill(os.getpid(), signal.{signame})\ntime.sleep(30)\n")
    env = subprocess_env(PYTHONPATH=f"{tmp_path / 'fake'}")
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == (130 if signame == "SIGINT" else 143), r.stderr[-2000:]
    what = "interrupted" if signame == "SIGINT" else "stopped by signal 15"
    assert r.stderr.strip().splitlines() == [f"{module}: {what} while starting; nothing was done"]
