"""Spatial transforms on uint8 clips, the way VideoMAE augments (normalisation happens later,
on the device).

Frames come in as ``(T, H, W, C)`` uint8 (what a decoder returns) and leave as ``(C, T, S, S)``
uint8, the layout of one sample of a ``(B, C, T, H, W)`` batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

MULTISCALE = (1.0, 0.875, 0.75, 0.66)


def _crop_offsets(height: int, width: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
    # The 13 fixed positions of multi-scale cropping: corners, centre, edge midpoints and
    # the quarter points, as (top, left).
    hs, ws = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
            (1, 1), (1, 3), (3, 1), (3, 3)]
    return [(i * hs, j * ws) for i, j in grid]


def multiscale_crop_box(height: int, width: int, rng: np.random.Generator,
                        scales=MULTISCALE, max_distort: int = 1) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of a multi-scale crop.

    Crop sides are ``scale * short side`` for scales in ``scales``; height and width scales
    differ by at most ``max_distort`` steps (aspect jitter); the position is one of 13 fixed
    offsets.
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides)
             if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    offsets = _crop_offsets(height, width, crop_h, crop_w)
    top, left = offsets[int(rng.integers(len(offsets)))]
    return top, left, crop_h, crop_w


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, C, h, w) uint8 -> (T, C, size) uint8, bilinear with antialiasing (as PIL resizes)."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    x = frames.contiguous(memory_format=torch.channels_last)
    if x.device.type != "cpu":  # CUDA has no uint8 bilinear kernel: float, rounded back
        return resize_float(x, size)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def resize_float(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``resize_frames`` computed in float32 and rounded to uint8 (within 1 of the uint8
    kernel's values); the path on devices without a uint8 kernel."""
    out = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def train_crop_params(height: int, width: int, rng: np.random.Generator, scales=MULTISCALE,
                      flip: bool = False) -> tuple[int, int, int, int, int]:
    """The random part of ``train_transform``: (top, left, crop_h, crop_w, flipped), drawn from
    ``rng`` in the same order, so CPU and device augmentation make the same clip."""
    top, left, ch, cw = multiscale_crop_box(height, width, rng, scales)
    flipped = int(flip and rng.random() < 0.5)
    return top, left, ch, cw, flipped


def apply_crop(frames: torch.Tensor, params, size: int) -> torch.Tensor:
    """frames (T, H, W, C) uint8 (any device) + ``train_crop_params`` -> (C, T, size, size)."""
    top, left, ch, cw, flipped = (int(v) for v in params)
    crop = rearrange(frames[:, top:top + ch, left:left + cw], "t h w c -> t c h w")
    out = resize_frames(crop, (size, size))
    if flipped:
        out = out.flip(-1)
    return rearrange(out, "t c h w -> c t h w").contiguous()


def train_transform(frames: np.ndarray | torch.Tensor, size: int, rng: np.random.Generator,
                    scales=MULTISCALE, flip: bool = False) -> torch.Tensor:
    """VideoMAE pre-training augmentation of one clip.

    frames (T, H, W, C) uint8 -> (C, T, size, size) uint8: one multi-scale crop box for all
    frames, resized to size x size, optionally flipped left-right with probability 1/2.
    """
    frames = torch.as_tensor(frames)
    t, h, w, c = frames.shape
    return apply_crop(frames, train_crop_params(h, w, rng, scales, flip), size)


# (kr, kb) of each colour matrix ``decode_yuv420`` names: BT.601, BT.709, BT.2020
_KR_KB = {0: (0.299, 0.114), 1: (0.2126, 0.0722), 2: (0.2627, 0.0593)}


def yuv420_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, matrix: int,
                  full_range: bool) -> torch.Tensor:
    """Planes of the same shape (chroma already upsampled), uint8 on any device -> RGB (..., 3)
    uint8 with FFmpeg's matrix (0 BT.601, 1 BT.709, 2 BT.2020) and range for the stream;
    within 1 level of 255 of swscale's output on average (flooring as its fixed-point code
    does)."""
    kr, kb = _KR_KB[int(matrix)]
    kg = 1 - kr - kb
    yf, uf, vf = y.float(), u.float() - 128, v.float() - 128
    if full_range:
        cs = 1.0
    else:
        yf = (yf - 16) * (255 / 219)
        cs = 255 / 224
    r = yf + cs * 2 * (1 - kr) * vf
    b = yf + cs * 2 * (1 - kb) * uf
    g = yf - cs * (2 * kb * (1 - kb) / kg * uf + 2 * kr * (1 - kr) / kg * vf)
    return torch.stack([r, g, b], -1).floor_().clamp_(0, 255).to(torch.uint8)


