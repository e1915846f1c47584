"""Stopping prep as users and machines do: Ctrl-C at a terminal (the whole process group gets
SIGINT), and kill -9 of its main process (the OOM killer, a scheduler). One line, and no
worker left behind."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import child_pids, process_alive, write_video


@pytest.fixture
def slow_prep(tmp_path):
    """A prep that runs for half a minute with one worker process: 100 inputs, each
    transcoded (distinct bytes: prep keeps one copy of identical files)."""
    data = open(write_video(str(tmp_path / "v.mp4"), n=120, h=240, w=320), "rb").read()
    for c in ("a", "b"):
        (tmp_path / "in" / c).mkdir(parents=True)
        for i in range(50):
            (tmp_path / "in" / c / f"v{i}.mp4").write_bytes(data + i.to_bytes(4, "little"))
    cmd = [sys.executable, "-m", "data.prep", "videos", str(tmp_path / "in"), "--out",
           str(tmp_path / "out"), "--workers", "1", "--short-side", "128"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not child_pids(p.pid):
        time.sleep(0.1)
    workers = child_pids(p.pid)
    assert workers, "prep started no worker"
    time.sleep(1.0)                                      # the worker is busy transcoding
    assert p.poll() is None, "prep finished before it could be stopped"
    yield p, workers
    for pid in [p.pid] + workers:          # whatever a failed test left (a worker holds the pipes)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    p.communicate()


def test_ctrl_c_to_the_process_group_is_one_line_and_no_worker_traceback(slow_prep):
    p, workers = slow_prep
    # a worker takes no interrupt of its own: it goes on, and says nothing
    os.kill(workers[0], signal.SIGINT)
    time.sleep(1.0)
    assert process_alive(workers[0]) and p.poll() is None
    os.killpg(p.pid, signal.SIGINT)                      # what a terminal's Ctrl-C does
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130
    lines = [x for x in err.strip().splitlines() if x.strip() and "WARNING" not in x
             and "%|" not in x and "input/s" not in x]
    assert lines == ["data.prep: interrupted; finished shards are kept, re-run the same "
                     "command to continue"], err[-3000:]
    assert not any(process_alive(w) for w in workers)


def test_kill_9_of_prep_takes_its_workers_with_it(slow_prep):
    p, workers = slow_prep
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    deadline = time.time() + 5
    while time.time() < deadline and any(process_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(process_alive(w) for w in workers), "a worker outlived its parent"
