"""Two nodes on one machine: two torchrun agents through launch/run.sh (NNODES, NODE_RANK,
MASTER_ADDR on 127.0.0.1), one process each, train together over gloo. They train, checkpoint,
export and resume, with the losses of one agent running the same two processes."""
import os
import socket
import subprocess

from tests.pretrain.conftest import subprocess_env
from tests.pretrain.test_distributed import losses, torchrun

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(recipe, run_dir, *overrides, timeout=600):
    """Both agents of a 2-node run, node 0 and node 1, each ``launch/run.sh`` with NPROC=1;
    returns their (returncode, stderr)."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        env = subprocess_env(NNODES="2", NODE_RANK=str(node), MASTER_ADDR="127.0.0.1",
                             MASTER_PORT=str(port), NPROC="1")
        procs.append(subprocess.Popen(
            ["bash", os.path.join(ROOT, "launch", "run.sh"), "pretrain", "--config", recipe,
             f"run.dir={run_dir}", "runtime.engine=deepspeed", "runtime.zero_stage=1",
             "log.picture_every=0", *overrides],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
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
