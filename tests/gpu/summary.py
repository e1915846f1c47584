"""The one JSON summary of ``launch/gpu_check.sh``, from what its phases left in DEST: the CUDA
tests' JUnit file (``tests.xml``), the JSON lines of ``bench_e2e.py`` (``e2e.log``) and of
``bench_pretrain.py`` (``step.log``), and each phase's exit status and wall time.

    python tests/gpu/summary.py --dest runs/gpu_check --budget 480 --wall 431 \\
        --phase tests:0:190 --phase e2e:0:170 --phase step:124:72

Writes DEST/summary.json, prints it as one line, and exits 0 only when every phase passed and
no test failed. A phase stopped at the end of its share of the budget exits 124 (or 137).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET


def bench_line(path: str, bench: str) -> dict | None:
    """The last JSON line of ``bench`` in the log at ``path``."""
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("bench") == bench:
                return row
    return None


def test_counts(path: str) -> dict | None:
    """{passed, failed, skipped} from a JUnit XML file, or None when there is none."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites)
         for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"],
            "failed": n["failures"] + n["errors"], "skipped": n["skipped"]}


def versions() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "driver": None}
    try:
        out["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    for mod in ("deepspeed", "transformers", "av", "webdataset"):
        try:     # (deepspeed prints its accelerator on stdout: not into the summary line)
            with contextlib.redirect_stdout(sys.stderr):
                out[mod] = __import__(mod).__version__
        except Exception:  # missing or broken: the summary says so, the check goes on
            out[mod] = None
    return out


def device() -> tuple[str, int]:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.device_count()
    return "cpu", 0


def summarize(dest: str, budget: int, wall: int, phases: dict) -> dict:
    tests = test_counts(os.path.join(dest, "tests.xml"))
    e2e = (bench_line(os.path.join(dest, "e2e.log"), "e2e") or {}).get("plain")
    step = bench_line(os.path.join(dest, "step.log"), "pretrain") or {}
    best = max(step.get("rows") or [], key=lambda r: r.get("clips_per_s", 0), default=None)
    name, gpus = device()
    return {
        "check": "gpu", "device": name, "gpus": gpus, "versions": versions(), "tests": tests,
        "e2e": e2e and {"clips_s": round(e2e["clips_s"], 1),
                        "data_wait": round(e2e["data_wait"], 3), "peak_mb": e2e["memory_mb"],
                        "clips_s_windows": e2e["clips_s_windows"]},
        "model_step": best and {"row": best["name"], "batch": best["batch"],
                                "clips_s": best["clips_per_s"], "mfu": best.get("mfu")},
        "phases": phases, "wall_s": wall, "budget_s": budget, "over_budget": wall > budget,
        "ok": bool(tests) and not tests["failed"] and all(p["exit"] == 0
                                                          for p in phases.values()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--wall", type=int, required=True)
    ap.add_argument("--phase", action="append", default=[], metavar="NAME:EXIT:SECONDS",
                    help="EXIT is a number, or 'skipped' for a phase the budget left out")
    args = ap.parse_args(argv)
    phases = {}
    for spec in args.phase:
        name, rc, seconds = spec.split(":")
        phases[name] = {"exit": int(rc) if rc.lstrip("-").isdigit() else rc,
                        "wall_s": int(seconds or 0),
                        "past_its_share": rc in ("124", "137")}
    summary = summarize(args.dest, args.budget, args.wall, phases)
    with open(os.path.join(args.dest, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    if summary["over_budget"]:
        print(f"gpu_check: took {args.wall}s, past its budget of {args.budget}s", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
