"""Token masks for masked video modelling.

A mask is a bool tensor ``(B, N)`` with True = hidden from the encoder, over tokens ordered
t-major (``n = t*H'*W' + h*W' + w``, a Conv3d output flattened). Every sample in a batch hides
exactly the same number of tokens, so the encoder input has a fixed length.
"""
from __future__ import annotations

import torch
from einops import repeat


def num_hidden(num_cells: int, ratio: float) -> int:
    """The count rule of the published recipe: ``int(ratio * cells)``, e.g. int(0.9*196) = 176."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(ratio * num_cells)


def _hide_lowest(noise: torch.Tensor, hidden: int) -> torch.Tensor:
    # noise (B, M) -> bool (B, M) with exactly `hidden` True per row, at the lowest noise values.
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < hidden


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One spatial mask per sample, shared by every time step (VideoMAE tube masking).

    grid: token grid (T', H', W'). Returns bool (batch, T'*H'*W') with
    ``T' * int(ratio * H'*W')`` hidden tokens per sample.
    """
    t, h, w = grid
    noise = torch.rand(batch, h * w, generator=generator)
    spatial = _hide_lowest(noise, num_hidden(h * w, ratio))  # (B, H'W')
    return repeat(spatial, "b s -> b (t s)", t=t)


def random_mask(batch: int, grid: tuple[int, int, int], ratio: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent random space-time masking (mae_st): ``int(ratio * N)`` hidden of N tokens."""
    n = grid[0] * grid[1] * grid[2]
    noise = torch.rand(batch, n, generator=generator)
    return _hide_lowest(noise, num_hidden(n, ratio))


def running_cell_mask(mask: torch.Tensor, grid: tuple[int, int, int], ratio: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Decoder masking (VideoMAEv2): which hidden tokens the decoder reconstructs.

    mask (B, N) encoder mask -> (B, N) bool, a subset of ``mask`` with exactly
    ``hidden - int(ratio * hidden)`` tokens per sample. Tokens of the "running cell" are taken
    first: in every 2x2 spatial cell a fraction ``1 - ratio`` of the positions is selected, and
    the selection moves one position around the cell per time step, so over time every
    position gets decoded; random picks among the rest fill any shortfall.
    """
    t, h, w = grid
    b, n = mask.shape
    hidden = int(mask[0].sum())
    keep = hidden - int(ratio * hidden)
    around = torch.tensor([0, 1, 3, 2])  # cell positions in clockwise order
    cell = around[2 * (torch.arange(h)[:, None] % 2) + torch.arange(w)[None, :] % 2]
    running = (cell[None] + torch.arange(t)[:, None, None]) % 4 < round(4 * (1 - ratio))
    score = running.reshape(1, n).float() + 0.5 * torch.rand(b, n, generator=generator)
    score = score.masked_fill(~mask, -1.0)
    picked = score.topk(keep, dim=1).indices
    return torch.zeros_like(mask).scatter_(1, picked, True)


def token_ids(mask: torch.Tensor, decode_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks -> the token numbers a model gathers: (visible (B, N_vis), reconstructed
    (B, N_rec)), each ascending, int64. ``decode_mask`` (default: ``mask``) names the tokens to
    reconstruct.

    Call it where the masks are made or still on the host: the counts become plain shapes, so a
    compiled model sees static shapes and the device never has to report a count back.
    """
    rec = mask if decode_mask is None else decode_mask
    n_vis = mask.shape[1] - int(mask[0].sum())
    n_rec = int(rec[0].sum())
    # a stable sort of 0/1 keys puts the zeros first, each group in ascending token order
    vis = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :n_vis]
    picked = torch.argsort((~rec).to(torch.uint8), dim=1, stable=True)[:, :n_rec]
    return vis, picked


MASKS = {"tube": tube_mask, "random": random_mask}


def make_mask(kind: str, batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch on the mask kind named in a config ('tube' or 'random')."""
    try:
        fn = MASKS[kind]
    except KeyError:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {sorted(MASKS)}") from None
    return fn(batch, grid, ratio, generator)
