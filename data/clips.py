"""From one raw sample to what a batch holds: training clips (strided frames, a multi-scale crop,
a mask) or evaluation views, then the batch itself."""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from .decode import UnshippableFrames, decode_frames, decode_yuv420
from .manifest import DataSetError, ShardSet
from .masks import make_mask, running_cell_mask
from .nvdec import worker_decoder
from .plan import clip_seed
from .sampling import clip_span, eval_clip_indices, resample_depth_indices, sample_frame_indices
from .shard_reader import decode_sample
from .transforms import apply_crop, eval_crops, train_crop_params, volume_transform

if TYPE_CHECKING:
    from .config import StreamConfig

log = logging.getLogger("data.stream")


def check_stride(cfg: "StreamConfig"):
    """``data.stride`` against the frame step the shards of ``cfg.shards`` were prepared with,
    read from their manifest, before a run makes anything (the loader workers check it again).
    Anything that is not a prepared set is left to the readers, which name what it lacks."""
    import os
    from .manifest import has_splits, load_shard_set
    from .store import is_remote
    folder = cfg.shards
    if is_remote(folder):
        try:
            shard_set = load_shard_set(folder, cfg.split, verify=False,
                                       options=cfg.store_options())
        except DataSetError:
            return             # the stream says what the set lacks, or that the store is down
        stored_stride(cfg, shard_set)
        start_every(cfg, shard_set)
        check_device_format(cfg, shard_set)
        return
    if os.path.isdir(folder) and has_splits(folder):
        folder = os.path.join(folder, cfg.split or "train")
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        return                 # not a prepared set (yet): the readers say what it lacks
    shard_set = load_shard_set(folder, verify=False)
    stored_stride(cfg, shard_set)
    start_every(cfg, shard_set)
    check_device_format(cfg, shard_set)


def check_device_format(cfg: "StreamConfig", shard_set: ShardSet):
    """With ``data.device_format: yuv420``, refuse before the run a set holding videos whose
    frames that path cannot ship (4:4:4 or 4:2:2 chroma, other bit depths, odd sizes), naming
    them and the way out; read from the pixel format prep records for each sample (sets
    prepared before it recorded one are checked by the loader workers, which stop the run on
    the first such video instead of skipping it)."""
    from .decode import YUV420_FORMATS
    from .shard_reader import sample_metadata
    if cfg.device_format != "yuv420" or shard_set.kind != "video":
        return
    bad = [(key, meta) for key, meta in sample_metadata(shard_set)
           if meta.get("pix_fmt") and (meta["pix_fmt"] not in YUV420_FORMATS
                                       or int(meta.get("width", 0)) % 2
                                       or int(meta.get("height", 0)) % 2)]
    if bad:
        named = ", ".join(f"{m.get('source', k)} ({m['pix_fmt']} {m.get('width')}x"
                          f"{m.get('height')})" for k, m in bad[:3])
        raise ValueError(
            f"data.device_format=yuv420 cannot ship {len(bad)} video(s) of {shard_set.root} "
            f"as they are: {named}{' ...' if len(bad) > 3 else ''}; it takes even-sized "
            f"{'/'.join(YUV420_FORMATS)}. Re-prepare the set transcoded (data.prep videos ... "
            f"--transcode) or use data.device_format=rgb")


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


def start_every(cfg: StreamConfig, shard_set: ShardSet) -> int:
    """Stored frames between the starts a training clip may take: 1, or with
    ``data.clip_starts: keyframe`` the keyframe interval prep wrote (``--gop``)."""
    if cfg.clip_starts != "keyframe" or shard_set.kind != "video":
        return 1
    gop = shard_set.options.get("gop")
    if not gop:
        raise ValueError(f"data.clip_starts=keyframe needs shards whose keyframes prep placed "
                         f"(transcoded: --short-side, --frame-step or --transcode, every --gop "
                         f"frames); {shard_set.root} holds the videos as they came: re-prepare "
                         f"it so, or set data.clip_starts=any")
    return int(gop)


def short_samples(cfg: StreamConfig, shard_set: ShardSet, limit: int = 64
                  ) -> tuple[int, int, int | None]:
    """(samples shorter than one clip, samples looked at, the shortest's stored frames) among
    the first ``limit`` samples of a video set, read from their metadata only (no decoding)."""
    import json

    from .shard_reader import leading_samples
    if shard_set.kind != "video":
        return 0, 0, None
    span = clip_span(cfg.num_frames, stored_stride(cfg, shard_set))
    frames = [int(json.loads(raw["json"]).get("num_frames", 0))
              for raw in leading_samples(shard_set, limit)]
    return sum(n < span for n in frames), len(frames), min(frames, default=None)


