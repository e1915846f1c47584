"""A VideoMAE encoder armed with UniFormer's relation blocks (UniFormerV2's idea, our encoder).

The pre-trained ViT blocks stay as they are (names ``patch_embed``, ``blocks.{i}``, ``norm``, so
``--init`` loads an export or an official/HF VideoMAE file exactly as for ViViT) and gain:
  local   ``local_mhra.{i}``: before block i, x + LocalTemporalMHRA(x) on the token grid
          (T/t x H/p x W/p): BN, 1x1x1 to width/ratio, depth-wise (k,1,1) over time, 1x1x1 back;
  global  ``global_blocks.{j}`` on the last N layers: the tokens of layer i, plus a DPE
          (depth-wise 3x3x3 over the grid; it only feeds this branch), are read by a
          cross-attention from one query token, then an MLP; the query runs from block to block;
  fusion  ``feature = pooled + gate * (query_norm(query) - pooled)``, where ``pooled`` is the
          encoder's mean-pooled, normed tokens (what ViViT Model 1 pools), then ``fc_norm`` and
          the head as in ViViT.

Start: the local MHRA's last conv, the cross-attention's output projection and the MLP's last
layer are zero, and ``gate`` is zero, so the armed model's pooled feature is the plain encoder's
exactly; fine-tuning then opens the branches. Differences from the paper's defaults, and why:
  * the fusion: UniFormerV2 mixes ``(1 - w) * query + w * cls`` with ``w = sigmoid(0) = 0.5``,
    which changes the encoder's feature at step 0. A zero-started gate keeps the pre-trained
    feature (the point of arming a self-supervised encoder) and still learns the mix: its
    gradient is ``query - pooled``, non-zero from the first step;
  * the pooled feature is the mean of the encoder's tokens (VideoMAE fine-tuning pools; there is
    no class token), and the query starts from a learned vector, not from a class token;
  * one local MHRA per block (before attention); the paper also places one before the MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pretrain.layers import BatchNorm3d, DropPath, Mlp
from .classifier import init_linear_and_norm
from .vivit import ViViT


class LocalTemporalMHRA(nn.Module):
    """BN, 1x1x1 down, depth-wise temporal conv, 1x1x1 up on the token grid. (B, N, D) -> same."""

    def __init__(self, dim: int, grid, ratio: float = 1.5, kernel: int = 3):
        super().__init__()
        hidden = max(1, round(dim / ratio))
        self.grid = tuple(grid)
        self.norm = BatchNorm3d(dim)
        self.down = nn.Conv3d(dim, hidden, 1)
        self.conv = nn.Conv3d(hidden, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0),
                              groups=hidden)
        self.up = nn.Conv3d(hidden, dim, 1)

    def forward(self, x):
        t, h, w = self.grid
        g = rearrange(x, "b (t h w) d -> b d t h w", t=t, h=h, w=w)
        g = self.up(self.conv(self.down(self.norm(g))))
        return rearrange(g, "b d t h w -> b (t h w) d")


class GlobalUniBlock(nn.Module):
    """DPE on the tokens, cross-attention from the query over them, MLP; the query is updated
    (B, 1, D), the tokens are only read."""

    def __init__(self, dim: int, heads: int, grid, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.grid, self.heads = tuple(grid), heads
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm_q = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_kv = nn.LayerNorm(dim, eps=norm_eps)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        g = rearrange(x, "b (t h w) d -> b d t h w", t=t, h=h, w=w)
        x = x + rearrange(self.pos_embed(g), "b d t h w -> b (t h w) d")
        k, v = rearrange(self.kv(self.norm_kv(x)), "b n (two e d) -> two b e n d", two=2,
                         e=self.heads)
        q = rearrange(self.q(self.norm_q(query)), "b n (e d) -> b e n d", e=self.heads)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b e n d -> b n (e d)")
        query = query + self.drop_path(self.proj(out))
        return query + self.drop_path(self.mlp(self.norm2(query)))


class UniFormerHead(ViViT):
    """ViViT Model 1 (tubelet tokens, mean pooling) armed with local and global UniFormer
    blocks; ``cfg.arm`` sets them. Forward: (B, C, T, H, W) -> logits."""

    family = "uniformer_head"

    @staticmethod
    def resolve_config(cfg):
        if cfg.variant != 1 or cfg.tokenizer != "tubelet" or cfg.pool != "mean":
            raise ValueError("model.family=uniformer_head arms a VideoMAE-style encoder: it needs "
                             "model.variant=1, model.tokenizer=tubelet and model.pool=mean")
        return ViViT.resolve_config(cfg)

    def __init__(self, cfg):
        super().__init__(cfg)
        cfg, arm = self.cfg, self.cfg.arm
        d, grid = cfg.embed_dim, cfg.grid
        if not 0 <= arm.global_layers <= cfg.depth:
            raise ValueError(f"model.arm.global_layers={arm.global_layers}: the encoder has "
                             f"{cfg.depth} layers")
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.local_mhra = nn.ModuleList([
            LocalTemporalMHRA(d, grid, arm.local_ratio, arm.local_kernel)
            for _ in range(cfg.depth)]) if arm.local else None
        self.local_drop = nn.ModuleList([DropPath(r) for r in rates]) if arm.local else None
        self.first_global = cfg.depth - arm.global_layers
        self.global_blocks = nn.ModuleList([
            GlobalUniBlock(d, cfg.num_heads, grid, arm.global_mlp_ratio,
                           rates[self.first_global + j], cfg.norm_eps)
            for j in range(arm.global_layers)])
        self.query_token = nn.Parameter(torch.zeros(1, 1, d))
        self.query_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.gate = nn.Parameter(torch.zeros(d))
        self._init_arms()

    def _init_arms(self):
        nn.init.trunc_normal_(self.query_token, std=0.02)
        for blk in self.global_blocks:
            init_linear_and_norm(blk)
            for zero in (blk.proj, blk.mlp.fc2):  # the branch adds nothing at the start
                nn.init.zeros_(zero.weight)
                nn.init.zeros_(zero.bias)
        for m in self.local_mhra or ():
            nn.init.zeros_(m.up.weight)
            nn.init.zeros_(m.up.bias)
        nn.init.zeros_(self.gate)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D): the fused feature that ``fc_norm`` and the head take; at
        initialisation the plain encoder's ``forward_features(x).mean(1)``."""
        x = self.tokens(x)
        query = self.query_token.expand(x.shape[0], -1, -1).to(x.dtype)
        for i, blk in enumerate(self.blocks):
            if self.local_mhra is not None:
                x = x + self.local_drop[i](self.local_mhra[i](x))
            x = blk(x)
            if i >= self.first_global:
                query = self.global_blocks[i - self.first_global](query, x)
        pooled = self.norm(x).mean(1)
        return pooled + self.gate.to(x.dtype) * (self.query_norm(query[:, 0]) - pooled)

    @property
    def num_layers(self) -> int:
        return self.cfg.depth

    def layer_id(self, name: str) -> int:
        return layer_id(name, self.cfg)

    def describe(self) -> str:
        a = self.cfg.arm
        return (f"{self.cfg.preset} encoder armed with UniFormer blocks (local MHRA "
                f"{'on' if a.local else 'off'}, {a.global_layers} global)")


def layer_id(name: str, cfg) -> int:
    """Layer-wise lr decay depth: as ViViT Model 1 for the encoder; ``local_mhra.i`` with block
    i, ``global_blocks.j`` with the block it reads; query, gate, norms and head last."""
    parts = name.split(".")
    if parts[0] in ("patch_embed", "pos_embed"):
        return 0
    if parts[0] in ("blocks", "local_mhra", "local_drop"):
        return int(parts[1]) + 1
    if parts[0] == "global_blocks":
        return cfg.depth - cfg.arm.global_layers + int(parts[1]) + 1
    return cfg.depth + 1
