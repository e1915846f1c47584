"""Streams of training and evaluation batches over a prepared shard set: the loader workers and
the two streams. The ``data`` section (``StreamConfig``) is ``data/config.py``, the plan
``data/plan.py``, shard reading ``data/shard_reader.py``, sample-to-clips ``data/clips.py``.

Training order is fixed when a run starts, by its canonical partitions (``data/plan.py``): its
first processes x loader workers, each an endless sequence of sample positions (the shard parts
dealt to it each epoch by a seeded RNG, read through a shuffle buffer whose draws are seeded
too). The run's micro-batch slots are numbered globally, and a step takes the same samples
whichever layout (processes, loader workers, per-process batch, accumulation) reads it. The
order is planned on sample *positions* before any byte is read, so a worker can start anywhere:
it re-reads only the shards that still hold samples it has not delivered. A stream's state is
the number of the run's samples consumed; a restored stream, on this layout or another that
holds a step's samples, yields exactly the batches the uninterrupted run would have.

Every clip gets its own RNG seeded by (seed, epoch, shard, sample, repeat): crops and masks do
not depend on which worker or process produced them.

Batches are dicts: ``video`` uint8 (B, C, T, H, W), ``label`` int64 (B,), ``mask`` bool (B, N)
(training, unless mask == "none"), ``index`` int64 (B,) global sample number; evaluation batches
add ``view`` int64 (B,).
"""
from __future__ import annotations

import json
import logging
import signal
from dataclasses import replace
from typing import Iterator

import numpy as np
import torch

from .clips import SampleMaker, SkipCounter, collate
from .config import StreamConfig
from .manifest import DataSetError, ShardSet, load_shard_set
from .plan import (Canon, Layout, LayoutError, PartitionOrders, Unit,  # noqa: F401
                   first_sample_numbers, plan_units, worker_positions)
from .shard_reader import ShardReader, numbered_samples, shard_intact
from .store import StoreOptions
from .transforms import crop_batch

log = logging.getLogger(__name__)
STATE_VERSION = 2


class _PartitionReader:
    """One loader worker's read of one epoch of one partition: the shards of its units, in
    order, keeping only the positions this worker takes (``wanted``); samples read ahead of
    their turn wait in ``cache``."""

    def __init__(self, shard_set: ShardSet, orders: PartitionOrders, p: int, epoch: int,
                 wanted: np.ndarray, strict: bool):
        self.orders, self.p, self.epoch = orders, p, epoch
        self.order, ends = orders.order(p, epoch), orders.ends(p, epoch)
        self.end = int(ends[-1]) if len(ends) else 0
        self.reader = iter(ShardReader(shard_set.shards, orders.units_of(p, epoch), wanted,
                                       strict, shard_set.io or StoreOptions()))
        self.cache, self.read_upto = {}, -1

    def take(self, j: int):
        """(shard, member, raw) of index ``j`` of the epoch, or None when its shard did not
        yield it (damaged, truncated)."""
        p = int(self.order[j])
        while p not in self.cache and self.read_upto < p:
            try:
                q, member, raw = next(self.reader)
            except StopIteration:
                self.read_upto = self.end
                break
            self.cache[q] = (member, raw)
            self.read_upto = q
        if p not in self.cache:
            return None
        member, raw = self.cache.pop(p)
        return self.orders.shard_at(self.p, self.epoch, p), member, raw


