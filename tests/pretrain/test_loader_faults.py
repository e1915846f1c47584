"""A loader worker killed (the OOM killer's usual choice) or stopped (a hung network read)
while pre-training runs: the trainer checkpoints and stops in one line naming the worker, and
a stop signal meanwhile is honoured at once. The run resumes exactly."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import child_pids, process_alive
from tests.pretrain.conftest import subprocess_env
from tests.pretrain.test_train import losses, run_cli


def _start(recipe, *overrides):
    """A long pre-training with 2 loader workers, once it has logged 3 steps; (process, the
    loader workers' pids)."""
    p = subprocess.Popen([sys.executable, "-m", "pretrain", "--config", recipe,
                          "data.num_workers=2", "train.steps=100000", "train.ckpt_every=100000",
                          *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=subprocess_env())
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run.dir="))
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isfile(metrics) and
                                          len(open(metrics).readlines()) >= 3):
        time.sleep(0.1)
    workers = child_pids(p.pid)
    assert len(workers) == 2, workers
    return p, workers


def _finish(p, workers):
    for pid in workers:                     # a stopped worker left by a failed test
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if p.poll() is None:
        p.kill()
    return p.communicate(timeout=60)


def _wait(p, workers, timeout: float) -> tuple[str, float]:
    """(the trainer's stderr, seconds it took to end), whatever the test then asserts; the
    workers a failed test left stopped are killed."""
    t0 = time.time()
    try:
        _, err = p.communicate(timeout=timeout)
    finally:
        _finish(p, workers)
    return err, time.time() - t0


def _saved_step(run_dir) -> int:
    tag = open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()
    return int(tag[len("step"):])


def _errors(err: str) -> list[str]:
    return [x for x in err.splitlines() if "error" in x.lower() or "Traceback" in x]


@pytest.mark.slow
def test_kill_9_of_a_loader_worker_checkpoints_and_stops_in_one_line_then_resumes_exactly(
        tiny_recipe, tmp_path):
    recipe, _ = tiny_recipe
    cut, straight = str(tmp_path / "cut"), str(tmp_path / "straight")
    # a constant lr after warm-up (min_lr = lr): the straight run's length then changes nothing
    p, workers = _start(recipe, f"run.dir={cut}", "log.every=1", "optim.min_lr=0.001")
    os.kill(workers[1], signal.SIGKILL)
    err, took = _wait(p, workers, 60)
    assert p.returncode == 2, err[-3000:]
    assert took < 30
    lines = _errors(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"pretrain: error: loader worker pid {workers[1]} was killed "
                               f"(Killed)")
    saved = _saved_step(cut)
    assert f"checkpoint saved at step {saved}: run the same command to resume" in lines[0]
    assert saved >= 3
    common = [f"train.steps={saved + 3}", "train.ckpt_every=100000", "data.num_workers=2",
              "log.every=1", "optim.min_lr=0.001"]
    r = run_cli(recipe, f"run.dir={cut}", *common)
    assert r.returncode == 0 and f"at step {saved}" in r.stderr, r.stderr[-3000:]
    r = run_cli(recipe, f"run.dir={straight}", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(straight) == losses(cut)        # bitwise, the steps after the cut included


@pytest.mark.slow
def test_a_stopped_loader_worker_is_named_at_half_the_timeout_and_stops_the_run_at_it(
        tiny_recipe, tmp_path):
    recipe, _ = tiny_recipe
    run_dir = str(tmp_path / "stall")
    p, workers = _start(recipe, f"run.dir={run_dir}", "data.timeout=6")
    os.kill(workers[0], signal.SIGSTOP)
    os.kill(workers[1], signal.SIGSTOP)
    err, took = _wait(p, workers, 90)
    assert p.returncode == 2, err[-3000:]
    assert 5 <= took < 40, took
    warn = [x for x in err.splitlines() if "warning: no batch for 3 s from loader worker" in x]
    assert len(warn) == 1 and "(reading " in warn[0] and "shard-" in warn[0], err[-3000:]
    lines = _errors(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert re.search(r"no batch came from loader worker \d \(reading .*shard-\d+\.tar\) in 6 s "
                     r"\(data\.timeout\)", lines[0]), lines[0]
    assert f"checkpoint saved at step {_saved_step(run_dir)}" in lines[0]


def test_sigterm_while_a_loader_worker_is_stopped_checkpoints_at_once(tiny_recipe, tmp_path):
    """A pre-emption's SIGTERM while the trainer waits on a stuck worker (default
    data.timeout, minutes): the checkpoint needs no more batches, so it is saved at once and
    the run exits 143 well within a grace period."""
    recipe, _ = tiny_recipe
    run_dir = str(tmp_path / "term")
    p, workers = _start(recipe, f"run.dir={run_dir}")
    os.kill(workers[0], signal.SIGSTOP)
    os.kill(workers[1], signal.SIGSTOP)
    time.sleep(3)                          # the trainer has used what was ready, and waits
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    err, took = _wait(p, workers, 60)
    assert p.returncode == 143, err[-3000:]
    assert took < 20
    saved = _saved_step(run_dir)
    assert f"checkpoint saved at step {saved}" in err and "Traceback" not in err
    assert not any(process_alive(w) for w in workers), "a stopped loader worker was left over"


def test_pretrain_refuses_a_huge_batch_in_one_line_before_the_run_folder(tiny_recipe):
    recipe, run_dir = tiny_recipe
    r = subprocess.run([sys.executable, "-m", "pretrain", "--config", recipe,
                        "data.batch_size=1000000000"], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert r.returncode == 2
    lines = [x for x in r.stderr.strip().splitlines() if "WARNING" not in x]
    assert len(lines) == 1 and "needs at least" in lines[0] and "memory available" in lines[0]
    assert not os.path.exists(run_dir)


def test_a_dead_worker_is_named_by_its_exit_whichever_check_of_torch_saw_it_first():
    """torch reports a dead worker as "killed by signal" from its SIGCHLD check, or as "exited
    unexpectedly" from its queue's check, whichever runs first (a race): the worker's exit
    status gives the same line for both."""
    import types

    from data.stream import _lost_worker
    killed = types.SimpleNamespace(pid=4242, exitcode=-9)
    by_signal = _lost_worker("DataLoader worker (pid 4242) is killed by signal: Killed.", None)
    by_queue = _lost_worker("DataLoader worker (pid(s) 4242) exited unexpectedly", None,
                            [types.SimpleNamespace(pid=4243, exitcode=None), killed])
    assert by_signal == by_queue
    assert by_queue.startswith("loader worker pid 4242 was killed (Killed) (the OOM")
    failed = _lost_worker("DataLoader worker (pid(s) 7) exited unexpectedly", None,
                          [types.SimpleNamespace(pid=7, exitcode=3)])
    assert failed.startswith("loader worker pid 7 exited with status 3 ")
    unknown = _lost_worker("DataLoader worker (pid(s) 8) exited unexpectedly", None, [])
    assert unknown.startswith("loader worker pid 8 exited unexpectedly ")


def test_a_worker_killed_while_handing_over_a_batch_is_named_too():
    """Killed while the trainer receives a batch's shared memory from it, a worker shows up as
    a broken receive (connection reset, end of file) before torch notices the death; the loader
    names the dead worker from its exit status, and a receive that breaks while every worker
    lives is not blamed on one."""
    import types

    import data.stream as stream

    def worker(pid, code):
        return types.SimpleNamespace(pid=pid, exitcode=code, is_alive=lambda: code is None)

    class Loader:
        def __init__(self, error, workers):
            self.error, self._workers = error, workers

        def __iter__(self):
            return self

        def __next__(self):
            raise self.error

    for error in (ConnectionResetError(104, "Connection reset by peer"), EOFError()):
        with pytest.raises(stream.LoaderWorkerLost,
                           match=r"^loader worker pid 12 was killed \(Killed\) \(the OOM"):
            next(stream.loader_batches(Loader(error, [worker(11, None), worker(12, -9)])))
    t0 = time.monotonic()
    with pytest.raises(ConnectionResetError):
        next(stream.loader_batches(Loader(ConnectionResetError(104, "reset"),
                                          [worker(11, None)])))
    assert time.monotonic() - t0 < 5
