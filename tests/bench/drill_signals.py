"""Signal drills: a signal to the whole process group at a random moment, then the same command
resumes; a try counts as good when the interrupted command stopped cleanly (exit 143, or 130
for SIGINT to a study, or 0 when the signal came after the end; SIGKILL: anything) and the
resumed command ends with exactly the result of an uninterrupted one.

Targets (``--targets``):
  pretrain  a tiny pre-training run, 2 loader workers; SIGTERM and SIGKILL; result: the losses
  finetune  a tiny fine-tune, 2 loader workers; SIGTERM and SIGINT; result: report.json (history
            without wall times, test metrics)
  study     ``finetune.study --jobs 2`` (two fine-tunes at once); SIGTERM and SIGINT; result:
            results.json

    python tests/bench/drill_signals.py [--tries 20] [--steps 8] [--targets pretrain finetune study]

Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env() -> dict:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"})
    return e


def recipe(work: str, data: str, steps: int) -> str:
    r = {"run": {"dir": os.path.join(work, "run"), "seed": 0},
         "data": {"shards": data, "batch_size": 4, "num_workers": 2,
                  "stride": 2, "mask_ratio": 0.75,
                  "shuffle_buffer": 8, "repeats": 2},
         "model": {"preset": "vit_tiny", "img_size": 32, "patch_size": 8, "num_frames": 8,
                   "tubelet_size": 2},
         "optim": {"lr": 1.0e-3, "warmup_steps": 2},
         "runtime": {"engine": "plain", "precision": "fp32"},
         "log": {"every": 1, "picture_every": 0, "progress": False},
         "train": {"steps": steps, "ckpt_every": 2}}
    path = os.path.join(work, "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(r, f)
    return path


def ft_recipe(work: str, data: str) -> str:
    r = {"run": {"dir": os.path.join(work, "ft"), "seed": 0},
         "data": {"shards": data, "batch_size": 8, "num_workers": 2, "stride": 2,
                  "flip": False, "mask": "none", "shuffle_buffer": 8, "test_clips": 2,
                  "test_crops": 3},
         "model": {"variant": 1, "tokenizer": "tubelet", "preset": "vit_tiny", "img_size": 32,
                   "patch_size": 8, "num_frames": 8, "tubelet_size": 2},
         "optim": {"lr": 1.0e-3, "warmup_epochs": 1},
         "runtime": {"engine": "plain", "precision": "fp32"},
         "log": {"every": 1, "progress": False},
         "train": {"epochs": 3}}
    path = os.path.join(work, "ft.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(r, f)
    return path


def targets(work: str, data: str, steps: int) -> dict:
    """name -> (command for a run folder, the folder whose metrics.jsonl shows progress, the
    comparable result of a finished run, the signals drilled)."""
    pre, ft = recipe(work, data, steps), ft_recipe(work, data)

    def study_cmd(out):
        return [sys.executable, "-m", "finetune.study", "--set", data, "--encoder", "none",
                "--config", ft, "--out", out, "--ks", "2", "--seeds", "0", "1", "--methods",
                "finetune", "--inits", "scratch", "--jobs", "2", "--clips-per-epoch", "32",
                "train.epochs=3", "data.num_workers=1"]

    def report(run_dir):
        with open(os.path.join(run_dir, "report.json")) as f:
            r = json.load(f)
        return ([{k: v for k, v in h.items() if k != "wall_s"} for h in r["history"]],
                r["test"])

    def study_result(out):
        with open(os.path.join(out, "results.json")) as f:
            return json.load(f)
    return {
        "pretrain": (lambda d: [sys.executable, "-m", "pretrain", "--config", pre,
                                f"run.dir={d}"], lambda d: d, losses,
                     (signal.SIGTERM, signal.SIGKILL)),
        "finetune": (lambda d: [sys.executable, "-m", "finetune", "--config", ft, "--init",
                                "none", f"run.dir={d}"], lambda d: d, report,
                     (signal.SIGTERM, signal.SIGINT)),
        "study": (study_cmd, lambda d: os.path.join(d, "runs", "k2", "scratch", "s0",
                                                     "finetune"), study_result,
                  (signal.SIGTERM, signal.SIGINT)),
    }


def start(cmd: list) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def losses(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def logged_steps(run_dir: str) -> int:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return len(f.readlines())
    except OSError:
        return 0


def one_try(target, run_dir: str, sig: int, steps: int, rng: random.Random,
            reference) -> tuple[bool, str]:
    cmd, progress, result, _ = target
    shutil.rmtree(run_dir, ignore_errors=True)
    p = start(cmd(run_dir))
    wait_for = rng.randint(0, steps - 2)  # interrupt after this many logged lines, plus jitter
    deadline = time.time() + 300
    while time.time() < deadline and logged_steps(progress(run_dir)) < wait_for and \
            p.poll() is None:
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))
    if p.poll() is not None:
        return False, "finished before the signal"
    os.killpg(p.pid, sig)
    _, err = p.communicate(timeout=300)
    if sig != signal.SIGKILL and p.returncode not in (0, 130, 143):
        return False, f"{signal.Signals(sig).name}: exit {p.returncode}: " \
                      f"{err.strip().splitlines()[-1:]}"
    if sig != signal.SIGKILL and "Traceback" in err:
        return False, f"{signal.Signals(sig).name}: a traceback"
    r = subprocess.run(cmd(run_dir), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        return False, f"resume: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
    if result(run_dir) != reference:
        return False, "the resumed result differs"
    return True, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", nargs="+", default=["pretrain", "finetune", "study"],
                    choices=["pretrain", "finetune", "study"])
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="drill_")
    rng = random.Random(args.seed)
    results = {}
    try:
        data = os.path.join(work, "data")
        subprocess.run([sys.executable, "-m", "data.prep", "synthetic", "--out", data,
                        "--count", "64", "--size", "32", "--frames", "24", "--shard-samples",
                        "8", "--workers", "0"], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
        for name in args.targets:
            target = targets(work, data, args.steps)[name]
            ref_dir = os.path.join(work, f"reference-{name}")
            subprocess.run(target[0](ref_dir), cwd=ROOT, env=env(), check=True,
                           capture_output=True)
            reference = target[2](ref_dir)
            for sig in target[3]:
                label = f"{name}: {signal.Signals(sig).name} to the group"
                good, failures = 0, []
                for i in range(args.tries):
                    ok, why = one_try(target, os.path.join(work, f"run-{name}"), sig,
                                      args.steps, rng, reference)
                    good += ok
                    if not ok:
                        failures.append(why)
                    print(f"  {label} try {i + 1}: {'ok' if ok else why}", file=sys.stderr,
                          flush=True)
                results[label] = {"tries": args.tries, "good": good, "failures": failures}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'drill':<36} {'tries':>6} {'good':>6}")
    for name, r in results.items():
        print(f"{name:<36} {r['tries']:6d} {r['good']:6d}")
    print(json.dumps({"bench": "drill_signals", "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