def _worker_batches(cfg: StreamConfig, shard_set: ShardSet, orders: PartitionOrders,
                    canon: Canon, layout: Layout, rank: int, v_first: int) -> Iterator[dict]:
    """Endless micro-batches ``v_first``, ``v_first + workers``, ... of ``rank``: what one
    loader worker makes. Each is the batch of global slots ``layout.slots(v, rank)``: the
    samples the run's canonical order (``canon``) puts there, whatever the layout.

    A sample that cannot be used (a corrupt payload, a damaged shard) is counted and its slot
    takes the nearest usable sample before it in the same partition (after it, at the start of
    an epoch), repeating that sample's clips: the same sample whatever layout reads the run,
    so batches stay equal across a change of processes or workers.
    """
    maker, counter = SampleMaker(cfg, shard_set), SkipCounter()
    first_number = first_sample_numbers([s.samples for s in shard_set.shards])
    step = layout.workers
    mine = v_first % step
    readers: dict = {}        # (partition, epoch) -> _PartitionReader
    last: dict = {}           # partition -> (index, made clips) of the last usable sample
    bad: dict = {}            # partition -> indices found unusable (since the last usable)
    v = v_first

    def reader(p: int, epoch: int) -> _PartitionReader:
        rd = readers.get((p, epoch))
        if rd is None:
            for key in [key for key in readers if key[0] == p and key[1] < epoch]:
                del readers[key]
            rd = readers[(p, epoch)] = _PartitionReader(
                shard_set, orders, p, epoch,
                worker_positions(canon, layout, orders, p, epoch, rank, mine, v), cfg.strict)
        return rd

    def make(epoch: int, got):
        if got is None:
            return None
        shard, member, raw = got
        try:
            c, m, d, label, frames = maker.train_clips(raw, epoch, shard, member)
        except DataSetError:    # a setting or a set to change: stop, never skip
            raise
        except Exception as e:  # corrupt payload: counted, its slot filled, the stream goes on
            counter.skip(f"{raw.get('__key__')} in {raw.get('__url__')}", e)
            return None
        return c, m, d, label, frames, int(first_number[shard]) + member

    def fill(p: int, k: int, epoch: int, start: int):
        """The nearest usable sample to index ``k`` of partition ``p`` within its epoch,
        before it, else after it."""
        units, order = orders.units_of(p, epoch), orders.order(p, epoch)
        for kk in list(range(k - 1, start - 1, -1)) + list(range(k + 1, start + len(order))):
            if p in last and last[p][0] == kk:
                return last[p][1]
            if kk in bad.get(p, ()):
                continue
            pos = int(order[kk - start])
            got = _read_one(shard_set, units, pos, cfg.strict)
            made = make(epoch, None if got is None else (orders.shard_at(p, epoch, pos), *got))
            if made is not None:
                return made
        raise DataSetError(f"loader worker {mine} of rank {rank}: no usable sample in a whole "
                           f"epoch of partition {p} of {shard_set.root}; see the warnings above")

    while True:
        clips, masks, decode, labels, index, videos = [], [], [], [], [], []
        ps, ks = canon.locate(layout.slots(v, rank))
        for p, k in zip(ps.tolist(), ks.tolist()):
            epoch, j, start = orders.where(p, k)
            got = reader(p, epoch).take(j)
            if got is None:
                counter.skip(f"#{k} of partition {p} epoch {epoch}",
                             RuntimeError("missing from its shard"))
            made = make(epoch, got)
            if made is None:
                bad.setdefault(p, set()).add(k)
                made = fill(p, k, epoch, start)
            else:
                last[p] = (k, made)
                bad.pop(p, None)
            c, m, d, label, frames, number = made
            if frames is not None:
                c = [(len(videos), idx, params) for idx, params in c]
                videos.append(frames)
            clips += c
            masks += m
            decode += d
            labels += [label] * len(c)
            index += [number] * len(c)
        batch = collate(clips, masks, labels, index, decode, videos)
        batch["_state"] = {"v": v, "skipped": counter.skipped}
        yield batch
        v += step


def _read_one(shard_set: ShardSet, units: list[Unit], pos: int, strict: bool):
    """(member, raw) at position ``pos`` of ``units``, read on its own, or None."""
    for _, member, raw in ShardReader(shard_set.shards, units, np.array([pos]), strict,
                                      shard_set.io or StoreOptions()):
        return member, raw
    return None


def _stopped(pid: int | None) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, a debugger): it answers nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] in "Tt"
    except (OSError, IndexError, TypeError):
        return False


class WorkerWatch:
    """Deaths of a rank's loader workers, as SIGCHLD reports them. torch's own handler raises
    wherever the main thread happens to be (in a backward, in an optimizer step, leaving a
    step half done); this one raises ``LoaderWorkerLost`` only while the trainer waits on the
    loader (``waiting``), and otherwise keeps the news until the trainer next waits
    (``check``)."""

    def __init__(self):
        self.waiting = False
        self.lost: str | None = None

    def install(self):
        """Take SIGCHLD over from torch (after a loader's iterator started, in the main
        thread; elsewhere the loader's own checks stay in charge)."""
        import threading
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            try:
                torch._C._error_if_any_worker_fails()
            except RuntimeError as e:
                self.lost = self.lost or (_lost_worker(str(e), None) or str(e))
            if self.lost and self.waiting:
                self.waiting = False
                raise LoaderWorkerLost(self.lost)
        signal.signal(signal.SIGCHLD, handler)

    def check(self):
        if self.lost:
            raise LoaderWorkerLost(self.lost)


