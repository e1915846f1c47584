"""launch/gpu_check.sh where there is no GPU, and the summary it writes from its phases' files."""
import json
import os
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(tmp_path, path_dirs=()):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), env.get("PATH", "")])
    env["OUT"] = str(tmp_path / "out")
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", "launch/gpu_check.sh"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    """No nvidia-smi; then a driver tool that lists a GPU torch cannot use (a container without
    the device): one line each time, exit 0, nothing run and nothing written."""
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    for dirs in ((), (fake,)):
        r = _check(tmp_path, dirs)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n") == 1 and r.stdout.startswith("gpu_check: no CUDA GPU")
        assert r.stderr == ""
        assert not (tmp_path / "out").exists()


def _write_phase_files(dest, failures=0):
    dest.mkdir(parents=True)
    (dest / "tests.xml").write_text(
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="14" '
        f'failures="{failures}" errors="0" skipped="3"></testsuite></testsuites>')
    e2e = {"bench": "e2e", "plain": {"clips_s": 612.345, "data_wait": 0.41234,
                                     "memory_mb": 30211, "clips_s_windows": [300.0, 610.2, 614.5],
                                     "loss": [1.2, 1.1]}}
    (dest / "e2e.log").write_text("pretrain: new run ...\n" + json.dumps(e2e) + "\n")
    step = {"bench": "pretrain", "rows": [
        {"name": "ours_decmask", "batch": 192, "clips_per_s": 1400.0, "mfu": 0.28},
        {"name": "ours_compiled", "batch": 192, "clips_per_s": 1534.2, "mfu": 0.321}]}
    (dest / "step.log").write_text("noise\n{not json\n" + json.dumps(step) + "\n")


def test_the_summary_takes_each_phases_figures(tmp_path):
    from tests.gpu.summary import main
    dest = tmp_path / "check"
    _write_phase_files(dest)
    assert main(["--dest", str(dest), "--budget", "480", "--wall", "431",
                 "--phase", "tests:0:190", "--phase", "e2e:0:170", "--phase", "step:0:71"]) == 0
    s = json.load(open(dest / "summary.json"))
    assert s["tests"] == {"passed": 11, "failed": 0, "skipped": 3}
    assert s["e2e"] == {"clips_s": 612.3, "data_wait": 0.412, "peak_mb": 30211,
                        "clips_s_windows": [300.0, 610.2, 614.5]}
    assert s["model_step"] == {"row": "ours_compiled", "batch": 192, "clips_s": 1534.2,
                               "mfu": 0.321}
    assert s["ok"] and not s["over_budget"] and s["versions"]["torch"]
    assert s["phases"]["step"] == {"exit": 0, "wall_s": 71, "past_its_share": False}


def test_the_summary_fails_on_a_failed_test_a_stopped_phase_or_the_budget(tmp_path, capsys):
    from tests.gpu.summary import main
    dest = tmp_path / "failed"
    _write_phase_files(dest, failures=1)
    assert main(["--dest", str(dest), "--budget", "480", "--wall", "400",
                 "--phase", "tests:1:190", "--phase", "e2e:0:170", "--phase", "step:0:40"]) == 1
    assert json.load(open(dest / "summary.json"))["tests"]["failed"] == 1
    dest = tmp_path / "stopped"
    _write_phase_files(dest)
    assert main(["--dest", str(dest), "--budget", "480", "--wall", "505",
                 "--phase", "tests:0:190", "--phase", "e2e:124:192",
                 "--phase", "step:skipped:0"]) == 1
    s = json.load(open(dest / "summary.json"))
    assert s["phases"]["e2e"]["past_its_share"] and s["phases"]["step"]["exit"] == "skipped"
    assert s["over_budget"] and "past its budget of 480s" in capsys.readouterr().err
    dest = tmp_path / "nothing"
    dest.mkdir()
    assert main(["--dest", str(dest), "--budget", "480", "--wall", "3",
                 "--phase", "tests:2:3"]) == 1
    s = json.load(open(dest / "summary.json"))
    assert s["tests"] is None and s["e2e"] is None and s["model_step"] is None
