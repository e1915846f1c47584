"""Checkpoints under ``run.dir/checkpoints``: one folder per tag, ``latest`` written last.

A checkpoint is the engine's state (weights, optimizer; DeepSpeed's own files or ours), the
client state (step, schedule, config fingerprint), and per rank a small file with that rank's
data-stream position and RNG states. Rank 0 writes ``<tag>/COMPLETE`` once every rank has
finished (the files flushed to disk, their sizes recorded in it), then replaces ``latest``
atomically, then prunes old tags: a checkpoint torn by a crash is never "latest", and the
previous one is still there. A resume that finds the newest checkpoint damaged (sizes off, a
file unreadable or not ours) warns and falls back to the newest intact one.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import torch

from data.atomic import FolderInUse, FolderLock, write_text_atomic
from data.plan import LayoutError
from .distributed import Dist, all_reduce_max, barrier

LATEST = "latest"
COMPLETE = "COMPLETE"


class CheckpointError(ValueError):
    """No checkpoint of a run folder can be resumed from."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holds pickled Python objects beyond tensors and plain data."""


def load_checkpoint_file(path: str, map_location="cpu"):
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings, lists, tuples and
    dicts, never code. Everything tubemae writes loads this way; a file that does not was not
    written by tubemae (it may have been planted in a shared run folder) and is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"{path} holds Python objects that tubemae never writes, so it was not loaded "
            f"(loading it could run code). Remove that checkpoint folder to fall back to an "
            f"earlier one, or restore the file from a copy you trust. ({str(e).splitlines()[0]})"
        ) from None