def loader_batches(loader, watch: WorkerWatch | None = None) -> Iterator[dict]:
    """The loader's batches, with its worker processes shut down on every way out (the end, an
    error, the consumer closing the stream): after a worker's error the loader's iterator stays
    referenced from the traceback, and its workers, which ignore signals, would keep the
    interpreter waiting at exit. An error raised in a worker comes out as the worker raised it
    (its type and message), not as torch's re-raise, whose message holds the worker's whole
    traceback: the user gets one line naming the problem.

    The workers are started with SIGTERM and SIGINT blocked in this thread: a worker inherits
    the mask (across a spawn's exec too) until ``leave_signals_to_parent`` ignores both, so a
    signal to the whole process group cannot kill one while it is still importing (workers are
    spawned, not forked, inside a spawned process such as a study's pool worker). Here the
    signal is only deferred until the workers exist, never lost."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        it = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    if watch is not None and hasattr(it, "_workers"):
        watch.install()
    try:
        yield from it
    except Exception as e:
        text = str(e)
        if "Original Traceback" not in text:
            workers = getattr(it, "_workers", ())
            lost = _lost_worker(text, loader, workers)
            if lost is None and isinstance(e, (OSError, EOFError)):
                # a worker killed while handing over a batch's shared memory: the receive
                # breaks (connection reset, end of file) before torch notices the death
                lost = _dead_worker(workers)
            if lost is not None:
                raise LoaderWorkerLost(lost) from None
            raise
        last = text.strip().splitlines()[-1]          # "DataSetError: loader worker 0: ..."
        message = last.split(": ", 1)[1] if ": " in last else last
        try:
            clean = type(e)(message)
        except Exception:
            raise e from None
        raise clean from None
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)   # a multi-process loader's
        if watch is not None:           # the workers ended here are no news to raise
            watch.waiting = False
        if shutdown is not None:
            for w in getattr(it, "_workers", []):   # stopped (SIGSTOP): shutdown would wait
                if _stopped(w.pid):
                    w.kill()
            try:
                shutdown()
            except RuntimeError:    # torch's SIGCHLD handler, again, for a worker that died
                pass
            for w in getattr(it, "_workers", []):   # one stopped (SIGSTOP) ignores SIGTERM
                if w.is_alive():
                    w.kill()
        if watch is not None:
            watch.lost = None


class LoaderWorkerLost(DataSetError):
    """A loader worker died (killed: the OOM killer's usual choice) or made no batch within
    ``data.timeout`` (stuck). The training process is alive and can checkpoint."""


def _how_ended(worker) -> str | None:
    """How a loader worker process ended, from its exit status; None when not known."""
    code = worker.exitcode
    if code is not None and code < 0:
        return f"was killed ({signal.strsignal(-code) or f'signal {-code}'})"
    return f"exited with status {code}" if code else None


def _exit_of(pids: str, workers) -> str | None:
    """How the first of ``pids`` (torch's "123, 456") among the loader's ``workers`` ended."""
    first = pids.split(",")[0].strip()
    return next((_how_ended(w) for w in workers or () if str(w.pid) == first), None)


def _gone(pids: str, how: str) -> str:
    return (f"loader worker pid {pids} {how} (the OOM killer's usual choice: if memory is "
            f"short, use fewer data.num_workers or a smaller data.batch_size)")


def _dead_worker(workers, wait: float = 1.0) -> str | None:
    """The line for the first of ``workers`` that has ended, waiting up to ``wait`` seconds
    for one to; None when all live on."""
    import time
    deadline = time.monotonic() + wait
    while True:
        for w in workers:
            if not w.is_alive():
                return _gone(str(w.pid), _how_ended(w) or "exited unexpectedly")
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _lost_worker(text: str, loader, workers=()) -> str | None:
    """One line for torch's loader errors that mean a worker is gone or stuck, else None.
    torch says "killed by signal" when its SIGCHLD check sees the death first, and "exited
    unexpectedly" when its queue's check does; the status of ``workers`` (the loader
    iterator's processes) tells which it was in the second case too."""
    import re
    m = re.search(r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) (is killed by signal: "
                  r"(.+?)\.|exited unexpectedly)", text)
    if m:
        how = f"was killed ({m.group(3)})" if m.group(3) else \
            (_exit_of(m.group(1), workers) or "exited unexpectedly")
        return _gone(m.group(1).strip(), how)
    m = re.search(r"DataLoader timed out after (\d+) seconds", text)
    if m:
        return (f"no batch came from the loader workers in {m.group(1)} s (data.timeout): a "
                f"worker is stuck, as on a hung network read or a stopped process; check the "
                f"storage of {getattr(getattr(loader, 'dataset', None), 'where', 'the shards')}"
                f", or raise data.timeout")
    return None


def leave_signals_to_parent(_worker_id: int = 0):
    """In a loader worker: ignore SIGTERM and SIGINT. SLURM, torchrun and `kill -- -PGID`
    signal the whole process group; a worker that died of it first would take the trainer down
    before it could checkpoint. The trainer handles the signal and shuts its workers down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerSplit(torch.utils.data.IterableDataset):
    """The per-process part of a TrainStream: DataLoader worker i makes micro-batches
    ``start + i``, ``start + i + workers``, ... (the loader takes them in turn)."""

    def __init__(self, cfg, shard_set, orders, canon, layout, rank, start):
        self.cfg, self.shard_set, self.orders = cfg, shard_set, orders
        self.where = shard_set.root
        self.canon, self.layout, self.rank, self.start = canon, layout, rank, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        yield from _worker_batches(self.cfg, self.shard_set, self.orders, self.canon,
                                   self.layout, self.rank, self.start + (info.id if info else 0))


class TrainStream:
    """Endless, exactly resumable training batches for one rank.

    ``iter(stream)`` yields batch dicts (micro-batches); ``state_dict()`` after any batch
    records where the run's data stands, and ``load_state_dict`` on a fresh stream over the
    same data makes it yield the batches that come next. The position is the number of the
    run's samples consumed, in its canonical order (``data/plan.py``: ``Canon``), so it may be
    loaded by another number of processes, loader workers, per-process batch or accumulation,
    as long as a step holds as many samples (``accum`` micro-batches of ``cfg.batch_size``
    clips on each of ``world_size`` ranks).
    """

    def __init__(self, cfg: StreamConfig, rank: int = 0, world_size: int = 1,
                 shard_set: ShardSet | None = None, pin_memory: bool = False, accum: int = 1):
        cfg.check()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.pin_memory = pin_memory  # page-locked batches: asynchronous copies to a GPU
        self.shard_set = replace(shard_set or load_shard_set(cfg.shards, cfg.split or "train"),
                                 io=cfg.store_options())
        if self.shard_set.num_samples == 0:
            raise DataSetError(f"{self.shard_set.root} holds no samples; prepare it again from "
                               f"inputs that can be used (see its failures.jsonl)")
        self.workers = max(cfg.num_workers, 1)
        self.layout = Layout(world_size, accum, cfg.batch_size // cfg.repeats, self.workers)
        self._set_canon(Canon(world_size, self.workers, self.layout.batch, accum))
        self.batches = 0              # micro-batches this rank has taken, from the run's start
        self._iter_start = 0          # ... when the loader's workers were started
        self.skipped = [0] * self.workers
        self.watch = WorkerWatch()

    def _set_canon(self, canon: Canon):
        if canon.step_samples != self.layout.step_samples:
            raise LayoutError(
                f"this run's step holds {canon.step_samples} samples; {self.layout.ranks} "
                f"process(es) x {self.layout.accum} micro-batch(es) x "
                f"{self.layout.batch} sample(s) is {self.layout.step_samples}")
        self.canon = canon
        self.units = plan_units([s.samples for s in self.shard_set.shards], canon.partitions)
        self.orders = PartitionOrders(self.units, canon.partitions, self.cfg.seed,
                                      self.cfg.shuffle_buffer)
        empty = [p for p in range(canon.partitions) if self.orders.length(p, 0) == 0]
        if empty:
            raise DataSetError(
                f"{self.shard_set.root} holds {self.shard_set.num_samples} samples, too few to "
                f"give each of the run's {canon.partitions} partitions (processes x loader "
                f"workers when it started) one: use fewer data.num_workers or more samples")

    @property
    def samples(self) -> int:
        """The run's samples consumed (every rank's), in its canonical order."""
        return self.batches * self.layout.ranks * self.layout.batch

    @property
    def epoch(self) -> float:
        """Epochs completed, as a fraction, by the run's slowest partition."""
        done = self.canon.consumed(self.samples)
        return min(self.orders.epochs_done(p, int(k)) for p, k in enumerate(done))

    def _fingerprint(self) -> dict:
        c = self.cfg
        return {"shards": [(s.name, s.samples) for s in self.shard_set.shards],
                "shard_sha256": [s.sha256 for s in self.shard_set.shards],
                "seed": c.seed, "repeats": c.repeats, "shuffle_buffer": c.shuffle_buffer,
                **({"repeat_mode": c.repeat_mode} if c.repeat_mode != "temporal" else {}),
                **({"clip_starts": c.clip_starts} if c.clip_starts != "any" else {})}

    def waiting_on(self) -> str:
        """The loader worker the next batch comes from, and the shard it reads for it (from the
        plan: the shard of the first sample of that batch), for a message about a stalled
        loader."""
        local = (self.batches - self._iter_start) % self.workers   # the DataLoader's number
        ps, ks = self.canon.locate(self.layout.slots(self.batches, self.rank)[:1])
        p, k = int(ps[0]), int(ks[0])
        epoch, j, _ = self.orders.where(p, k)
        shard = self.shard_set.shards[
            self.orders.shard_at(p, epoch, int(self.orders.order(p, epoch)[j]))]
        return f"loader worker {local} (reading {shard.url})"

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "rank": self.rank, "fingerprint": self._fingerprint(),
                "canon": self.canon.as_dict(), "samples": self.samples,
                "skipped": list(self.skipped)}

    def load_state_dict(self, state: dict):
        mine = json.loads(json.dumps(self._fingerprint()))
        theirs = json.loads(json.dumps(state.get("fingerprint"))) or {}
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                "the saved data-stream position was written by an earlier tubemae, whose order "
                "depended on the number of processes; finish that run with the version that "
                "started it, or start a new run.dir")
        if mine.get("shard_sha256") is not None and theirs.get("shard_sha256") != \
                mine["shard_sha256"] and {k: v for k, v in theirs.items() if k != "shard_sha256"} \
                == {k: v for k, v in mine.items() if k != "shard_sha256"}:
            raise DataSetError(
                f"the shards of {self.shard_set.root} were re-prepared since this run's "
                f"checkpoint was saved (same names and counts, other contents: their sha256 in "
                f"manifest.json changed); resume with the data the run started with, or start "
                f"a new run.dir")
        if theirs != mine:
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(
                f"the saved data-stream position does not fit this run: {diff} changed since it "
                f"was saved; resume with the same data, seed and repeats, or start a new "
                f"run.dir")
        self._set_canon(Canon(**state["canon"]))
        per_batch = self.layout.ranks * self.layout.batch
        if state["samples"] % per_batch:
            raise LayoutError(f"the run stopped after {state['samples']} samples, not a whole "
                              f"number of micro-batches of {per_batch} samples")
        self.batches = state["samples"] // per_batch
        saved = list(state["skipped"])
        self.skipped = saved if len(saved) == self.workers else \
            [sum(saved)] + [0] * (self.workers - 1)

    def __iter__(self) -> Iterator[dict]:
        ds = _WorkerSplit(self.cfg, self.shard_set, self.orders, self.canon, self.layout,
                          self.rank, self.batches)
        if self.cfg.num_workers > 0:
            # Its own generator: the loader must not draw from the global RNG, which the
            # training loop saves and restores for exact resume.
            # NVDEC workers use CUDA, which a forked child of a CUDA process cannot
            context = "spawn" if self.cfg.decode == "nvdec" else None
            loader = torch.utils.data.DataLoader(ds, batch_size=None,
                                                 num_workers=self.cfg.num_workers,
                                                 prefetch_factor=2, persistent_workers=False,
                                                 pin_memory=self.pin_memory,
                                                 worker_init_fn=leave_signals_to_parent,
                                                 multiprocessing_context=context,
                                                 timeout=self.cfg.timeout,
                                                 generator=torch.Generator().manual_seed(0))
        else:
            loader = ds
        base, skipped_before = self.batches, list(self.skipped)
        self._iter_start = base
        for batch in loader_batches(loader, self.watch):
            st = batch.pop("_state")
            local = (st["v"] - base) % self.workers
            self.skipped[local] = skipped_before[local] + st["skipped"]
            self.batches += 1
            yield batch