def _yuv_crop(planes: torch.Tensor, pos: torch.Tensor, top: int, left: int, ch: int,
              cw: int, colour) -> torch.Tensor:
    """I420 planes (F, H * 3 // 2, W) -> the RGB crop (T, ch, cw, 3) at frames ``pos``: chroma
    taken nearest (each sample covers 2 x 2 pixels, as swscale's default does), converted
    only where the crop is."""
    f, rows, w = planes.shape
    h = rows * 2 // 3
    sel = planes[pos]
    y = sel[:, top:top + ch, left:left + cw]
    chroma = sel[:, h:].reshape(len(pos), 2, h // 2, w // 2)
    dev = planes.device
    r_idx = torch.arange(top, top + ch, device=dev) // 2
    c_idx = torch.arange(left, left + cw, device=dev) // 2
    chroma = chroma.index_select(2, r_idx).index_select(3, c_idx)      # (T, 2, ch, cw)
    return yuv420_to_rgb(y, chroma[:, 0], chroma[:, 1], int(colour[0]), bool(colour[1]))


def crop_batch(frames: list[torch.Tensor], source: torch.Tensor, positions: torch.Tensor,
               params: torch.Tensor, size: int, colour: list | None = None) -> torch.Tensor:
    """Device augmentation: decoded videos ``frames`` (each (F, H, W, C) uint8), and per clip
    the video it comes from ``source`` (B,), its frames ``positions`` (B, T) in that video and
    its ``train_crop_params`` (B, 5) -> clips (B, C, T, size, size) uint8 on the frames'
    device; the same values as ``train_transform`` on the CPU.

    Clips with the same crop size are resized together (multi-scale cropping has at most ten
    sizes), so a batch costs a few resize calls, not one per clip.

    With ``colour`` (one (matrix, full_range) per video), ``frames`` are I420 planes
    (``decode_yuv420``): each crop is converted to RGB before it is resized."""
    rows, src = params.tolist(), source.tolist()
    channels = 3 if colour is not None else frames[0].shape[-1]
    out = torch.empty((len(rows), channels, positions.shape[1], size, size),
                      dtype=torch.uint8, device=frames[0].device)
    groups: dict = {}
    for b, (_, _, ch, cw, _) in enumerate(rows):
        groups.setdefault((ch, cw), []).append(b)
    for (ch, cw), members in groups.items():
        if colour is not None:
            crops = torch.stack([_yuv_crop(frames[src[b]], positions[b], rows[b][0],
                                           rows[b][1], ch, cw, colour[src[b]])
                                 for b in members])
        else:
            crops = torch.stack([frames[src[b]][:, rows[b][0]:rows[b][0] + ch,
                                                rows[b][1]:rows[b][1] + cw][positions[b]]
                                 for b in members])                      # (n, T, ch, cw, C)
        x = resize_frames(rearrange(crops, "n t h w c -> (n t) c h w"), (size, size))
        x = rearrange(x, "(n t) c h w -> n c t h w", n=len(members))
        flipped = [i for i, b in enumerate(members) if rows[b][4]]
        if flipped:
            x[flipped] = x[flipped].flip(-1)
        out[members] = x
    return out


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, C, H, W) uint8 -> short side == size, aspect kept."""
    h, w = frames.shape[-2:]
    if h <= w:
        new = (size, max(size, round(w * size / h)))
    else:
        new = (max(size, round(h * size / w)), size)
    return resize_frames(frames, new)


def eval_crops(frames: np.ndarray | torch.Tensor, size: int, num_crops: int) -> torch.Tensor:
    """Test-time spatial views of one clip.

    frames (T, H, W, C) uint8 -> (num_crops, C, T, size, size) uint8: short side resized to
    size, then 1 centre crop or ``num_crops`` crops spread along the long side (3 = the usual
    left/centre/right views).
    """
    frames = rearrange(torch.as_tensor(frames), "t h w c -> t c h w")
    frames = resize_short_side(frames, size)
    h, w = frames.shape[-2:]
    long_room = max(h, w) - size
    if num_crops == 1:
        starts = [long_room // 2]
    else:
        starts = [round(i * long_room / (num_crops - 1)) for i in range(num_crops)]
    views = []
    for s in starts:
        view = frames[..., s:s + size, :size] if h > w else frames[..., :size, s:s + size]
        views.append(rearrange(view, "t c h w -> c t h w"))
    return torch.stack(views).contiguous()


def volume_transform(volume: np.ndarray, depth_indices: np.ndarray, size: int | None,
                     rng: np.random.Generator | None = None, flip: bool = False) -> torch.Tensor:
    """A volume as a one-channel clip: depth is time.

    volume (D, H, W) or (D, H, W, C) uint8 -> (C, T, S, S) uint8 with T = len(depth_indices);
    spatial side resized to ``size`` when given; optional random left-right flip.
    """
    vol = torch.as_tensor(np.ascontiguousarray(volume[depth_indices]))
    if vol.ndim == 3:
        vol = vol.unsqueeze(-1)
    vol = rearrange(vol, "t h w c -> t c h w")
    if size is not None and vol.shape[-2:] != (size, size):
        vol = resize_frames(vol, (size, size))
    if flip and rng is not None and rng.random() < 0.5:
        vol = vol.flip(-1)
    return rearrange(vol, "t c h w -> c t h w").contiguous()
