import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class TubeletEmbed(nn.Module):
    """Cube embedding: Conv3d with kernel = stride = (tubelet, patch, patch).

    (B, C, T, H, W) -> (B, N, D) with N = T/t * H/p * W/p tokens in t-major order
    (``n = t*H'*W' + h*W' + w``). ``proj`` is named as in the published checkpoints. A tubelet
    of 1 is uniform frame sampling's 2D patch embedding applied to every frame.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, tubelet: int = 2,
                 patch: int = 16):
        super().__init__()
        self.tubelet, self.patch = tubelet, patch
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet, patch, patch),
                              stride=(tubelet, patch, patch))

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames // self.tubelet, height // self.patch, width // self.patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b d t h w -> b (t h w) d")

    def forward_selected(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Embed only the tubelets numbered ``ids`` (B, N_keep) (t-major token numbers):
        (B, C, T, H, W) -> (B, N_keep, D). Kernel = stride makes the convolution a linear map
        of each tubelet, so with 10% visible this does a tenth of the work of ``forward``."""
        p0, p = self.tubelet, self.patch
        tubelets = rearrange(x, "b c (t p0) (h p1) (w p2) -> b (t h w) (c p0 p1 p2)",
                             p0=p0, p1=p, p2=p)
        kept = gather_tokens(tubelets, ids)
        return F.linear(kept, self.proj.weight.flatten(1), self.proj.bias)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) and token numbers ids (B, K) -> (B, K, ...). Shapes depend only on the
    shapes of the inputs (no boolean indexing), so compiled graphs stay static."""
    index = ids.reshape(*ids.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)