class EvalStream:
    """Every sample of a split exactly once across ranks, as ``test_clips x test_crops`` views.

    Batches hold ``index`` (global sample number) and ``view``, so scores can be averaged per
    sample after gathering; the last batch may be short.
    """

    def __init__(self, cfg: StreamConfig, split: str = "val", rank: int = 0,
                 world_size: int = 1, shard_set: ShardSet | None = None):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.shard_set = replace(shard_set or load_shard_set(cfg.shards, split),
                                 io=cfg.store_options())
        self.workers = max(cfg.num_workers, 1)

    def _rank_units(self) -> list[Unit]:
        units = plan_units([s.samples for s in self.shard_set.shards], self.world_size)
        return units[self.rank::self.world_size]

    def __len__(self) -> int:
        """Samples this rank evaluates."""
        return sum(u.count for u in self._rank_units())

    def __iter__(self) -> Iterator[dict]:
        units = self._rank_units()
        ds = _EvalSplit(self.cfg, self.shard_set, units, self.workers)
        if self.cfg.num_workers > 0:
            yield from loader_batches(torch.utils.data.DataLoader(
                ds, batch_size=None, num_workers=self.cfg.num_workers,
                worker_init_fn=leave_signals_to_parent,
                generator=torch.Generator().manual_seed(0)))
        else:
            yield from ds


