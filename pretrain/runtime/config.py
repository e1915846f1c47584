"""Recipes: YAML files loaded into nested dataclasses, one section per component, for both
stages (a stage's schema is a dataclass of sections: ``pretrain.config.PretrainConfig``,
``finetune.train.FinetuneConfig``). The sections both stages share (run, optim, runtime, log)
are here.

Unknown or mistyped keys are errors naming the key and the file; ``a.b=value`` overrides on the
command line go through the same checks. Each component receives only its own section.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, fields, is_dataclass

import yaml

from data.atomic import write_text_atomic


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


@dataclass
class RunConfig:
    dir: str = "runs/default"         # everything of the run lives here; an existing one resumes
    seed: int = 0

@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4           # per 256 clips: lr = base_lr * total_batch / 256
    lr: float | None = None           # an absolute lr instead of the scaled one
    min_lr: float = 0.0
    warmup_steps: int = 0
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.05        # not on norms, biases, positional/mask tokens
    eps: float = 1e-8


@dataclass
class RuntimeConfig:
    engine: str = "auto"              # auto | plain | deepspeed
    zero_stage: int = 0               # DeepSpeed ZeRO stage 0-3
    precision: str = "auto"           # auto | fp32 | bf16 | fp16 (auto: bf16 where fast)
    grad_accum: int = 1               # micro-batches per optimizer step
    grad_clip: float = 0.0            # max global grad norm; 0 = off
    device: str = "auto"              # auto | cpu | cuda
    comm_timeout: float = 600.0       # seconds a collective waits for the other processes; a
                                      # process gone with its node, or hung, stops the others
                                      # within it, with one line naming it (NCCL: its watchdog,
                                      # with asynchronous error handling). Above data.timeout:
                                      # a stalled loader must be named first
    compile: bool = False             # torch.compile the model (GPU: faster steps after warm-up)
    compile_mode: str = "default"     # torch.compile mode: default | max-autotune-no-cudagraphs
                                      # (searches kernels at start-up: minutes, then faster)


@dataclass
class LogConfig:
    every: int = 10                   # steps between scalar logs
    picture_every: int = 200          # steps between reconstruction pictures; 0 = never
    progress: bool = True             # progress bar on rank 0


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, where: str):
    """value (from YAML) -> the annotated type, or ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp in (tuple, list) or origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the top level'} in {source} must be a "
                          f"mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else \
                f"; known keys: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"unknown key '{where}' in {source}{hint}")
        tp = hints[key]
        if is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, where + ".", source)
        else:
            kwargs[key] = _coerce(value, tp, f"'{where}' in {source}")
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value):
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{p}' is not a section")
    node[parts[-1]] = value


# Numeric fields a recipe can get wrong, and their valid ranges: (minimum, minimum is allowed)
# and optionally (maximum, maximum is allowed). A key a schema does not have is passed over
# (pre-training and fine-tuning share this table). Every float anywhere must also be finite.
RANGES = {
    "data.batch_size": (1, True), "data.num_workers": (0, True),
    "data.stride": (1, True), "data.repeats": (1, True), "data.shuffle_buffer": (1, True),
    "data.test_clips": (1, True), "data.test_crops": (1, True),
    "train.steps": (1, True), "train.ckpt_every": (1, True), "train.keep_last": (1, True),
    "train.max_nonfinite": (1, True), "train.epochs": (1, True),
    "log.every": (1, True), "log.picture_every": (0, True),
    "runtime.grad_accum": (1, True), "runtime.grad_clip": (0, True),
    "runtime.comm_timeout": (0, False),
    "optim.base_lr": (0, False), "optim.lr": (0, False), "optim.min_lr": (0, True),
    "optim.warmup_steps": (0, True), "optim.warmup_epochs": (0, True),
    "optim.weight_decay": (0, True), "optim.eps": (0, False),
    "model.img_size": (1, True), "model.patch_size": (1, True), "model.num_frames": (1, True),
    "model.tubelet_size": (1, True), "model.in_chans": (1, True),
    "optim.layer_decay": (0, False), "optim.label_smoothing": (0, True, 1, False),
    "optim.mixup": (0, True), "optim.cutmix": (0, True),
    "model.drop_path": (0, True, 1, False), "model.dropout": (0, True, 1, False),
    "model.head_init_scale": (0, False), "model.mlp_ratio": (0, False),
    "model.target_std_floor": (0, True, 1, True),
}


