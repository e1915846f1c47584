"""The embedded demo set: real encoded mp4 clips of a shape moving over a cluttered background.

The class is the motion (direction x speed). Shape, colours, size, clutter and position are
random and independent of the class, and motion wraps around the frame edges, so no single frame
tells the class: a model has to look across time.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from ..decode import encode_video
from .shards import encode_sample

DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
SPEEDS = {"slow": 0.75, "fast": 2.0}  # pixels per frame at a 64-pixel frame
CLASSES = [f"{d}-{s}" for d in DIRECTIONS for s in SPEEDS]
SHAPES = ("disc", "square", "diamond")


def class_names(num_classes: int) -> list[str]:
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"the synthetic set has 2 to {len(CLASSES)} classes, not {num_classes}")
    return CLASSES[:num_classes]


def render_clip(label: int, rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """One clip (frames, size, size, 3) uint8 of class ``label``."""
    direction, speed = CLASSES[label].split("-")
    dy, dx = DIRECTIONS[direction]
    step = SPEEDS[speed] * size / 64
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.integers(0, 90, size=3).astype(np.float32)
    canvas = np.broadcast_to(background, (size, size, 3)).copy()
    for _ in range(int(rng.integers(2, 5))):  # static clutter: uninformative texture
        y0, x0 = rng.integers(0, size, 2)
        h, w = rng.integers(size // 8, size // 3, 2)
        canvas[y0:y0 + h, x0:x0 + w] = rng.integers(0, 140, size=3)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = float(rng.uniform(0.09, 0.16) * size)
    colour = rng.integers(150, 256, size=3).astype(np.float32)
    cy, cx = rng.uniform(0, size, 2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        py, px = (cy + dy * step * t) % size, (cx + dx * step * t) % size
        # wrapped offsets so the shape re-enters on the far side
        oy = (yy - py + size / 2) % size - size / 2
        ox = (xx - px + size / 2) % size - size / 2
        # signed distance to the edge (positive inside), then anti-aliased coverage, so
        # sub-pixel motion still changes the pixels
        if shape == "disc":
            inside = radius - np.sqrt(oy ** 2 + ox ** 2)
        elif shape == "square":
            inside = radius * 0.85 - np.maximum(np.abs(oy), np.abs(ox))
        else:
            inside = (radius * 1.2 - np.abs(oy) - np.abs(ox)) / np.sqrt(2)
        alpha = np.clip(inside + 0.5, 0.0, 1.0)[..., None]
        frame = canvas * (1 - alpha) + colour * alpha
        out[t] = np.round(frame).astype(np.uint8)
    return out


def make_sample(index: int, seed: int, num_classes: int, size: int, frames: int,
                fps: float) -> dict:
    """Clip number ``index`` of the set: its content depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index])
    label = index % num_classes
    clip = render_clip(label, rng, size, frames)
    data = encode_video(clip, fps=fps, codec="h264", gop=16, crf=18)
    meta = {"label": label, "label_name": CLASSES[label], "source": f"synthetic:{seed}/{index}",
            "num_frames": frames, "fps": fps, "width": size, "height": size}
    return {"ok": True, "sample": encode_sample(f"{index:08d}", "mp4", data, meta)}


def split_of(index: int, count: int, fractions=(0.7, 0.15, 0.15)) -> str:
    """Deterministic split by position in the set (classes are interleaved, so balanced)."""
    n_train = int(round(count * fractions[0]))
    n_val = int(round(count * fractions[1]))
    return "train" if index < n_train else "val" if index < n_train + n_val else "test"


def synthetic_work(seed: int, num_classes: int, size: int, frames: int, fps: float):
    return partial(make_sample, seed=seed, num_classes=num_classes, size=size, frames=frames,
                   fps=fps)
