import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (fused kernels).

    One ``qkv`` projection without bias plus separate ``q_bias`` and ``v_bias`` (the key bias is
    zero), exactly the parameters of the published VideoMAE weights. (B, N, D) -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_bias(self) -> torch.Tensor | None:
        if self.q_bias is None:
            return None
        return torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, D/heads)."""
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        return rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        out = F.scaled_dot_product_attention(q, k, v,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