class RunDirLock:
    """Holds ``run.dir/.lock`` (``data.atomic.FolderLock``) for the life of the process on rank
    0, so a second command on the same run folder stops with a message naming the first; loader
    workers left behind by a killed trainer do not keep the folder locked."""

    def __init__(self, run_dir: str, enabled: bool = True):
        self.lock = None
        try:
            os.makedirs(run_dir, exist_ok=True)
            probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            raise CheckpointError(f"run.dir {run_dir} cannot be written ({e.strerror or e}); "
                                  f"choose a folder you can write to (run.dir=...)") from None
        if not enabled:
            return
        try:
            self.lock = FolderLock(run_dir)
        except FolderInUse as e:
            raise CheckpointError(f"{e}; wait for it to finish or stop it, or choose another "
                                  f"run.dir") from None

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def save_file_or_explain(obj, path: str):
    """``torch.save`` to ``path`` through ``path.tmp``; on a full disk (or any write error)
    the temporary file is removed and the error says how much was needed and was free."""
    tmp = path + ".tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # A full disk shows as an OSError (open, rename) or, from torch's zip writer part-way
        # through, as a RuntimeError ("unexpected pos ..."); either way nothing usable was written.
        reason = getattr(e, "strerror", None) or "the write stopped part-way"
        need = _tensor_bytes(obj)
        try:
            os.remove(tmp)
        except OSError:
            pass
        folder = os.path.dirname(path) or "."
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = -1
        raise CheckpointError(
            f"could not write {path} ({reason}): it needs about {need / 1e6:.0f} MB and "
            f"{free / 1e6:.0f} MB are free there; make room (or lower train.keep_last) and run "
            f"the same command to resume from the last complete checkpoint") from None


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


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

    def _named_latest(self) -> str | None:
        """The tag the ``latest`` file names, complete or not."""
        path = os.path.join(self.dir, LATEST)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return f.read().strip() or None

    def latest_tag(self) -> str | None:
        """The tag ``latest`` names, when that checkpoint is complete."""
        tag = self._named_latest()
        return tag if tag and os.path.isfile(os.path.join(self.dir, tag, COMPLETE)) else None

    def save(self, engine, tag: str, client_state: dict, rank_state: dict):
        """Collective: every rank calls it with its own ``rank_state``."""
        engine.save(self.dir, tag, client_state)
        folder = os.path.join(self.dir, tag)
        os.makedirs(folder, exist_ok=True)
        save_file_or_explain(rank_state, os.path.join(folder, f"rank{self.dist.rank}.pt"))
        barrier(self.dist)
        if self.dist.is_main:
            write_text_atomic(os.path.join(folder, COMPLETE),
                              json.dumps({"tag": tag, "files": _flush_and_size(folder)}) + "\n")
            write_text_atomic(os.path.join(self.dir, LATEST), tag + "\n")
            self._prune(keep=tag)
        barrier(self.dist)

    def damage(self, tag: str) -> str | None:
        """Why checkpoint ``tag`` cannot be used (missing, incomplete, a file of another size
        than when it was written), or None."""
        folder = os.path.join(self.dir, tag)
        try:
            with open(os.path.join(folder, COMPLETE)) as f:
                text = f.read()
        except OSError:
            return f"{folder} is missing or was never completed"
        try:
            files = json.loads(text)["files"]
        except (ValueError, KeyError, TypeError):
            return None  # written before sizes were recorded
        for name, size in files.items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return f"{path} is missing"
            if os.path.getsize(path) != size:
                return f"{path} has {os.path.getsize(path)} bytes, {size} when it was written"
        return None

    def candidates(self) -> list[str]:
        """Tags to resume from, best first: the one ``latest`` names, then every completed one
        from the newest."""
        named = self._named_latest()
        done = sorted(self.tags(), key=lambda t: os.path.getmtime(
            os.path.join(self.dir, t, COMPLETE)), reverse=True)
        return ([named] if named else []) + [t for t in done if t != named]

    def save_run(self, engine, tag: str, client_state: dict, stream):
        """``save`` with this rank's data-stream position and RNG states as its rank state."""
        self.save(engine, tag, client_state,
                  {"stream": stream.state_dict(), "rng": rng_state(self.dist.device)})

    def resume(self, engine, stream, start_new) -> tuple[dict | None, object]:
        """Continue from the newest intact checkpoint when there is one (engine, then the
        stream's position, then the RNG states), else call ``start_new()`` on rank 0. Returns
        (the client state with its ``tag``, or None for a new run; the stream's batch
        iterator). A damaged checkpoint is passed over with a warning; when checkpoints exist
        but none is intact, the run stops instead of starting over."""
        client = rank_state = None
        problems = []
        for tag in self.candidates():
            why = self.damage(tag)
            if why is None:
                try:
                    client, rank_state = self.load(engine, tag)
                except LayoutError:       # intact, but not for this number of processes
                    raise
                except (OSError, EOFError, RuntimeError, ValueError,
                        pickle.UnpicklingError) as e:
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    why = f"cannot be read: {first}"
            # every rank must resume from the same tag
            if all_reduce_max([float(why is not None)], self.dist)[0] > 0:
                why = why or "unreadable on another rank"
                problems.append(f"{tag}: {why}")
                if self.dist.is_main:
                    print(f"checkpoint: {tag} is not usable ({why}); trying an earlier one",
                          file=sys.stderr)
                client = rank_state = None
                continue
            client["tag"] = tag
            stream.load_state_dict(rank_state["stream"])
            break
        if client is None and problems:
            raise CheckpointError(f"{self.dir} holds checkpoints but none is intact "
                               f"({'; '.join(problems)}); restore one, or move the folder away "
                               f"to start the run over")
        if client is None and self.dist.is_main:
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
            # written by fewer processes: the data position is the run's, the same in every
            # rank's file; a new rank starts from rank 0's RNG states
            path = os.path.join(self.dir, tag, "rank0.pt")
        return client, load_checkpoint_file(path)

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


def _flush_and_size(folder: str) -> dict:
    """Every file under ``folder`` (relative name -> bytes), each flushed to disk first, so the
    sizes recorded in COMPLETE are those on the disk."""
    sizes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == COMPLETE or rel.endswith(".tmp"):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            sizes[rel] = os.path.getsize(path)
    return sizes
