"""Run a per-input function over many inputs in worker processes and write the results, in
input order, into a resumable shard set.

A decoder that crashes its process (it happens with damaged files) costs only that input: the
inputs in flight are retried one by one in fresh processes and the one that kills its process is
recorded as a failure.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from .folder import open_folder
from .shards import JOURNAL, ShardSetWriter


PROGRESS_EVERY_S = 30.0    # a progress line this often when stderr is not a terminal


def _guarded(fn: Callable, item) -> dict:
    try:
        return fn(item)
    except Exception as e:  # one bad input must not stop the run; the reason is recorded
        return {"ok": False, "reason": f"{type(e).__name__}: {e}"[:500]}


def die_with_parent(parent: int):
    """Make this process end when ``parent`` does, kill -9 included (Linux's parent-death
    signal), instead of living on blocked on a pipe nobody reads."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:                          # the parent died before the call
        os._exit(1)


def _worker_init(parent: int):
    """Each prep worker: Ctrl-C (which a terminal sends to the whole process group) is left to
    the parent, which stops the pool and says one line; the worker dies with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(os.getpid(),))


def _stop_pool(pool: ProcessPoolExecutor):
    """Stop a pool at once on an interrupt or an error: queued inputs are dropped and the
    workers ended, not waited for (their finished shards are already on disk)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.kill()
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.join(5)


def _isolated(fn: Callable, item) -> dict:
    with _pool(1) as pool:
        try:
            return pool.submit(_guarded, fn, item).result()
        except BrokenProcessPool:
            return {"ok": False, "reason": "the decoder crashed its process on this file"}


