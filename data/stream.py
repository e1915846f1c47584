"""Streams of training and evaluation batches over a prepared shard set.

Training order is a pure function of (seed, epoch, rank, worker): the shard order of an epoch
comes from a seeded RNG, shards are dealt to the ``world_size x num_workers`` loader workers,
and each worker passes its samples through a shuffle buffer whose random draws are also seeded.
The order is planned on sample *positions* before any byte is read, so a worker can restart at
any position: it re-reads only the shards that still hold samples it has not delivered. A
stream's state (per worker: epoch and position, plus which worker the next batch comes from) is
saved in checkpoints, and a restored stream yields exactly the batches the uninterrupted one
would have.

Every clip gets its own RNG seeded by (seed, epoch, shard, sample, repeat): crops and masks do
not depend on which worker or process produced them.

Batches are dicts: ``video`` uint8 (B, C, T, H, W), ``label`` int64 (B,), ``mask`` bool (B, N)
(training, unless mask == "none"), ``index`` int64 (B,) global sample number; evaluation batches
add ``view`` int64 (B,).
"""
from __future__ import annotations

import io
import json
import logging
import math
import signal
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .decode import VIDEO_EXTS, VideoDecodeError, decode_frames
from .manifest import DataSetError, Shard, ShardSet, file_sha256, load_shard_set
from .masks import make_mask, running_cell_mask
from .nvdec import worker_decoder
from .sampling import (SHORT_MODES, eval_clip_indices, resample_depth_indices,
                       sample_frame_indices)
from .transforms import (MULTISCALE, apply_crop, crop_batch, eval_crops, train_crop_params,
                         volume_transform)

log = logging.getLogger(__name__)
STATE_VERSION = 1