# CUDA graphs ("reduce-overhead", "max-autotune") are left out: the loop reads no output
# between steps that a graph replay would overwrite, but DeepSpeed's hooks are not graph-safe.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def check_values(cfg, source: str = "the config"):
    """Every value in ``RANGES`` within its range, and the mask ratio in (0, 1) when masking;
    a ConfigError naming the key, the value and the range otherwise."""
    for dotted, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"'{dotted}' in {source} is {value}; it must be a finite number")
    for dotted, (low, inclusive, *high) in RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section, None), key, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        top, top_ok = high or (math.inf, False)
        if value < low or (value == low and not inclusive) or value > top or \
                (value == top and not top_ok):
            bound = f">= {low}" if inclusive else f"> {low}"
            if high:
                bound += f" and {'<=' if top_ok else '<'} {top}"
            raise ConfigError(f"'{dotted}' in {source} is {value}; it must be {bound}")
    runtime = getattr(cfg, "runtime", None)
    if runtime is not None and runtime.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"'runtime.compile_mode' in {source} is {runtime.compile_mode!r}; "
                          f"choose one of {', '.join(COMPILE_MODES)}")
    data = getattr(cfg, "data", None)
    scales = getattr(data, "scales", None)
    if scales is not None and (not scales or not all(
            isinstance(v, (int, float)) and 0 < v <= 1 for v in scales)):
        raise ConfigError(f"'data.scales' in {source} is {list(scales)}; it must list one or "
                          f"more crop scales in (0, 1], such as [1.0, 0.875, 0.75, 0.66]")
    if data is not None and getattr(data, "mask", "none") != "none" and \
            not 0.0 < data.mask_ratio < 1.0:
        raise ConfigError(f"'data.mask_ratio' in {source} is {data.mask_ratio}; it must be "
                          f"between 0 and 1 (exclusive) when data.mask={data.mask}")


def _numbers(cfg, prefix: str = ""):
    """(dotted key, value) of every float in a config, in lists too."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            yield from _numbers(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{f.name}", value
        elif isinstance(value, (tuple, list)):
            for v in value:
                if isinstance(v, float):
                    yield f"{prefix}{f.name}", v


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def parse_args_with_overrides(ap, argv=None):
    """``ap.parse_args`` where ``section.key=value`` overrides may stand anywhere, also after a
    flag that takes several values (``--ks 4 16 model.patch_size=8``); they land in
    ``args.overrides`` in the order given. ``ap`` declares the positional ``overrides``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    late = [a for a in argv if _OVERRIDE.match(a)]
    args = ap.parse_args([a for a in argv if not _OVERRIDE.match(a)])
    args.overrides = [*args.overrides, *late]
    return args


class _DuplicateKey(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (two ``lr:`` lines, a
    second ``train:`` section), which plain YAML silently resolves by keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(f"{key!r} is given twice, at lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}: keep one (YAML would "
                                    f"silently keep the last)")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(path: str):
    """A YAML file's tree, with a key given twice refused (``ConfigError`` naming the lines)."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"config file {path}: {e}") from None


def load_config(path: str | None, overrides: typing.Sequence[str], schema):
    """YAML file + ``a.b=value`` overrides -> a checked ``schema`` instance."""
    tree = {}
    source = path or "the defaults"
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} not found")
        try:
            tree = load_yaml(path)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise ConfigError(f"config file {path} is not valid YAML{line}: "
                              f"{getattr(e, 'problem', None) or e} (indent with spaces, not "
                              f"tabs)") from None
        if tree is None:
            raise ConfigError(f"config file {path} is empty; start from a recipe in "
                              f"launch/configs/ (an empty file would train every default)")
        if not isinstance(tree, dict):
            raise ConfigError(f"the top level of {path} must be a mapping of sections "
                              f"(run:, data:, model:, ...), not a {type(tree).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} should look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: {raw!r} is not a value (quote a string, "
                              f"write a list as [a, b])") from None
        _set(tree, key.strip(), value)
    where = source + (" + overrides" if overrides else "")
    cfg = _build(schema, tree, "", where)
    _geometry_from_model(cfg, tree, where)
    check_values(cfg, where)
    return cfg


def _geometry_from_model(cfg, tree: dict, where: str):
    """The clip geometry is stated once, in the ``model`` section; the ``data`` section's copy
    (the fields marked ``from_model``) is filled from it. A recipe that still states one of
    those keys gets one line naming the model's key when the values agree, and an error naming
    both when they do not."""
    data, model = getattr(cfg, "data", None), getattr(cfg, "model", None)
    if data is None or model is None or not hasattr(data, "with_geometry"):
        return
    given = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    for f in fields(data):
        new = f.metadata.get("from_model")
        if not new or f.name not in given:
            continue
        old_value, value = getattr(data, f.name), getattr(model, new)
        # data.size: null meant "a volume's own size", which is the model's img_size
        if old_value != value and not (f.name == "size" and old_value is None):
            raise ConfigError(f"'data.{f.name}' in {where} is {old_value!r} but 'model.{new}' is "
                              f"{value!r}: the clip's geometry is stated once, in the model "
                              f"section; drop data.{f.name} and set model.{new}")
        print(f"config: 'data.{f.name}' in {where} is the model's now ('model.{new}', "
              f"{value!r}); drop it", file=sys.stderr)
    cfg.data = data.with_geometry(model)


def to_dict(cfg) -> dict:
    """A config as plain data (tuples as lists), ready for YAML or JSON."""
    def plain(v):
        if is_dataclass(v):  # without the fields another section states (from_model)
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)
                    if "from_model" not in f.metadata}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def dump_yaml(cfg, path: str):
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
