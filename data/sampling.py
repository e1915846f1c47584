"""Which frames of a video make a clip.

Training: ``num_frames`` indices ``stride`` raw frames apart from a random start (VideoMAE uses
16 x 4 on Kinetics, 16 x 2 on SSv2). A video shorter than the span still yields ``num_frames``
indices. Evaluation: ``num_clips`` starts spread evenly over the video.
"""
from __future__ import annotations

import numpy as np

SHORT_MODES = ("clamp", "loop")


def clip_span(num_frames: int, stride: int) -> int:
    """Raw frames covered by one clip: first to last index inclusive."""
    return (num_frames - 1) * stride + 1


def _indices_from(start: int, video_frames: int, num_frames: int, stride: int,
                  short: str) -> np.ndarray:
    idx = start + stride * np.arange(num_frames)
    if short == "clamp":
        return np.minimum(idx, video_frames - 1)
    if short == "loop":
        return idx % video_frames
    raise ValueError(f"unknown short-video mode {short!r}; choose one of {SHORT_MODES}")


def sample_frame_indices(video_frames: int, num_frames: int, stride: int,
                         rng: np.random.Generator, short: str = "clamp",
                         start_every: int = 1) -> np.ndarray:
    """Indices (num_frames,) int64 of one training clip from a uniformly random start; with
    ``start_every`` k, uniformly among the starts 0, k, 2k, ... that fit (keyframes).

    When the video is shorter than the clip span the start is 0 and the indices past the end
    are clamped to the last frame ("clamp") or wrapped around ("loop").
    """
    if video_frames < 1:
        raise ValueError("video has no frames")
    span = clip_span(num_frames, stride)
    start = (int(rng.integers(0, (video_frames - span) // start_every + 1)) * start_every
             if video_frames >= span else 0)
    return _indices_from(start, video_frames, num_frames, stride, short)


def eval_clip_indices(video_frames: int, num_frames: int, stride: int, num_clips: int,
                      short: str = "clamp") -> np.ndarray:
    """Indices (num_clips, num_frames) of test clips with starts spread evenly over the video.

    One clip is centred; several are spaced so the first starts at 0 and the last ends at the
    last frame (the multi-view test protocol).
    """
    span = clip_span(num_frames, stride)
    room = max(video_frames - span, 0)
    if num_clips == 1:
        starts = [room // 2]
    else:
        starts = [round(i * room / (num_clips - 1)) for i in range(num_clips)]
    return np.stack([_indices_from(s, video_frames, num_frames, stride, short) for s in starts])


def resample_depth_indices(depth: int, num_frames: int) -> np.ndarray:
    """Nearest slices (num_frames,) spread over a volume of ``depth`` slices (depth = time)."""
    if num_frames == depth:
        return np.arange(depth)
    return np.floor((np.arange(num_frames) + 0.5) * depth / num_frames).astype(np.int64)