class _EvalSplit(torch.utils.data.IterableDataset):
    def __init__(self, cfg, shard_set, units, workers):
        self.cfg, self.shard_set, self.units, self.workers = cfg, shard_set, units, workers

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        maker, counter = SampleMaker(self.cfg, self.shard_set), SkipCounter()
        urls = [s.url for s in self.shard_set.shards]
        first_number = first_sample_numbers([s.samples for s in self.shard_set.shards])
        views, labels, index, view_ids = [], [], [], []
        for unit in self.units[w::nw]:
            if not shard_intact(self.shard_set.shards[unit.shard], self.cfg.strict):
                counter.skipped += unit.count
                continue
            for j, raw in numbered_samples(urls[unit.shard], unit, set(range(unit.count)),
                                           self.shard_set.shards[unit.shard], self.cfg.strict,
                                           self.shard_set.io or StoreOptions()):
                try:
                    vs, label = maker.eval_views(raw)
                except Exception as e:
                    counter.skip(f"{raw.get('__key__')} in {raw.get('__url__')}", e)
                    continue
                for v_id, v in enumerate(vs):
                    views.append(v)
                    labels.append(label)
                    index.append(int(first_number[unit.shard]) + j)
                    view_ids.append(v_id)
                    if len(views) == self.cfg.batch_size:
                        yield {**collate(views, [], labels, index),
                               "view": torch.tensor(view_ids)}
                        views, labels, index, view_ids = [], [], [], []
        if views:
            yield {**collate(views, [], labels, index), "view": torch.tensor(view_ids)}


def batch_to_device(batch: dict, device: torch.device, size: int | None) -> dict:
    """A training batch on ``device``; a device-augmentation batch gets its ``video`` made
    there (crop and resize of the shipped frames, the same values as the CPU path)."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()
           if torch.is_tensor(v) and k not in ("clip_frames", "clip_source", "clip_crop",
                                               "frame_colour")}
    if "frames" in batch:
        frames = [f.to(device, non_blocking=True) for f in batch["frames"]]
        colour = batch.get("frame_colour")
        out["video"] = crop_batch(frames, batch["clip_source"], batch["clip_frames"],
                                  batch["clip_crop"], size,
                                  None if colour is None else colour.tolist())
    return out
