"""The fine-tuning recipe: its sections (``FinetuneConfig``), how a command line makes one
(``config_from_cli``), and the checks made before a run (the set has its three splits, the
recipe fits the data). The loop that runs it is ``finetune/train.py``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from data.config import StreamConfig
from data.manifest import DataSetError, has_splits
from data.store import is_remote
from pretrain.runtime.config import LogConfig, OptimConfig, RunConfig, RuntimeConfig
from .init import take_export_geometry
from .vivit import VivitConfig


@dataclass
class FinetuneRunConfig(RunConfig):
    init: str = ""                    # encoder / checkpoint to start from; "" = from scratch
    kernel_init: str = "auto"         # 2D kernels -> 3D: central | average | auto (central
                                      # for an image ViT, average for an image UniFormer)
    init_partial: bool = False        # allow an init that fits less than half of the encoder


@dataclass
class FinetuneOptimConfig(OptimConfig):
    base_lr: float = 5e-4             # per 256 clips
    betas: tuple = (0.9, 0.999)
    warmup_epochs: float = 5.0
    layer_decay: float = 0.75         # lr x decay^(layers above); 1 = off
    label_smoothing: float = 0.1
    mixup: float = 0.0                # timm Mixup alpha (0.8 in the K400 recipe)
    cutmix: float = 0.0               # timm CutMix alpha (1.0 in the K400 recipe)


@dataclass
class FinetuneTrainConfig:
    epochs: int = 10
    keep_last: int = 1                # checkpoints kept besides the best
    max_nonfinite: int = 5


@dataclass
class FinetuneConfig:
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    data: StreamConfig = field(default_factory=lambda: StreamConfig(mask="none", flip=True))
    model: VivitConfig = field(default_factory=VivitConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)


def config_from_cli(config: str, init: str | None, overrides) -> "FinetuneConfig":
    """A fine-tuning config from ``--config``, ``--init`` (``none`` = from scratch) and
    ``section.key=value`` overrides: what ``python -m finetune`` and ``finetune.probe`` take."""
    from pretrain.runtime.config import load_config
    overrides = list(overrides)
    if init is not None:
        overrides.append(f"run.init={'' if init.lower() == 'none' else init}")
    cfg = load_config(config, overrides, schema=FinetuneConfig)
    stated = {o.split("=", 1)[0].strip() for o in overrides}
    return take_export_geometry(cfg, stated)


def check_splits(shards: str):
    if (os.path.isdir(shards) or is_remote(shards)) and not has_splits(shards):
        raise DataSetError(f"{shards} has no train/val/test splits; fine-tuning needs all three "
                           f"(prep writes them for MedMNIST, the synthetic set, Kinetics CSVs and "
                           f"split lists; for a root/<class>/* tree or one list, prep it again "
                           f"with --split 0.8,0.1,0.1)")


def check_recipe(cfg: FinetuneConfig, classes: int):
    if (cfg.optim.mixup > 0 or cfg.optim.cutmix > 0) and cfg.data.batch_size % 2:
        raise ValueError("mixup/cutmix pair samples within a batch: data.batch_size must be even")
    if cfg.model.head_norm == "batch" and cfg.data.batch_size < 2:
        raise ValueError("model.head_norm=batch standardises over the batch: data.batch_size "
                         "must be at least 2 (or use model.head_norm=layer)")
    if cfg.model.num_classes not in (0, classes):
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the data has {classes} "
                         f"classes; set model.num_classes=0 to take it from the data")