def ordered_map(fn: Callable, items: Sequence, workers: int) -> Iterator[dict]:
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` processes."""
    if workers <= 0:
        for item in items:
            yield _guarded(fn, item)
        return
    window = 4 * workers
    pos = 0
    while pos < len(items):
        pool = _pool(workers)
        pending = []
        try:
            while pos < len(items) or pending:
                while pos < len(items) and len(pending) < window:
                    pending.append(pool.submit(_guarded, fn, items[pos]))
                    pos += 1
                yield pending.pop(0).result()
        except BrokenProcessPool:
            pool.shutdown(wait=True)
            # Re-run the inputs that were in flight one at a time to find the culprit.
            back = len(pending) + 1
            for item in items[pos - back:pos]:
                yield _isolated(fn, item)
        except BaseException:          # Ctrl-C, a signal, the consumer closing the stream
            _stop_pool(pool)
            raise
        else:
            pool.shutdown(wait=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def first_damaged(folder, manifest: dict) -> int | None:
    """Index of the first shard whose file is missing or differs (size, sha256) from the
    manifest, or None when all are intact."""
    for i, s in enumerate(manifest["shards"]):
        if folder.size(s["name"]) != s["bytes"] or folder.sha256(s["name"]) != s["sha256"]:
            return i
    return None


def roll_back(folder, first_bad: str):
    """Forget shard ``first_bad`` and everything after it (journal, manifest), so the resume
    path rebuilds them: prep is deterministic, so they come back byte for byte."""
    records = [json.loads(line) for line in folder.read_text(JOURNAL).splitlines()
               if line.strip()]
    keep = [records[0]]
    for r in records[1:]:
        if r.get("name") == first_bad:
            break
        keep.append(r)
    folder.write_text(JOURNAL, "".join(json.dumps(r) + "\n" for r in keep))
    folder.remove("manifest.json")


def check_failures_list(folder, manifest: dict):
    """A finished set's failures.jsonl holds the ``num_failures`` lines its manifest counts;
    one deleted or cut short is rebuilt from the prep journal, which keeps every failure, and
    without the journal the set is refused (the inputs that could not be used would be listed
    nowhere)."""
    want = int(manifest.get("num_failures", 0))
    text = folder.read_text("failures.jsonl")
    have = None if text is None else sum(1 for line in text.splitlines() if line.strip())
    if have == want:
        return
    journal = folder.read_text(JOURNAL)
    records = [json.loads(line) for line in (journal or "").splitlines() if line.strip()]
    listed = [x for r in records[1:] for x in r.get("failures", [])]
    what = "is missing" if have is None else f"lists {have} of them"
    if len(listed) != want:
        raise FileExistsError(f"{folder.shown}: manifest.json counts {want} inputs that could "
                              f"not be used but failures.jsonl {what} and the prep journal "
                              f"cannot rebuild it; prep into a new --out to list them again")
    folder.write_text("failures.jsonl", "".join(json.dumps(x) + "\n" for x in listed))
    print(f"{folder.shown}: failures.jsonl {what}; rebuilt its {want} lines from the prep "
          f"journal", file=sys.stderr)


def write_shard_set(out_dir: str, kind: str, classes: list, options: dict, items: Sequence,
                    work: Callable, source_of: Callable, workers: int, max_samples: int,
                    max_bytes: int, split: str | None = None, verify: bool = False) -> dict:
    """Prep one shard set from ``items``; resumes a folder left by an interrupted run. With
    ``verify``, a finished set has every shard checked against its manifest and is rebuilt
    from the first damaged shard on.

    ``work(item)`` returns {'ok': True, 'sample': {...}} or {'ok': False, 'reason': str}.
    Returns the manifest (or the existing one when the set is already complete).
    """
    folder = open_folder(out_dir)
    out_dir = folder.shown
    text = folder.read_text("manifest.json")
    if text is not None:
        manifest = json.loads(text)
        if manifest.get("options") != options or manifest.get("classes") != list(classes):
            raise FileExistsError(f"{out_dir} already holds a finished shard set made with other "
                                  f"options; choose a new --out or delete it")
        bad = first_damaged(folder, manifest) if verify else None
        if bad is None:
            check_failures_list(folder, manifest)
            what = "every shard intact" if verify else "nothing to do"
            print(f"{out_dir}: already complete ({manifest['num_samples']} samples), {what}",
                  file=sys.stderr)
            return _nonempty(manifest, folder)
        if folder.size(JOURNAL) is None:
            raise FileExistsError(f"{out_dir}: shard {manifest['shards'][bad]['name']} is "
                                  f"damaged and the prep journal is gone; prep into a new --out")
        name = manifest["shards"][bad]["name"]
        after = len(manifest["shards"]) - bad - 1
        print(f"{out_dir}: shard {name} is damaged; rebuilding it and the {after} after it",
              file=sys.stderr)
        roll_back(folder, name)
    writer = ShardSetWriter(folder, kind, classes, options, max_samples=max_samples,
                            max_bytes=max_bytes, split=split)
    start = writer.next_input
    if start:
        print(f"{out_dir}: resuming after {start} of {len(items)} inputs "
              f"({len(writer.shards)} shards done)", file=sys.stderr)
    t0, nbytes = time.time(), 0
    name = split or os.path.basename(out_dir.rstrip("/"))
    bar = tqdm(total=len(items), initial=start, desc=name, unit="input", file=sys.stderr,
               disable=None, dynamic_ncols=True)
    last_line = time.time()
    for offset, result in enumerate(ordered_map(work, items[start:], workers)):
        if bar.disable and time.time() - last_line >= PROGRESS_EVERY_S:
            # not a terminal (nohup, SLURM): a line now and then instead of the bar
            last_line = time.time()
            rate = offset / max(last_line - t0, 1e-9)
            left = (len(items) - start - offset) / max(rate, 1e-9)
            print(f"{name}: {start + offset}/{len(items)} inputs, {rate:.1f} inputs/s, "
                  f"{len(writer.shards)} shards done, about {left / 60:.0f} min left",
                  file=sys.stderr, flush=True)
        i = start + offset
        if result["ok"]:
            sample = result["sample"]
            nbytes += sum(len(v) for k, v in sample.items() if k != "__key__")
            writer.add(i, sample)
        else:
            writer.fail(i, source_of(items[i]), result["reason"])
        bar.update(1)
    bar.close()
    manifest = writer.close()
    dt = max(time.time() - t0, 1e-9)
    done = len(items) - start
    print(f"{out_dir}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards, "
          f"{human_bytes(manifest['num_bytes'])}, {manifest['num_failures']} failures "
          f"(see failures.jsonl); this run {done} inputs in {dt:.1f}s = {done / dt:.1f} inputs/s, "
          f"{human_bytes(nbytes / dt)}/s", file=sys.stderr)
    return _nonempty(manifest, folder)


def _nonempty(manifest: dict, folder) -> dict:
    """A shard set with no usable sample is an error (prep exits non-zero), not a success."""
    if manifest["num_samples"] == 0:
        raise ValueError(f"{folder.shown}: no usable input ({manifest['num_failures']} could "
                         f"not be used; the reasons are in {folder.url('failures.jsonl')})")
    return manifest