@dataclass
class StreamConfig:
    """The `data` section of a recipe."""
    shards: str = ""                  # a prepared folder (with or without train/val/test)
    split: str | None = None          # which split to read; None = train when splits exist
    batch_size: int = 8               # clips per batch on one rank
    num_workers: int = 2              # loader processes per rank (0 = in the training process)
    num_frames: int = 16              # frames per clip (volumes: slices, resampled)
    stride: int = 4                   # source frames between sampled frames (also on shards
                                      # prepared with --frame-step: it must divide this)
    size: int | None = 224            # output side; None keeps a volume's own size
    scales: tuple = MULTISCALE        # multi-scale crop scales of the short side
    flip: bool = False                # random left-right flip (off in VideoMAE pre-training)
    repeats: int = 1                  # clips drawn from each decoded video (repeated sampling)
    mask: str = "tube"                # tube | random | none
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.0   # >0: VideoMAEv2 running-cell decoder masking
    tubelet: int = 2                  # frames per token, for the mask grid
    patch: int = 16                   # pixels per token side, for the mask grid
    shuffle_buffer: int = 256         # samples per worker shuffle buffer (1 = no shuffle)
    seed: int = 0
    short_video: str = "clamp"        # clamp | loop: indices past the end of a short video
    test_clips: int = 1               # evaluation views: clips x crops per sample
    test_crops: int = 1
    strict: bool = False              # a shard whose sha256 does not match stops the run
                                      # (otherwise its samples are skipped and counted)
    augment: str = "cpu"              # cpu | device: crop and resize training clips in the
                                      # loader, or on the training device (workers ship the
                                      # decoded frames and the crop boxes)
    decode: str = "cpu"               # cpu | nvdec: the loader workers decode videos on the
                                      # CPU, or on the GPU's NVDEC engines (needs augment:
                                      # device; falls back to cpu where NVDEC is missing)

    def check(self):
        if self.batch_size % self.repeats:
            raise ValueError(f"data.batch_size ({self.batch_size}) must be a multiple of "
                             f"data.repeats ({self.repeats})")
        if self.mask not in ("tube", "random", "none"):
            raise ValueError(f"data.mask must be tube, random or none, not {self.mask!r}")
        if self.short_video not in SHORT_MODES:
            raise ValueError(f"data.short_video must be one of {SHORT_MODES}")
        if self.num_frames % self.tubelet:
            raise ValueError(f"data.num_frames ({self.num_frames}) must be a multiple of "
                             f"data.tubelet ({self.tubelet})")
        if not 0.0 <= self.decoder_mask_ratio < 1.0:
            raise ValueError("data.decoder_mask_ratio must be in [0, 1)")
        if self.augment not in ("cpu", "device"):
            raise ValueError(f"data.augment must be cpu or device, not {self.augment!r}")
        if self.decode not in ("cpu", "nvdec"):
            raise ValueError(f"data.decode must be cpu or nvdec, not {self.decode!r}")
        if self.decode == "nvdec" and self.augment != "device":
            raise ValueError("data.decode=nvdec needs data.augment=device (frames decoded on "
                             "the GPU are cropped there)")
        if self.augment == "device" and self.size is None:
            raise ValueError("data.augment=device needs data.size (the side of the clips)")
        if self.size is not None and self.size % self.patch:
            raise ValueError(f"data.size ({self.size}) must be a multiple of data.patch "
                             f"({self.patch})")

    def token_grid(self, height: int | None = None) -> tuple[int, int, int]:
        side = self.size if self.size is not None else height
        return (self.num_frames // self.tubelet, side // self.patch, side // self.patch)


def stored_stride(cfg: StreamConfig, shard_set: ShardSet) -> int:
    """``data.stride`` (source frames) in the frames stored in ``shard_set``: prep's
    ``--frame-step k`` kept every k-th frame, so the stride there is stride / k and a clip
    covers the same time span."""
    step = int(shard_set.options.get("frame_step", 1) or 1)
    if cfg.stride % step:
        raise ValueError(f"data.stride={cfg.stride} is not a multiple of the frame step "
                         f"{step} that {shard_set.root} was prepared with (--frame-step): use a "
                         f"stride of {step}, {2 * step}, ...")
    return cfg.stride // step


@dataclass(frozen=True)
class Unit:
    """What one worker reads: every ``parts``-th sample of a shard starting at ``part``."""
    shard: int
    part: int
    parts: int
    count: int


def plan_units(counts: list[int], total_workers: int) -> list[Unit]:
    """Cut shards into units so that there are at least as many units as workers.

    With enough shards a unit is a whole shard; with fewer, each shard is split by sample
    number, and each worker reads the whole tar but keeps only its part.
    """
    parts = max(1, math.ceil(total_workers / max(len(counts), 1)))
    return [Unit(s, p, parts, len(range(p, n, parts)))
            for s, n in enumerate(counts) for p in range(parts)]


def worker_units(units: list[Unit], epoch: int, seed: int, worker: int, total: int,
                 shuffle: bool) -> list[Unit]:
    """The units global worker ``worker`` of ``total`` reads in ``epoch``, in reading order."""
    order = (np.random.default_rng([seed, epoch, 7919]).permutation(len(units)) if shuffle
             else np.arange(len(units)))
    return [units[i] for i in order[worker::total]]


def buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order (a permutation of 0..n-1) of a shuffle buffer of ``size`` fed 0..n-1.

    The buffer fills up, then each new item replaces a random slot whose item is emitted; at the
    end the rest comes out in random order. Only positions are shuffled, never bytes.
    """
    if size <= 1 or n <= 1:
        return np.arange(n)
    fill = min(size, n)
    buf = list(range(fill))
    draws = rng.integers(0, fill, max(n - fill, 0))
    out = np.empty(n, np.int64)
    for k, item in enumerate(range(fill, n)):
        j = draws[k]
        out[k] = buf[j]
        buf[j] = item
    tail = rng.permutation(fill)
    out[n - fill:] = np.asarray(buf)[tail]
    return out


_VERIFIED: dict = {}  # shard path -> its bytes match the manifest's sha256 (per process)


def shard_intact(shard: Shard, strict: bool = False) -> bool:
    """Whether a local shard's bytes have the sha256 its manifest recorded, hashed the first
    time this process opens it (one read, small next to decoding its videos). A damaged shard
    is skipped with a warning, or stops the run under ``data.strict``."""
    if not shard.sha256 or "://" in shard.url:
        return True
    ok = _VERIFIED.get(shard.url)
    if ok is None:
        ok = _VERIFIED[shard.url] = file_sha256(shard.url) == shard.sha256
    if not ok:
        msg = (f"shard {shard.url} does not match the sha256 in its manifest (damaged after "
               f"prep); repair it by running the same prep command with --verify")
        if strict:
            raise DataSetError(msg)
        log.warning("%s; its samples are skipped", msg)
    return ok


class _Reader:
    """Reads the samples of one worker's units, in order, keeping only wanted positions."""

    def __init__(self, shards: list[Shard], units: list[Unit], wanted: np.ndarray,
                 strict: bool = False):
        self.shards, self.units, self.strict = shards, units, strict
        self.wanted = np.sort(wanted)
        self.offsets = np.concatenate([[0], np.cumsum([u.count for u in units])]).astype(int)

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        """(stream position, member number in its shard, raw sample)."""
        # each unit's wanted positions are one slice of the sorted array
        bounds = np.searchsorted(self.wanted, self.offsets)
        for ui, unit in enumerate(self.units):
            base = int(self.offsets[ui])
            local = set((self.wanted[bounds[ui]:bounds[ui + 1]] - base).tolist())
            if not local or not shard_intact(self.shards[unit.shard], self.strict):
                continue
            for j, sample in _numbered_samples(self.shards[unit.shard].url, unit, local):
                yield base + j // unit.parts, j, sample


def _numbered_samples(url: str, unit: Unit, local: set) -> Iterator[tuple[int, dict]]:
    """(member number j in the shard, raw sample) for the unit's samples in ``local``."""
    counter = {"key": None, "j": -1}
    numbers: dict = {}

    def select(fname: str) -> bool:
        key = fname.split(".", 1)[0]
        if key != counter["key"]:
            counter["key"], counter["j"] = key, counter["j"] + 1
            numbers[key] = counter["j"]
        j = counter["j"]
        return j % unit.parts == unit.part and (j // unit.parts) in local

    try:
        with wds.gopen(url, "rb") as stream:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream, select_files=select))
            for sample in group_by_keys(files):
                yield numbers.pop(sample["__key__"]), sample
                for k in [k for k, v in numbers.items() if v < counter["j"] - 1]:
                    del numbers[k]
    except Exception as e:  # a truncated or unreadable shard: keep what was read
        log.warning("shard %s is damaged (%s); its remaining samples are skipped", url, e)


