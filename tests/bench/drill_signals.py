"""Signal drills: SIGTERM to the whole process group, and SIGKILL to it, at random moments of a
tiny pre-training run with 2 loader workers; then the same command resumes it. A try counts as
good when the interrupted run left a usable checkpoint (SIGTERM: exit 143 and a checkpoint
saved, or exit 0 when the signal came after the last step) and the resumed run ends with
exactly the losses of an uninterrupted run.

    python tests/bench/drill_signals.py [--tries 20] [--steps 8]

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


def start(path: str, run_dir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pretrain", "--config", path,
                             f"run.dir={run_dir}"], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def losses(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def logged_steps(run_dir: str) -> int:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return len(f.readlines())
    except OSError:
        return 0


def one_try(path: str, run_dir: str, sig: int, steps: int, rng: random.Random,
            reference: dict) -> tuple[bool, str]:
    shutil.rmtree(run_dir, ignore_errors=True)
    p = start(path, run_dir)
    target = rng.randint(0, steps - 2)  # interrupt after this many logged steps, plus jitter
    deadline = time.time() + 120
    while time.time() < deadline and logged_steps(run_dir) < target and p.poll() is None:
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))
    if p.poll() is not None:
        return False, "finished before the signal"
    os.killpg(p.pid, sig)
    _, err = p.communicate(timeout=120)
    late = p.returncode == 0 and "done at step" in err  # the signal came after the last step
    if sig == signal.SIGTERM and not late and (p.returncode != 143 or
                                               "checkpoint saved" not in err):
        return False, f"SIGTERM: exit {p.returncode}: {err.strip().splitlines()[-1:]}"
    r = subprocess.run([sys.executable, "-m", "pretrain", "--config", path,
                        f"run.dir={run_dir}"], cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        return False, f"resume: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
    if losses(run_dir) != reference:
        return False, "resumed losses differ"
    return True, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="drill_")
    rng = random.Random(args.seed)
    try:
        data = os.path.join(work, "data")
        subprocess.run([sys.executable, "-m", "data.prep", "synthetic", "--out", data,
                        "--count", "64", "--size", "32", "--frames", "24", "--shard-samples",
                        "8", "--workers", "0"], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
        path = recipe(work, data, args.steps)
        ref_dir = os.path.join(work, "reference")
        subprocess.run([sys.executable, "-m", "pretrain", "--config", path,
                        f"run.dir={ref_dir}"], cwd=ROOT, env=env(), check=True,
                       capture_output=True)
        reference = losses(ref_dir)
        results = {}
        for name, sig in (("SIGTERM to the process group", signal.SIGTERM),
                          ("SIGKILL to the process group", signal.SIGKILL)):
            good, failures = 0, []
            for i in range(args.tries):
                ok, why = one_try(path, os.path.join(work, "run"), sig, args.steps, rng,
                                  reference)
                good += ok
                if not ok:
                    failures.append(why)
                print(f"  {name} try {i + 1}: {'ok' if ok else why}", file=sys.stderr,
                      flush=True)
            results[name] = {"tries": args.tries, "good": good, "failures": failures}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'drill':<32} {'tries':>6} {'good':>6}")
    for name, r in results.items():
        print(f"{name:<32} {r['tries']:6d} {r['good']:6d}")
    print(json.dumps({"bench": "drill_signals", "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
