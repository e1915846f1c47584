"""Conversions only fine-tuning needs: image (2D) weights into video (3D) models, and fused
attention biases into our query/value biases."""
from __future__ import annotations

import torch


def split_qkv_bias(key: str, value: torch.Tensor) -> list | None:
    """A fused ``...attn.qkv.bias`` (timm ViT, published UniFormer) -> [(``...attn.q_bias``, q),
    (``...attn.v_bias``, v)], the layout of our attention; the key part is dropped (it adds the
    same amount to every logit of a query row, which softmax ignores). None for other keys."""
    if not key.endswith("attn.qkv.bias"):
        return None
    d, base = value.shape[0] // 3, key[: -len("qkv.bias")]
    return [(base + "q_bias", value[:d]), (base + "v_bias", value[2 * d:])]


def inflate_kernel(w: torch.Tensor, t: int, how: str) -> torch.Tensor:
    """A 2D kernel (O, I, h, w) -> 3D (O, I, t, h, w): ``central`` puts it in the middle frame
    (zeros elsewhere), ``average`` repeats it over t and divides by t; both keep the response to
    a still clip."""
    if how == "central":
        out = torch.zeros(*w.shape[:2], t, *w.shape[2:], dtype=w.dtype)
        out[:, :, t // 2] = w
        return out
    if how == "average":
        return w[:, :, None].expand(-1, -1, t, -1, -1) / t
    raise ValueError(f"kernel init must be central or average, not {how!r}")