def decode_sample(raw: dict) -> tuple[str, object, int]:
    """Raw tar sample -> ('video', bytes, label) or ('volume', ndarray, label).

    Only explicit decoders: video bytes, npy (no pickle), json, cls.
    """
    label = int(raw["cls"]) if "cls" in raw else int(json.loads(raw["json"])["label"])
    if "npy" in raw:
        return "volume", np.load(io.BytesIO(raw["npy"]), allow_pickle=False), label
    for ext in VIDEO_EXTS:
        if ext in raw:
            return "video", raw[ext], label
    raise VideoDecodeError(f"sample {raw.get('__key__')} holds no video or npy payload")


def _clip_seed(seed: int, epoch: int, shard: int, member: int, repeat: int) -> list[int]:
    return [seed, epoch, shard, member, repeat]


class _SampleMaker:
    """Turns one raw sample into training clips (and masks), or evaluation views.

    With ``augment: device`` a video's training clips are not cropped here: ``train_clips``
    returns, per clip, its frame positions in the decoded video and its crop parameters, and
    the decoded frames once (as ``frames``)."""

    def __init__(self, cfg: StreamConfig, shard_set: ShardSet):
        self.cfg, self.stride = cfg, stored_stride(cfg, shard_set)
        self.num_classes = shard_set.num_classes

    def decode(self, raw: dict) -> tuple[str, object, int]:
        kind, payload, label = decode_sample(raw)
        if self.num_classes and not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} is outside the {self.num_classes} classes of the "
                             f"manifest")
        return kind, payload, label

    def train_clips(self, raw: dict, epoch: int, shard: int, member: int):
        cfg, stride = self.cfg, self.stride
        kind, payload, label = self.decode(raw)
        rngs = [np.random.default_rng(_clip_seed(cfg.seed, epoch, shard, member, r))
                for r in range(cfg.repeats)]
        if kind == "video":
            picked = {}

            def pick(n: int) -> np.ndarray:
                # repeat 0 draws its start from its own stream; later repeats from a fresh
                # copy of theirs
                picked["clips"] = [sample_frame_indices(
                    n, cfg.num_frames, stride,
                    rngs[0] if r == 0 else np.random.default_rng(
                        _clip_seed(cfg.seed, epoch, shard, member, r)),
                    cfg.short_video) for r in range(cfg.repeats)]
                picked["union"] = np.unique(np.concatenate(picked["clips"]))
                return picked["union"]
            # one open, one decode for every repeat
            frames = torch.from_numpy(worker_decoder().frames(payload, pick)
                                      if cfg.decode == "nvdec" else
                                      decode_frames(payload, pick))
            height, width = frames.shape[1:3]
        clips, masks, decode = [], [], []
        on_device = kind == "video" and cfg.augment == "device"
        for r, rng in enumerate(rngs):
            if kind == "video":
                idx = np.searchsorted(picked["union"], picked["clips"][r])
                params = train_crop_params(height, width, rng, cfg.scales, cfg.flip)
                clip = ((torch.from_numpy(idx), params) if on_device
                        else apply_crop(frames[idx], params, cfg.size))
            else:
                depth = resample_depth_indices(payload.shape[0], cfg.num_frames)
                clip = volume_transform(payload, depth, cfg.size, rng, cfg.flip)
            clips.append(clip)
            if cfg.mask != "none":
                g = torch.Generator().manual_seed(int(rng.integers(2**62)))
                grid = cfg.token_grid(None if on_device else clip.shape[-1])
                m = make_mask(cfg.mask, 1, grid, cfg.mask_ratio, g)
                masks.append(m[0])
                if cfg.decoder_mask_ratio > 0:
                    decode.append(running_cell_mask(m, grid, cfg.decoder_mask_ratio, g)[0])
        return clips, masks, decode, label, (frames if on_device else None)

    def eval_views(self, raw: dict):
        cfg = self.cfg
        kind, payload, label = self.decode(raw)
        if kind == "volume":
            depth = resample_depth_indices(payload.shape[0], cfg.num_frames)
            return [volume_transform(payload, depth, cfg.size)], label
        picked = {}

        def pick(n: int) -> np.ndarray:
            picked["clips"] = eval_clip_indices(n, cfg.num_frames, self.stride, cfg.test_clips,
                                                cfg.short_video)
            picked["union"] = np.unique(picked["clips"])
            return picked["union"]
        frames = decode_frames(payload, pick)
        where = np.searchsorted(picked["union"], picked["clips"])
        views = []
        for c in range(cfg.test_clips):
            views.extend(eval_crops(frames[where[c]], cfg.size, cfg.test_crops))
        return views, label


