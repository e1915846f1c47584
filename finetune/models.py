"""The fine-tuning model families: one table, ``model.family`` -> its class.

Each class gives the interface of ``classifier.ClipClassifier``: how to build it from the
``model`` section, ``pooled``/``classify``, its layer depths for lr decay, a description and its
init from a checkpoint. Adding a family is one file with its class plus one entry below; the
training loop, the probe, the init and the registry test (tests/finetune/test_families.py) reach
it only through this table.
"""
from __future__ import annotations

from torch import nn

from .classifier import ClipClassifier
from .uniformer import UniFormer
from .uniformer_head import UniFormerHead
from .vivit import ViViT

FAMILIES: dict[str, type[ClipClassifier]] = {cls.family: cls for cls in (
    ViViT,           # finetune/vivit.py: ViViT models 1-4 over three tokenisers
    UniFormer,       # finetune/uniformer.py: the convolution-attention hybrid
    UniFormerHead,   # finetune/uniformer_head.py: a ViT encoder armed with UniFormer blocks
)}


def family_class(name: str) -> type[ClipClassifier]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"model.family must be one of {', '.join(FAMILIES)}, not {name!r}") \
            from None


def build_model(cfg) -> ClipClassifier:
    """The model of ``cfg.family`` built from the ``model`` section ``cfg``."""
    return family_class(cfg.family).build(cfg)


def layer_decay_scale(model: ClipClassifier, decay: float):
    """name -> lr scale, decay^(layers above the parameter): the head 1, embeddings the
    smallest."""
    top = model.num_layers + 1
    return lambda name: decay ** (top - model.layer_id(name))


def describe_layer_decay(model: ClipClassifier, decay: float) -> str:
    """The lr scale of each depth with its parameters' first names, e.g. ``x0.24 depth 0
    (patch_embed, ...), ..., x1 depth 5 (norm, fc_norm, head)``."""
    scale = layer_decay_scale(model, decay)
    first: dict = {}          # depth -> its first parameter's name
    tops: dict = {}           # depth -> the top-level modules of its parameters, in order
    for name, p in model.named_parameters():
        if p.requires_grad:
            d = model.layer_id(name)
            first.setdefault(d, name)
            tops.setdefault(d, {})[name.split(".")[0]] = None
    parts = []
    for d in sorted(first):
        where = (".".join(first[d].split(".")[:2]) if list(tops[d]) == ["blocks"]
                 else ", ".join(tops[d]))
        parts.append(f"x{scale(first[d]):.3g} depth {d} ({where})")
    return ", ".join(parts)


def describe(model: nn.Module) -> str:
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return f"{model.describe()}, {params:.1f}M parameters"
