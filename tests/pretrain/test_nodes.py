"""Two nodes on one machine: two torchrun agents through launch/run.sh (NNODES, NODE_RANK,
MASTER_ADDR on 127.0.0.1), one process each, train together over gloo. They train, checkpoint,
export and resume, with the losses of one agent running the same two processes."""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import child_pids
from tests.pretrain.conftest import subprocess_env, wait_for_step
from tests.pretrain.test_distributed import losses, torchrun

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(recipe, run_dir, node, port, *overrides, **env):
    """One node's launcher (``launch/run.sh``, NPROC=1, DeepSpeed ZeRO-1) in its own process
    group."""
    env = subprocess_env(NNODES="2", NODE_RANK=str(node), MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(port), NPROC="1", **env)
    return subprocess.Popen(
        ["bash", os.path.join(ROOT, "launch", "run.sh"), "pretrain", "--config", recipe,
         f"run.dir={run_dir}", "runtime.engine=deepspeed", "runtime.zero_stage=1",
         "log.picture_every=0", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)


def two_nodes(recipe, run_dir, *overrides, timeout=600):
    """Both agents of a 2-node run, node 0 and node 1 (``start_node``); returns their
    (returncode, stderr)."""
    port = _free_port()
    procs = [start_node(recipe, run_dir, node, port, *overrides) for node in (0, 1)]
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


@pytest.mark.slow
def test_two_nodes_train_checkpoint_export_and_resume_as_one_agent_with_two_processes(
        tiny_recipe, tmp_path):
    recipe, _ = tiny_recipe
    nodes, one = str(tmp_path / "nodes"), str(tmp_path / "one")
    common = ["runtime.precision=fp32", "train.ckpt_every=2"]
    res = two_nodes(recipe, nodes, "train.steps=2", *common)
    assert all(rc == 0 for rc, _ in res), "\n\n".join(e[-6000:] for _, e in res)
    assert "2 process(es) on cpu" in res[0][1]
    tag = os.path.join(nodes, "checkpoints", "step00000002")
    assert {"rank0.pt", "rank1.pt", "COMPLETE"} <= set(os.listdir(tag))
    assert os.path.isfile(os.path.join(nodes, "export", "encoder.safetensors"))
    # resumed by the same command on both nodes, two more steps
    res = two_nodes(recipe, nodes, "train.steps=4", *common)
    assert all(rc == 0 for rc, _ in res), "\n\n".join(e[-6000:] for _, e in res)
    assert "at step 2" in res[0][1]
    # one agent, two processes, four steps straight: the same losses, bit for bit
    r = torchrun(recipe, one, "runtime.zero_stage=1", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(nodes) == losses(one) and len(losses(one)) == 4
    with open(os.path.join(nodes, "config.yaml")) as f:
        assert "zero_stage: 1" in f.read()


def kill_group(p, sig=signal.SIGKILL):
    """``sig`` to a launcher and its trainers (torchrun starts each trainer in a session of
    its own, so the launcher's process group does not reach them) and their children."""
    pids, todo = [], [p.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += child_pids(pid)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_node_stops_the_other_within_the_timeout_in_one_line(tiny_recipe, tmp_path, how):
    """Node 1's launcher and trainer killed (kill -9, a node gone), or its trainer stopped
    (SIGSTOP, a hung process): node 0 stops within runtime.comm_timeout, in one line naming
    rank 1 on node 1, the last complete checkpoint and how to resume; no checkpoint after the
    loss is marked complete, and the same command resumes the run."""
    recipe, _ = tiny_recipe
    run_dir = str(tmp_path / "run")
    port = _free_port()
    timeout = 15
    steps = ["train.steps=100000", f"runtime.comm_timeout={timeout}", "runtime.precision=fp32",
             "train.ckpt_every=2"]
    node0 = start_node(recipe, run_dir, 0, port, *steps)
    node1 = start_node(recipe, run_dir, 1, port, *steps)
    try:
        wait_for_step(run_dir, 3)
        if how == "killed":
            kill_group(node1)
        else:
            trainer = child_pids(node1.pid)     # the launcher's (torchrun's) children
            assert trainer
            for pid in trainer:
                os.kill(pid, signal.SIGSTOP)
        t0 = time.time()
        _, err = node0.communicate(timeout=timeout + 120)
        took = time.time() - t0
    finally:
        kill_group(node0)
        kill_group(node1)
        node1.communicate(timeout=60)
    print(f"node 0 stopped {took:.1f} s after node 1 was {how}")
    assert node0.returncode != 0
    bound = 15 if how == "killed" else timeout + 15
    assert took < bound, took
    lines = [ln for ln in err.splitlines() if "pretrain: error: lost rank 1 (node 1)" in ln]
    assert len(lines) == 1, err[-4000:]
    assert "the last complete checkpoint is" in lines[0] and "Run the same command" in lines[0]
    assert not re.search(r'File ".*/(pretrain|data|finetune)/', err)
    ckpts = os.path.join(run_dir, "checkpoints")
    latest = open(os.path.join(ckpts, "latest")).read().strip()
    assert os.path.join(ckpts, latest) in lines[0]
    done = [t for t in os.listdir(ckpts) if os.path.isfile(os.path.join(ckpts, t, "COMPLETE"))]
    assert max(done) == latest
    # the same command on both nodes resumes from it
    step = int(latest[4:])
    res = two_nodes(recipe, run_dir, f"train.steps={step + 2}", "train.ckpt_every=2",
                    "runtime.precision=fp32")
    assert all(rc == 0 for rc, _ in res), "\n\n".join(e[-4000:] for _, e in res)
    assert f"at step {step}" in res[0][1]


@pytest.mark.slow
def test_an_elastic_run_resumes_by_itself_when_the_lost_node_comes_back(tiny_recipe, tmp_path):
    """RDZV=c10d: node 1 is lost (its launcher and trainer killed); node 0's trainer stops in
    one line and its launcher waits for a second node; node 1's launcher started again (the
    same command) joins, and the run resumes from its last complete checkpoint and completes.
    On one machine both launchers would host the rendezvous (127.0.0.1 is local to both):
    ``is_host`` says which one does, as distinct machines' addresses would."""
    recipe, _ = tiny_recipe
    run_dir = str(tmp_path / "run")
    port = _free_port()
    args = ["train.steps=30", "runtime.comm_timeout=15", "runtime.precision=fp32",
            "train.ckpt_every=2"]
    elastic = {"RDZV": "c10d", "MAX_RESTARTS": "3", "RDZV_ID": f"test{port}"}
    node0 = start_node(recipe, run_dir, 0, port, *args, RDZV_CONF="is_host=1", **elastic)
    node1 = start_node(recipe, run_dir, 1, port, *args, RDZV_CONF="is_host=0", **elastic)
    try:
        wait_for_step(run_dir, 5)
        kill_group(node1)
        node1.communicate(timeout=60)
        node1 = start_node(recipe, run_dir, 1, port, *args, RDZV_CONF="is_host=0", **elastic)
        _, err0 = node0.communicate(timeout=400)
        _, err1 = node1.communicate(timeout=120)
    finally:
        kill_group(node0)
        kill_group(node1)
    assert node0.returncode == 0 and node1.returncode == 0, err0[-4000:] + err1[-3000:]
    assert "pretrain: error: lost rank 1 (node 1)" in err0
    assert re.search(r"resuming .* at step \d+ \(step\d+\)", err0)
    assert open(os.path.join(run_dir, "checkpoints", "latest")).read().strip() == "step00000030"
    assert os.path.isfile(os.path.join(run_dir, "export", "encoder.safetensors"))