class _Counter:
    def __init__(self):
        self.skipped = 0

    def skip(self, where: str, err: Exception):
        self.skipped += 1
        log.warning("skipping corrupt sample %s (%s); %d skipped so far", where, err,
                    self.skipped)


def _collate(clips, masks, labels, index, decode=(), videos=()) -> dict:
    batch = {"label": torch.tensor(labels, dtype=torch.int64),
             "index": torch.tensor(index, dtype=torch.int64)}
    if videos:  # device augmentation: clips are (video number, positions, crop parameters)
        batch["frames"] = list(videos)
        batch["clip_source"] = torch.tensor([c[0] for c in clips], dtype=torch.int64)
        batch["clip_frames"] = torch.stack([c[1] for c in clips])
        batch["clip_crop"] = torch.tensor([c[2] for c in clips], dtype=torch.int64)
    else:
        batch["video"] = torch.stack(clips)
    if masks:
        batch["mask"] = torch.stack(masks)
    if decode:
        batch["decode_mask"] = torch.stack(decode)
    return batch


def _first_sample_numbers(shard_set: ShardSet) -> np.ndarray:
    """Global number of each shard's first sample (manifest order)."""
    return np.concatenate([[0], np.cumsum([s.samples for s in shard_set.shards])]).astype(int)


