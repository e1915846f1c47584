"""The ``data`` section of a recipe (``StreamConfig``): what a stream reads, how clips are cut
and masked, and how shards in a store are read. The streams are ``data/stream.py``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from .sampling import SHORT_MODES
from .store import StoreOptions, is_remote, parse_bytes
from .transforms import MULTISCALE


@dataclass
class StreamConfig:
    """The `data` section of a recipe."""
    shards: str = ""                  # a prepared folder (with or without train/val/test)
    split: str | None = None          # which split to read; None = train when splits exist
    batch_size: int = 8               # clips per batch on one rank
    num_workers: int = 2              # loader processes per rank (0 = in the training process)
    # The clip's geometry is the model's (model.num_frames, img_size, patch_size, tubelet_size):
    # these four are filled from the model section when a recipe is loaded, never stated here.
    num_frames: int = field(default=16, metadata={"from_model": "num_frames"})  # frames (slices)
    stride: int = 4                   # source frames between sampled frames (also on shards
                                      # prepared with --frame-step: it must divide this)
    size: int | None = field(default=224, metadata={"from_model": "img_size"})  # output side
    scales: tuple = MULTISCALE        # multi-scale crop scales of the short side
    flip: bool = False                # random left-right flip (off in VideoMAE pre-training)
    repeats: int = 1                  # clips drawn from each decoded video (repeated sampling)
    repeat_mode: str = "temporal"     # temporal: each repeat its own window (their union is
                                      # decoded); spatial: the repeats share one window's
                                      # frames, each with its own crop, flip and mask
                                      # (VideoMAE V2)
    clip_starts: str = "any"          # any: a training clip starts on any stored frame;
                                      # keyframe: only on a keyframe (every --gop stored
                                      # frames of shards transcoded at prep), so no frame
                                      # before the clip is decoded
    mask: str = "tube"                # tube | random | none
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.0   # >0: VideoMAEv2 running-cell decoder masking
    tubelet: int = field(default=2, metadata={"from_model": "tubelet_size"})  # the mask grid's
    patch: int = field(default=16, metadata={"from_model": "patch_size"})     # token shape
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
    device_format: str = "rgb"        # with augment: device, what workers ship: rgb, or yuv420
                                      # (the decoder's planes, half the bytes; converted to RGB
                                      # on the device with the stream's matrix and range)
    decode: str = "cpu"               # cpu | nvdec: the loader workers decode videos on the
                                      # CPU, or on the GPU's NVDEC engines (needs augment:
                                      # device; falls back to cpu where NVDEC is missing)
    timeout: float = 300.0            # seconds a loader worker may take for one batch before
                                      # the run stops naming it (a hung network read, a
                                      # stopped process); a warning comes at half of it
    store_patience: float = 120.0     # shards in a store (s3://, http(s)://, pipe:): seconds
                                      # of failed reads in a row (each retried with back-off,
                                      # resumed where it broke) before the run stops naming
                                      # the URL; at most 2/3 of data.timeout
    cache_dir: str | None = None      # shards streamed from a store are kept here (named by
                                      # sha256), so later epochs read the local disk
    cache_size: str = "100G"          # the most the cache holds (least recently used go)

    def check(self):
        if not self.timeout > 0:
            raise ValueError(f"data.timeout must be a positive number of seconds, not "
                             f"{self.timeout!r}")
        if not self.store_patience > 0:
            raise ValueError(f"data.store_patience must be a positive number of seconds, not "
                             f"{self.store_patience!r}")
        if is_remote(self.shards) and self.store_patience * 1.5 > self.timeout:
            raise ValueError(f"data.store_patience ({self.store_patience!r}) must be at most "
                             f"two thirds of data.timeout "
                             f"({self.timeout}): a loader worker retrying a store must give up "
                             f"before it is taken for stuck")
        self.store_options()
        if self.batch_size % self.repeats:
            raise ValueError(f"data.batch_size ({self.batch_size}) must be a multiple of "
                             f"data.repeats ({self.repeats})")
        if self.repeat_mode not in ("temporal", "spatial"):
            raise ValueError(f"data.repeat_mode must be temporal or spatial, not "
                             f"{self.repeat_mode!r}")
        if self.clip_starts not in ("any", "keyframe"):
            raise ValueError(f"data.clip_starts must be any or keyframe, not "
                             f"{self.clip_starts!r}")
        if self.mask not in ("tube", "random", "none"):
            raise ValueError(f"data.mask must be tube, random or none, not {self.mask!r}")
        if self.short_video not in SHORT_MODES:
            raise ValueError(f"data.short_video must be one of {SHORT_MODES}")
        if self.num_frames % self.tubelet:
            raise ValueError(f"model.num_frames ({self.num_frames}) must be a multiple of "
                             f"model.tubelet_size ({self.tubelet})")
        if not 0.0 <= self.decoder_mask_ratio < 1.0:
            raise ValueError("data.decoder_mask_ratio must be in [0, 1)")
        if self.augment not in ("cpu", "device"):
            raise ValueError(f"data.augment must be cpu or device, not {self.augment!r}")
        if self.decode not in ("cpu", "nvdec"):
            raise ValueError(f"data.decode must be cpu or nvdec, not {self.decode!r}")
        if self.decode == "nvdec" and self.augment != "device":
            raise ValueError("data.decode=nvdec needs data.augment=device (frames decoded on "
                             "the GPU are cropped there)")
        if self.device_format not in ("rgb", "yuv420"):
            raise ValueError(f"data.device_format must be rgb or yuv420, not "
                             f"{self.device_format!r}")
        if self.device_format == "yuv420" and (self.augment != "device" or
                                               self.decode != "cpu"):
            raise ValueError("data.device_format=yuv420 ships the CPU decoder's planes to the "
                             "device: it needs data.augment=device and data.decode=cpu")
        if self.augment == "device" and self.size is None:
            raise ValueError("data.augment=device needs data.size (the side of the clips)")
        if self.mask != "none" and self.size is not None and self.size % self.patch:
            raise ValueError(f"model.img_size ({self.size}) must be a multiple of "
                             f"model.patch_size ({self.patch})")

    def store_options(self) -> StoreOptions:
        try:
            size = parse_bytes(str(self.cache_size))
        except ValueError:
            raise ValueError(f"data.cache_size must be a size such as 50G or 500M, not "
                             f"{self.cache_size!r}") from None
        cache = os.path.abspath(os.path.expanduser(self.cache_dir)) if self.cache_dir else None
        return StoreOptions(patience=float(self.store_patience), cache_dir=cache,
                            cache_size=size)

    def with_geometry(self, model) -> "StreamConfig":
        """This section with the clip geometry of the ``model`` section (frames, side, token
        shape): the model states it, the stream follows."""
        return replace(self, **{f.name: getattr(model, f.metadata["from_model"])
                                for f in fields(self) if "from_model" in f.metadata})

    def token_grid(self, height: int | None = None) -> tuple[int, int, int]:
        side = self.size if self.size is not None else height
        return (self.num_frames // self.tubelet, side // self.patch, side // self.patch)