class SampleMaker:
    """Turns one raw sample into training clips (and masks), or evaluation views.

    With ``augment: device`` a video's training clips are not cropped here: ``train_clips``
    returns, per clip, its frame positions in the decoded video and its crop parameters, and
    the decoded frames once (as ``frames``)."""

    def __init__(self, cfg: StreamConfig, shard_set: ShardSet):
        self.cfg, self.stride = cfg, stored_stride(cfg, shard_set)
        self.start_every = start_every(cfg, shard_set)
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
        rngs = [np.random.default_rng(clip_seed(cfg.seed, epoch, shard, member, r))
                for r in range(cfg.repeats)]
        if kind == "video":
            picked = {}

            def pick(n: int) -> np.ndarray:
                # repeat 0 draws its start from its own stream; later repeats from a fresh
                # copy of theirs
                # spatial: one window for every repeat (its crops and masks still differ)
                windows = 1 if cfg.repeat_mode == "spatial" else cfg.repeats
                picked["clips"] = [sample_frame_indices(
                    n, cfg.num_frames, stride,
                    rngs[0] if r == 0 else np.random.default_rng(
                        clip_seed(cfg.seed, epoch, shard, member, r)),
                    cfg.short_video, self.start_every)
                    for r in range(windows)] * (cfg.repeats // windows)
                picked["union"] = np.unique(np.concatenate(picked["clips"]))
                return picked["union"]
            # one open, one decode for every repeat
            colour = None
            if cfg.decode == "nvdec":
                frames = torch.from_numpy(worker_decoder().frames(payload, pick))
            elif cfg.augment == "device" and cfg.device_format == "yuv420":
                try:
                    planes, colour = decode_yuv420(payload, pick)
                except UnshippableFrames as e:      # a setting to change: stop, never skip
                    source = json.loads(raw.get("json") or b"{}").get("source", "")
                    raise DataSetError(f"{raw.get('__key__')} ({source}) in "
                                       f"{raw.get('__url__')}: {e}") from None
                frames = torch.from_numpy(planes)
            else:
                frames = torch.from_numpy(decode_frames(payload, pick))
            height, width = frames.shape[1:3]
            if colour is not None:
                height = height * 2 // 3
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
        shipped = (frames if colour is None else (frames, colour)) if on_device else None
        return clips, masks, decode, label, shipped

    def eval_views(self, raw: dict):
        kind, payload, label = self.decode(raw)
        return eval_views(kind, payload, self.cfg, self.stride), label


def eval_views(kind: str, payload, cfg: StreamConfig, stride: int) -> list[torch.Tensor]:
    """The evaluation's views of one sample: a volume resampled to ``cfg.num_frames`` slices,
    or ``cfg.test_clips`` clips (spread over the video, ``stride`` in the frames given) x
    ``cfg.test_crops`` crops. A raw file's display rotation is applied by the decoder."""
    if kind == "volume":
        depth = resample_depth_indices(payload.shape[0], cfg.num_frames)
        return [volume_transform(payload, depth, cfg.size)]
    picked = {}

    def pick(n: int) -> np.ndarray:
        picked["clips"] = eval_clip_indices(n, cfg.num_frames, stride, cfg.test_clips,
                                            cfg.short_video)
        picked["union"] = np.unique(picked["clips"])
        return picked["union"]
    frames = decode_frames(payload, pick)
    where = np.searchsorted(picked["union"], picked["clips"])
    views = []
    for c in range(cfg.test_clips):
        views.extend(eval_crops(frames[where[c]], cfg.size, cfg.test_crops))
    return views


class SkipCounter:
    def __init__(self):
        self.skipped = 0

    def skip(self, where: str, err: Exception):
        self.skipped += 1
        log.warning("skipping corrupt sample %s (%s); %d skipped so far", where, err,
                    self.skipped)


def collate(clips, masks, labels, index, decode=(), videos=()) -> dict:
    batch = {"label": torch.tensor(labels, dtype=torch.int64),
             "index": torch.tensor(index, dtype=torch.int64)}
    if videos:  # device augmentation: clips are (video number, positions, crop parameters)
        if isinstance(videos[0], tuple):    # yuv420 planes, with each video's colour
            batch["frame_colour"] = torch.tensor([c for _, c in videos], dtype=torch.int64)
            videos = [v for v, _ in videos]
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
