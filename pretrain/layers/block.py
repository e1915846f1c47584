from functools import partial

from torch import nn

from .attention import Attention
from .drop import DropPath
from .mlp import Mlp


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    ``attn_layer`` lets factorised models swap the attention (ViViT models 3 and 4) while
    keeping the parameter names. (B, N, D) -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 act_layer=nn.GELU, attn_layer=Attention, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                               proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