def _worker_batches(cfg: StreamConfig, shard_set: ShardSet, units: list[Unit], worker: int,
                    total: int, epoch: int, pos: int) -> Iterator[dict]:
    """Endless training batches of global worker ``worker`` of ``total``, from (epoch, pos).

    ``pos`` counts the samples of that epoch's planned order already consumed. Each batch
    carries ``_state``: where this worker continues after it.
    """
    maker, counter = _SampleMaker(cfg, shard_set), _Counter()
    first_number = _first_sample_numbers(shard_set)
    clips, masks, decode, labels, index, videos = [], [], [], [], [], []
    while True:
        mine = worker_units(units, epoch, cfg.seed, worker, total, cfg.shuffle_buffer > 1)
        ends = np.cumsum([u.count for u in mine]).astype(int)
        n = int(ends[-1]) if len(ends) else 0
        if n == 0:
            raise RuntimeError(f"loader worker {worker} of {total} got no samples from "
                               f"{shard_set.root}; use fewer workers or more shards")
        order = buffer_order(n, cfg.shuffle_buffer,
                             np.random.default_rng([cfg.seed, epoch, worker, 104729]))
        remaining = order[pos:]
        reader = iter(_Reader(shard_set.shards, mine, remaining, cfg.strict))
        cache, read_upto, usable = {}, -1, 0
        for k, p in enumerate(remaining.tolist(), start=pos):
            while p not in cache and read_upto < p:
                try:
                    q, member, raw = next(reader)
                except StopIteration:
                    read_upto = n
                    break
                cache[q] = (member, raw)
                read_upto = q
            if p not in cache:
                counter.skip(f"#{p} of worker {worker} epoch {epoch}",
                             RuntimeError("missing from its shard"))
            else:
                member, raw = cache.pop(p)
                shard = mine[int(np.searchsorted(ends, p, side="right"))].shard
                try:
                    c, m, d, label, frames = maker.train_clips(raw, epoch, shard, member)
                except Exception as e:  # corrupt payload: counted, skipped, stream goes on
                    counter.skip(f"{raw.get('__key__')} in {raw.get('__url__')}", e)
                else:
                    if frames is not None:
                        c = [(len(videos), idx, params) for idx, params in c]
                        videos.append(frames)
                    clips += c
                    masks += m
                    decode += d
                    labels += [label] * len(c)
                    index += [int(first_number[shard]) + member] * len(c)
                    usable += 1
            if len(clips) >= cfg.batch_size:
                batch = _collate(clips, masks, labels, index, decode, videos)
                nxt = (epoch, k + 1) if k + 1 < n else (epoch + 1, 0)
                batch["_state"] = {"worker": worker, "epoch": nxt[0], "pos": nxt[1],
                                   "skipped": counter.skipped}
                yield batch
                clips, masks, decode, labels, index, videos = [], [], [], [], [], []
        if usable == 0 and pos == 0:
            raise RuntimeError(f"loader worker {worker}: no usable sample in a whole epoch of "
                               f"{shard_set.root}; see the warnings above")
        epoch, pos = epoch + 1, 0


