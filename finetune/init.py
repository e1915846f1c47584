"""`--init PATH`: weights for a ViViT from a pre-trained encoder.

Sources, recognised by their contents:
  our export       ``encoder.safetensors`` (+ ``encoder.json``) from ``pretrain``;
  VideoMAE         official v1/v2 (pre-training or fine-tuned) and HuggingFace checkpoints,
                   through ``pretrain.convert``;
  image ViT        a timm ViT checkpoint file (2D ``patch_embed.proj`` of shape (D, C, p, p),
                   ``cls_token``, learned ``pos_embed``, fused ``qkv`` bias).
Mapping to the four models (names follow the VideoMAE encoder):
  1, 4  every encoder weight by name; Model 1 then computes exactly the encoder's features.
  2     the encoder initialises the spatial encoder (``blocks``, ``norm``); the temporal
        encoder (``temporal_blocks``, ``temporal_norm``) starts new.
  3     ``blocks.i.{norm1,attn,norm2,mlp}`` are the spatial part and load by name;
        ``temporal_attn`` / ``temporal_norm`` are zero-initialised or copied from the spatial
        attention (``model.temporal_init``).
Tokenisers: a 3D tubelet kernel becomes a 2D one (uniform frame sampling) by summing over time,
which keeps the response to a still clip; a 2D image kernel becomes 3D by the central frame
(zeros elsewhere, ``central``) or by averaging over time (``average``). Positional tables: our
fixed sine-cosine table needs nothing; a learned image table is interpolated to H' x W' and
tiled over T' (only where ``model.pos=learned``). The T2T tokeniser always starts new. A key
bias in the image ViT's fused qkv is dropped: it adds the same amount to every logit of a query
row, which softmax ignores.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import torch

from pretrain.convert import load_published
from pretrain.encoder_file import export_folder, read_meta
from pretrain.model import ClipGeometry
from .weights import InitMismatch, format_report, report_counts  # noqa: F401  (their home)


def norm_layout_of(path: str) -> str:
    """'pooled' when ``path`` is an official fine-tuned VideoMAE file (``fc_norm`` after mean
    pooling and no token ``norm``), else 'tokens' (our export, pre-training files, HF, none)."""
    if not path or os.path.isdir(path) or path.endswith(".safetensors"):
        return "tokens"
    try:
        sd, _ = load_published(path)
    except ValueError:
        return "tokens"
    return "pooled" if "fc_norm.weight" in sd and "encoder.norm.weight" not in sd else "tokens"


def resolve_norm_layout(model_cfg, init: str):
    """``model.norm_layout: auto`` -> the layout of the ``--init`` source (before building)."""
    from dataclasses import replace
    if model_cfg.norm_layout != "auto":
        return model_cfg
    from .models import family_class
    layout = norm_layout_of(init) if family_class(model_cfg.family).takes_vit_encoder \
        else "tokens"
    return replace(model_cfg, norm_layout=layout)


def init_from(model, path: str, kernel_init: str = "auto", verbose: bool = True,
              allow_partial: bool = False) -> dict:
    """Load ``path`` into ``model`` through its family's ``load_init`` and return the report
    {source, loaded, new, unused, mismatched, notes}; prints it when verbose. ``auto`` is the
    family's kernel init (central for a ViT, average for an image UniFormer).

    Raises InitMismatch when less than half of the encoder weights the model can take load
    (another preset or geometry: training would silently start from scratch), unless
    ``allow_partial``."""
    if kernel_init == "auto":
        kernel_init = model.default_kernel_init
    return model.load_init(path, kernel_init, verbose, allow_partial)


# The clip geometry an encoder was trained with: the model section's keys, as in encoder.json.
GEOMETRY = tuple(f.name for f in dataclasses.fields(ClipGeometry))


# The input normalisation an encoder was trained with (encoder.json's model.mean / model.std):
# the model applies it, so a fine-tune must apply the same one.
INPUT_STATS = ("mean", "std")


def encoder_geometry(path: str) -> dict:
    """The geometry keys and input statistics (as tuples) stored beside our export
    (encoder.json); {} for other sources."""
    meta = read_meta(path)
    if meta is None:
        return {}
    m = meta["model"]
    return {k: tuple(m[k]) if k in INPUT_STATS else m[k]
            for k in GEOMETRY + INPUT_STATS if m.get(k) is not None}


def _show(v) -> str:
    return "[" + ", ".join(f"{x:g}" for x in v) + "]" if isinstance(v, tuple) else str(v)


def take_export_geometry(cfg, stated=(), verbose: bool = True):
    """``cfg`` with the clip geometry and input statistics of the export in ``run.init`` over
    the recipe's: an encoder is fine-tuned at the geometry it was trained at, on inputs
    normalised as in its pre-training. A key in ``stated`` (``model.KEY`` given on the command
    line) that differs from the export's is an InitMismatch naming both, unless
    ``run.init_partial`` (then the stated value stays, and only what fits loads)."""
    from dataclasses import replace
    from pretrain.model import channel_stats
    from .models import family_class
    geo = encoder_geometry(cfg.run.init)
    if not geo or not family_class(cfg.model.family).takes_vit_encoder:
        return cfg
    stats = dict(zip(INPUT_STATS, channel_stats(cfg.model.in_chans, cfg.model.mean,
                                                cfg.model.std)))

    def current(k):  # the recipe's value; its input statistics as they resolve
        return tuple(stats[k]) if k in INPUT_STATS else getattr(cfg.model, k)

    diffs = {k: v for k, v in geo.items() if current(k) != v}
    explicit = [k for k in diffs if f"model.{k}" in stated]
    if explicit and not cfg.run.init_partial:
        given = ", ".join(f"model.{k}={_show(current(k))}" for k in explicit)
        want = ", ".join(f"{k} {_show(geo[k])}" for k in explicit)
        raise InitMismatch(f"{given} on the command line, but the encoder {cfg.run.init} was "
                           f"trained at {want} (encoder.json): drop the override to fine-tune "
                           f"at the encoder's geometry and input statistics, or set "
                           f"run.init_partial=true to keep what you gave")
    take = {k: v for k, v in diffs.items() if k not in explicit}
    if not take:
        return cfg
    if verbose:
        print(f"finetune: clip geometry and input statistics from "
              f"{export_folder(cfg.run.init)}/encoder.json: "
              + ", ".join(f"model.{k} {_show(v)} (the recipe says {_show(current(k))})"
                          for k, v in take.items()), file=sys.stderr)
    model = replace(cfg.model, **take)
    return replace(cfg, model=model, data=cfg.data.with_geometry(model))


def probe_model(cfg, num_classes: int):
    """The model a probe (or ``finetune.features --config``) takes features from: the recipe's
    model section around ``cfg.run.init`` (a random one seeded by run.seed without). Sets
    ``cfg.model`` to the resolved section; returns (model, init report or None)."""
    from dataclasses import replace
    from .models import build_model
    cfg.model = resolve_norm_layout(replace(cfg.model, num_classes=num_classes), cfg.run.init)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    init_report = None
    if cfg.run.init:
        init_report = init_from(model, cfg.run.init, cfg.run.kernel_init, verbose=False,
                                allow_partial=cfg.run.init_partial)
    return model, init_report
