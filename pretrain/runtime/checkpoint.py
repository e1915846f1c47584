"""Checkpoints under ``run.dir/checkpoints``: one folder per tag, ``latest`` written last.

A checkpoint is the engine's state (weights, optimizer; DeepSpeed's own files or ours), the
client state (step, schedule, config fingerprint), and per rank a small file with that rank's
data-stream position and RNG states. Rank 0 writes ``<tag>/COMPLETE`` once every rank has
finished, then replaces ``latest`` atomically, then prunes old tags: a checkpoint torn by a
crash is never "latest", and the previous one is still there.
"""
from __future__ import annotations

import os
import shutil

import torch

from data.atomic import write_text_atomic
from .distributed import Dist, barrier

LATEST = "latest"
COMPLETE = "COMPLETE"


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer:
    def __init__(self, run_dir: str, dist: Dist, keep_last: int = 2):
        self.dir = os.path.join(run_dir, "checkpoints")
        self.dist, self.keep_last = dist, max(1, keep_last)
        self.protect: set = set()  # tags never pruned (fine-tuning's best checkpoint)
        os.makedirs(self.dir, exist_ok=True)

    def latest_tag(self) -> str | None:
        path = os.path.join(self.dir, LATEST)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            tag = f.read().strip()
        if not os.path.isfile(os.path.join(self.dir, tag, COMPLETE)):
            raise RuntimeError(f"{path} names {tag}, which is incomplete; delete {path} to "
                               f"start over or restore the folder")
        return tag

    def save(self, engine, tag: str, client_state: dict, rank_state: dict):
        """Collective: every rank calls it with its own ``rank_state``."""
        engine.save(self.dir, tag, client_state)
        folder = os.path.join(self.dir, tag)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"rank{self.dist.rank}.pt.tmp")
        torch.save(rank_state, tmp)
        os.replace(tmp, os.path.join(folder, f"rank{self.dist.rank}.pt"))
        barrier(self.dist)
        if self.dist.is_main:
            write_text_atomic(os.path.join(folder, COMPLETE), tag + "\n")
            write_text_atomic(os.path.join(self.dir, LATEST), tag + "\n")
            self._prune(keep=tag)
        barrier(self.dist)

    def save_run(self, engine, tag: str, client_state: dict, stream):
        """``save`` with this rank's data-stream position and RNG states as its rank state."""
        self.save(engine, tag, client_state,
                  {"stream": stream.state_dict(), "rng": rng_state(self.dist.device)})

    def resume(self, engine, stream, start_new) -> tuple[dict | None, object]:
        """Continue from ``latest`` when there is one (engine, then the stream's position, then
        the RNG states), else call ``start_new()`` on rank 0. Returns (the client state with
        its ``tag``, or None for a new run; the stream's batch iterator)."""
        tag = self.latest_tag()
        client = rank_state = None
        if tag:
            client, rank_state = self.load(engine, tag)
            client["tag"] = tag
            stream.load_state_dict(rank_state["stream"])
        elif self.dist.is_main:
            start_new()
        batches = iter(stream)
        if rank_state is not None:
            set_rng_state(rank_state["rng"], self.dist.device)
        return client, batches

    def load(self, engine, tag: str) -> tuple[dict, dict]:
        """-> (client state, this rank's state)."""
        client = engine.load(self.dir, tag)
        path = os.path.join(self.dir, tag, f"rank{self.dist.rank}.pt")
        if not os.path.isfile(path):
            raise RuntimeError(f"{path} is missing: this checkpoint was written by fewer ranks "
                               f"than this run has ({self.dist.world_size}); resume with the "
                               f"same number of processes")
        return client, torch.load(path, map_location="cpu", weights_only=False)

    def tags(self) -> list[str]:
        done = [t for t in os.listdir(self.dir)
                if os.path.isfile(os.path.join(self.dir, t, COMPLETE))]
        return sorted(done)

    def _prune(self, keep: str):
        for t in self.tags()[:-self.keep_last]:
            if t != keep and t not in self.protect:
                shutil.rmtree(os.path.join(self.dir, t), ignore_errors=True)
        for t in os.listdir(self.dir):  # torn checkpoints of earlier crashes
            p = os.path.join(self.dir, t)
            if os.path.isdir(p) and t != keep and not os.path.isfile(os.path.join(p, COMPLETE)):
                shutil.rmtree(p, ignore_errors=True)
