"""Building blocks shared by VideoMAE, ViViT and UniFormer; one concept per file."""
from .attention import Attention
from .block import Block
from .drop import DropPath
from .mlp import Mlp
from .norm import BatchNorm2d, BatchNorm3d
from .patch_embed import TubeletEmbed, gather_tokens
from .pos_embed import sincos_table, table_for

__all__ = ["Attention", "BatchNorm2d", "BatchNorm3d", "Block", "DropPath", "Mlp", "TubeletEmbed",
           "gather_tokens", "sincos_table", "table_for"]
