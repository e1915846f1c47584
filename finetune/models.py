"""One entry for the fine-tuning families: ``model.family`` -> the model, its layer-wise lr
decay and a one-line description."""
from __future__ import annotations

from torch import nn

from . import uniformer, uniformer_head, vivit


def build_model(cfg: vivit.VivitConfig) -> nn.Module:
    """The model of ``cfg.family``: vivit, uniformer or uniformer_head."""
    family = cfg.family
    if family == "uniformer":
        return uniformer.UniFormer(cfg)
    if family == "uniformer_head":
        return uniformer_head.UniFormerHead(cfg)
    if family == "vivit":
        return vivit.ViViT(cfg)
    raise ValueError(f"model.family must be one of {vivit.FAMILIES}, not {family!r}")


def layer_decay_scale(model: nn.Module, decay: float):
    """name -> lr scale, decay^(layers above the parameter), for the model's family."""
    cfg = model.cfg
    if cfg.family == "uniformer":
        return uniformer.layer_decay_scale(cfg, decay)
    if cfg.family == "uniformer_head":
        return uniformer_head.layer_decay_scale(cfg, decay)
    return vivit.layer_decay_scale(cfg, decay)


def describe(model: nn.Module) -> str:
    cfg = model.cfg
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if cfg.family == "uniformer":
        u = cfg.uniformer
        what = f"UniFormer {cfg.preset} (dims {list(u.dims)}, depths {list(u.depths)})"
    elif cfg.family == "uniformer_head":
        a = cfg.arm
        what = (f"{cfg.preset} encoder armed with UniFormer blocks (local MHRA "
                f"{'on' if a.local else 'off'}, {a.global_layers} global)")
    else:
        what = f"ViViT model {cfg.variant}, {cfg.tokenizer} tokens"
    return f"{what}, {params:.1f}M parameters"
