"""Pre-training's recipe: its schema (``PretrainConfig``, one section per component) over the
generic loader of ``pretrain/runtime/config.py``."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from data.stream import StreamConfig
from .model import ModelConfig
from .runtime.config import (COMPILE_MODES, RANGES, ConfigError, LogConfig,  # noqa: F401
                             OptimConfig, RunConfig, RuntimeConfig, check_values, dump_yaml,
                             parse_args_with_overrides, to_dict)
from .runtime.config import load_config as _load


@dataclass
class TrainConfig:
    steps: int = 1000                 # optimizer steps
    ckpt_every: int = 500             # steps between checkpoints (and one at the end)
    keep_last: int = 2                # checkpoints kept
    max_nonfinite: int = 5            # NaN/inf losses in a row that stop the run
    export: bool = True               # write export/encoder.safetensors at the end


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: StreamConfig = field(default_factory=StreamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(path: str | None, overrides: typing.Sequence[str] = (), schema=None):
    """YAML file + ``a.b=value`` overrides -> a checked ``schema`` (default: pre-training's)."""
    return _load(path, overrides, schema or PretrainConfig)