def leave_signals_to_parent(_worker_id: int = 0):
    """In a loader worker: ignore SIGTERM and SIGINT. SLURM, torchrun and `kill -- -PGID`
    signal the whole process group; a worker that died of it first would take the trainer down
    before it could checkpoint. The trainer handles the signal and shuts its workers down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerSplit(torch.utils.data.IterableDataset):
    """The per-process part of a TrainStream: a DataLoader worker picks its logical worker."""

    def __init__(self, cfg, shard_set, units, rank, workers, starts, offset):
        self.cfg, self.shard_set, self.units = cfg, shard_set, units
        self.rank, self.workers, self.starts, self.offset = rank, workers, starts, offset
        self.world_workers = None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        local = ((info.id if info else 0) + self.offset) % self.workers
        total = self.world_workers
        epoch, pos = self.starts[local]
        yield from _worker_batches(self.cfg, self.shard_set, self.units,
                                   self.rank * self.workers + local, total, epoch, pos)


class TrainStream:
    """Endless, exactly resumable training batches for one rank.

    ``iter(stream)`` yields batch dicts; ``state_dict()`` after any batch records where the
    stream stands, and ``load_state_dict`` on a fresh stream with the same config, data and
    world size makes it yield the batches that would have come next.
    """

    def __init__(self, cfg: StreamConfig, rank: int = 0, world_size: int = 1,
                 shard_set: ShardSet | None = None, pin_memory: bool = False):
        cfg.check()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.pin_memory = pin_memory  # page-locked batches: asynchronous copies to a GPU
        self.shard_set = shard_set or load_shard_set(cfg.shards, cfg.split or "train")
        if self.shard_set.num_samples == 0:
            raise DataSetError(f"{self.shard_set.root} holds no samples; prepare it again from "
                               f"inputs that can be used (see its failures.jsonl)")
        self.workers = max(cfg.num_workers, 1)
        self.units = plan_units([s.samples for s in self.shard_set.shards],
                                world_size * self.workers)
        self.positions = [(0, 0)] * self.workers   # (epoch, pos) per logical worker
        self.next_worker = 0
        self.batches = 0
        self.skipped = [0] * self.workers

    @property
    def epoch(self) -> float:
        """Epochs completed, as a fraction, by the slowest logical worker of this rank."""
        fractions = []
        for local, (e, pos) in enumerate(self.positions):
            g = self.rank * self.workers + local
            n = sum(u.count for u in worker_units(self.units, e, self.cfg.seed, g,
                                                  self.world_size * self.workers,
                                                  self.cfg.shuffle_buffer > 1))
            fractions.append(e + (pos / n if n else 0.0))
        return min(fractions)

    def _fingerprint(self) -> dict:
        c = self.cfg
        return {"shards": [(s.name, s.samples) for s in self.shard_set.shards],
                "world_size": self.world_size, "workers": self.workers, "seed": c.seed,
                "batch_size": c.batch_size, "repeats": c.repeats,
                "shuffle_buffer": c.shuffle_buffer}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "rank": self.rank, "fingerprint": self._fingerprint(),
                "positions": [list(p) for p in self.positions], "next_worker": self.next_worker,
                "batches": self.batches, "skipped": list(self.skipped)}

    def load_state_dict(self, state: dict):
        mine = json.loads(json.dumps(self._fingerprint()))
        theirs = json.loads(json.dumps(state.get("fingerprint")))
        if state.get("version") != STATE_VERSION or theirs != mine:
            diff = sorted(k for k in mine if (theirs or {}).get(k) != mine[k])
            raise ValueError(
                f"the saved data-stream position does not fit this run: {diff} changed since it "
                f"was saved; resume with the same data, seed, batch size, workers and world "
                f"size, or start a new run.dir")
        self.positions = [tuple(p) for p in state["positions"]]
        self.next_worker = state["next_worker"]
        self.batches = state["batches"]
        self.skipped = list(state["skipped"])

    def __iter__(self) -> Iterator[dict]:
        ds = _WorkerSplit(self.cfg, self.shard_set, self.units, self.rank, self.workers,
                          list(self.positions), self.next_worker)
        ds.world_workers = self.world_size * self.workers
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
                                                 generator=torch.Generator().manual_seed(0))
        else:
            loader = ds
        for batch in loader:
            st = batch.pop("_state")
            local = st["worker"] - self.rank * self.workers
            self.positions[local] = (st["epoch"], st["pos"])
            self.skipped[local] = st["skipped"]
            self.next_worker = (local + 1) % self.workers
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
        self.shard_set = shard_set or load_shard_set(cfg.shards, split)
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
            yield from torch.utils.data.DataLoader(ds, batch_size=None,
                                                   num_workers=self.cfg.num_workers,
                                                   worker_init_fn=leave_signals_to_parent,
                                                   generator=torch.Generator().manual_seed(0))
        else:
            yield from ds


class _EvalSplit(torch.utils.data.IterableDataset):
    def __init__(self, cfg, shard_set, units, workers):
        self.cfg, self.shard_set, self.units, self.workers = cfg, shard_set, units, workers

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        maker, counter = _SampleMaker(self.cfg, self.shard_set), _Counter()
        urls = [s.url for s in self.shard_set.shards]
        first_number = _first_sample_numbers(self.shard_set)
        views, labels, index, view_ids = [], [], [], []
        for unit in self.units[w::nw]:
            if not shard_intact(self.shard_set.shards[unit.shard], self.cfg.strict):
                counter.skipped += unit.count
                continue
            for j, raw in _numbered_samples(urls[unit.shard], unit, set(range(unit.count))):
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
                        yield {**_collate(views, [], labels, index),
                               "view": torch.tensor(view_ids)}
                        views, labels, index, view_ids = [], [], [], []
        if views:
            yield {**_collate(views, [], labels, index), "view": torch.tensor(view_ids)}


def batch_to_device(batch: dict, device: torch.device, size: int | None) -> dict:
    """A training batch on ``device``; a device-augmentation batch gets its ``video`` made
    there (crop and resize of the shipped frames, the same values as the CPU path)."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()
           if torch.is_tensor(v) and k not in ("clip_frames", "clip_source", "clip_crop")}
    if "frames" in batch:
        frames = [f.to(device, non_blocking=True) for f in batch["frames"]]
        out["video"] = crop_batch(frames, batch["clip_source"], batch["clip_frames"],
                                  batch["clip_crop"], size)
    return out
