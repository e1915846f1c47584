"""AdamW parameter groups and the per-step learning-rate schedule."""
from __future__ import annotations

import math

from torch import nn

NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token", "query_token", "q_bias", "v_bias")


def param_groups(model: nn.Module, weight_decay: float, lr_scale_of=None) -> list[dict]:
    """Groups for AdamW: no weight decay on norms, biases (ndim <= 1) and tokens.

    ``lr_scale_of(name) -> float`` (e.g. layer-wise decay in fine-tuning) splits the groups
    further; every group carries ``lr_scale``, which the schedule multiplies in.
    """
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(NO_DECAY_NAMES) or name.endswith(".bias")
        scale = lr_scale_of(name) if lr_scale_of else 1.0
        key = (no_decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr_scale": scale,
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], -k[1]))]


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """The linear scaling rule of the published recipes: base_lr per 256 clips."""
    return base_lr * total_batch / 256


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine from peak to ``floor``.
    ``step`` counts optimizer steps already taken (the lr for the next one)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def peak_lr(optim_cfg, total_batch: int) -> float:
    """``optim.lr`` when set, else ``optim.base_lr`` scaled to the total batch."""
    return optim_cfg.lr if optim_cfg.lr is not None else scaled_lr(optim_cfg.base_lr,
                                                                   total_batch)
