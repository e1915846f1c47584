"""What every fine-tuning model shares: normalising its input, initialising its weights, and the
interface a model family gives the registry (``finetune/families.py``)."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn


def init_linear_and_norm(module: nn.Module):
    """Linear layers truncated normal (std 0.02) with zero bias, LayerNorms ones and zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# model.family -> its class: every family's class enters when it is defined, so the model
# section can resolve itself without importing the table of families (finetune/models.py, which
# imports them all and is where they are listed).
REGISTERED: dict = {}


def registered_family(name: str):
    try:
        return REGISTERED[name]
    except KeyError:
        raise ValueError(f"model.family must be one of {', '.join(REGISTERED)}, not "
                         f"{name!r}") from None


class ClipClassifier(nn.Module, metaclass=ABCMeta):
    """A model ending in ``self.head`` that takes uint8 clips or already normalised floats.

    A family (one registry entry) provides:
      ``family``             its name in ``model.family``;
      ``build(cfg)``         the model from the ``model`` section;
      ``pooled(x)``          (B, C, T, H, W) -> (B, D), the feature the head part takes;
      ``classify(f)``        that head part, so ``forward(x) == classify(pooled(x))``;
      ``layer_id(name)``, ``num_layers``   depths for layer-wise lr decay (0 = embeddings,
                             ``num_layers + 1`` = the head);
      ``describe()``         one line for the logs;
      ``load_init(...)``     its init from a checkpoint, returning the load report;
      ``resolve_config(cfg)``  its checks of the ``model`` section, defaults filled in;
      ``default_kernel_init``, ``takes_vit_encoder``  what ``run.kernel_init: auto`` means
                             for it, and whether a ViT encoder's norm layout applies;
      ``token_grid``         whether ``forward_features`` gives a token grid (B, N, D).
    """
    family: str = ""
    default_kernel_init: str = "central"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("family"):
            REGISTERED[cls.family] = cls

    takes_vit_encoder: bool = True    # initialised from a ViT encoder (norm layouts apply)
    token_grid: bool = False          # forward_features(x) gives (B, N, D) tokens
                                      # (``finetune.features --tokens``)

    @staticmethod
    @abstractmethod
    def resolve_config(cfg):
        """The ``model`` section checked for this family, with defaults filled in."""

    @classmethod
    def build(cls, cfg) -> "ClipClassifier":
        return cls(cfg)

    @abstractmethod
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def classify(self, f: torch.Tensor) -> torch.Tensor:
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(x))

    @property
    @abstractmethod
    def num_layers(self) -> int:
        ...

    @abstractmethod
    def layer_id(self, name: str) -> int:
        ...

    @abstractmethod
    def describe(self) -> str:
        ...

    @abstractmethod
    def load_init(self, path: str, kernel_init: str, verbose: bool,
                  allow_partial: bool) -> dict:
        ...

    def set_input_stats(self, mean, std, spatial_dims: int = 3):
        """Per-channel mean/std buffers for inputs (B, C, [T,] H, W) (not in the state dict)."""
        shape = (1, -1) + (1,) * spatial_dims
        self.register_buffer("mean", torch.tensor(mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(shape), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = (x.float() / 255.0 - self.mean) / self.std
        return x.to(self.head.weight.dtype)

    def scale_head(self, scale: float):
        """The head starts small (``model.head_init_scale``): early logits stay near uniform."""
        with torch.no_grad():
            self.head.weight.mul_(scale)
            self.head.bias.mul_(scale)
