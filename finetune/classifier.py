"""What every fine-tuning model shares: normalising its input and initialising its weights."""
from __future__ import annotations

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


class ClipClassifier(nn.Module):
    """A model ending in ``self.head`` that takes uint8 clips or already normalised floats."""

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
