"""The embedded demo set: real encoded mp4 clips of a shape moving over a cluttered background.

The class is the motion (direction x speed). Shape, colours, size, clutter and position are
random and independent of the class, and motion wraps around the frame edges, so no single frame
tells the class: a model has to look across time.

``Nuisance`` can make the task harder in ways that only looking at motion overcomes: static
look-alike shapes (which one moves?), a smooth background texture, per-frame sensor noise,
camera shake (a random whole-frame shift per frame, zero-mean, so it says nothing about the
direction) and a speed drawn around the class's speed. ``HARD`` (``--hard``) uses only the shake
and the speed spread: with look-alikes, texture or noise, static content that tube masking never
shows fills the per-patch normalised pre-training targets with the unpredictable, and the tiny
VideoMAE's loss stayed at ~1.0 (measured; see docs/label-efficiency.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ..decode import encode_video
from .shards import encode_sample

DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
SPEEDS = {"slow": 0.75, "fast": 2.0}  # pixels per frame at a 64-pixel frame
CLASSES = [f"{d}-{s}" for d in DIRECTIONS for s in SPEEDS]
SHAPES = ("disc", "square", "diamond")


@dataclass(frozen=True)
class Nuisance:
    distractors: tuple = (0, 0)      # static look-alike shapes per clip: (min, max) inclusive
    noise: float = 0.0               # per-pixel, per-frame Gaussian noise sigma (0-255)
    jitter: int = 0                  # camera shake: per-frame shift of up to this many pixels
    speed_spread: float = 0.0        # speed drawn uniformly in class speed x [1 -/+ spread]
    texture: float = 0.0             # amplitude of a smooth (low-frequency) background texture
    waves: float = 0.0               # amplitude (levels) of a periodic texture of 4 plane
                                     # waves over the whole background
    drift: float = 0.0               # the background (colour, clutter, waves) drifts at a
                                     # speed up to this (pixels per frame at 64 px) in a random
                                     # direction, the same for every class


NONE = Nuisance()
HARD = Nuisance(jitter=1, speed_spread=0.3)
# --background moving: every pixel has content that moves, and the content is predictable
# from what the tube mask shows (plane waves drifting together), none of it about the class
MOVING = Nuisance(waves=24.0, drift=1.0)


def class_names(num_classes: int) -> list[str]:
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"the synthetic set has 2 to {len(CLASSES)} classes, not {num_classes}")
    return CLASSES[:num_classes]


def _coverage(shape: str, radius: float, yy, xx, py: float, px: float, size: int):
    """Anti-aliased coverage (size, size, 1) of ``shape`` centred at (py, px), wrapping around
    the frame edges; sub-pixel motion still changes the pixels."""
    oy = (yy - py + size / 2) % size - size / 2
    ox = (xx - px + size / 2) % size - size / 2
    if shape == "disc":   # signed distance to the edge, positive inside
        inside = radius - np.sqrt(oy ** 2 + ox ** 2)
    elif shape == "square":
        inside = radius * 0.85 - np.maximum(np.abs(oy), np.abs(ox))
    else:
        inside = (radius * 1.2 - np.abs(oy) - np.abs(ox)) / np.sqrt(2)
    return np.clip(inside + 0.5, 0.0, 1.0)[..., None]


def _look(rng: np.random.Generator, size: int) -> tuple[str, float, np.ndarray]:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = float(rng.uniform(0.09, 0.16) * size)
    colour = rng.integers(150, 256, size=3).astype(np.float32)
    return shape, radius, colour


def render_clip(label: int, rng: np.random.Generator, size: int, frames: int,
                nuisance: Nuisance = NONE) -> np.ndarray:
    """One clip (frames, size, size, 3) uint8 of class ``label``. Without nuisance the random
    draws are those of the original set (same clips for the same seed)."""
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
    shape, radius, colour = _look(rng, size)
    cy, cx = rng.uniform(0, size, 2)
    if nuisance.texture:  # a 5x5 grid of random colours, interpolated: smooth over the frame
        coarse = rng.normal(0.0, nuisance.texture, (5, 5, 3))
        at = np.linspace(0, 4, size)
        rows = np.stack([[np.interp(at, np.arange(5), coarse[i, :, c]) for c in range(3)]
                         for i in range(5)])                       # (5, 3, size)
        smooth = np.stack([[np.interp(at, np.arange(5), rows[:, c, j]) for c in range(3)]
                           for j in range(size)])                  # (size x, 3, size y)
        canvas += smooth.transpose(2, 0, 1)
    lo, hi = nuisance.distractors
    for _ in range(int(rng.integers(lo, hi + 1)) if hi else 0):  # static look-alikes
        d_shape, d_radius, d_colour = _look(rng, size)
        alpha = _coverage(d_shape, d_radius, yy, xx, *rng.uniform(0, size, 2), size)
        canvas = canvas * (1 - alpha) + d_colour * alpha
    if nuisance.speed_spread:
        step *= float(rng.uniform(1 - nuisance.speed_spread, 1 + nuisance.speed_spread))
    vy = vx = 0.0
    waves = None
    if nuisance.drift or nuisance.waves:
        speed = float(rng.uniform(0.25, 1.0)) * nuisance.drift * size / 64
        angle = float(rng.uniform(0, 2 * np.pi))
        vy, vx = speed * np.sin(angle), speed * np.cos(angle)
        # whole cycles per frame side, so the waves wrap around the edges as the motion does
        freq = rng.integers(1, 5, size=(4, 2)) * rng.choice([-1, 1], size=(4, 2))
        phase = rng.uniform(0, 2 * np.pi, 4)
        tint = rng.normal(0.0, 1.0, (4, 3))
        waves = (freq, phase, tint / np.linalg.norm(tint, axis=1, keepdims=True))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        py, px = (cy + dy * step * t) % size, (cx + dx * step * t) % size
        alpha = _coverage(shape, radius, yy, xx, py, px, size)
        back = canvas
        if waves is not None:
            oy, ox = vy * t, vx * t
            back = np.roll(canvas, (int(round(oy)), int(round(ox))), axis=(0, 1))
            freq, phase, tint = waves
            for (fy, fx), ph, c in zip(freq, phase, tint):
                arg = 2 * np.pi * (fy * (yy - oy) + fx * (xx - ox)) / size + ph
                back = back + nuisance.waves * np.sin(arg)[..., None] * c
        frame = back * (1 - alpha) + colour * alpha
        if nuisance.jitter:
            j = nuisance.jitter
            frame = np.roll(frame, tuple(rng.integers(-j, j + 1, 2)), axis=(0, 1))
        if nuisance.noise:
            frame = frame + rng.normal(0.0, nuisance.noise, frame.shape)
        out[t] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return out


def make_sample(index: int, seed: int, num_classes: int, size: int, frames: int,
                fps: float, nuisance: Nuisance = NONE, labeled: bool = True) -> dict:
    """Clip number ``index`` of the set: its content depends only on (seed, index). Unlabeled
    clips (the pre-training pool) carry label -1."""
    rng = np.random.default_rng([seed, index])
    label = index % num_classes
    clip = render_clip(label, rng, size, frames, nuisance)
    data = encode_video(clip, fps=fps, codec="h264", gop=16, crf=18)
    meta = {"label": label if labeled else -1, "label_name": CLASSES[label] if labeled else "",
            "source": f"synthetic:{seed}/{index}", "num_frames": frames, "fps": fps,
            "width": size, "height": size}
    return {"ok": True, "sample": encode_sample(f"{index:08d}", "mp4", data, meta)}


def split_of(index: int, count: int, fractions=(0.7, 0.15, 0.15)) -> str:
    """Deterministic split by position in the set (classes are interleaved, so balanced)."""
    n_train = int(round(count * fractions[0]))
    n_val = int(round(count * fractions[1]))
    return "train" if index < n_train else "val" if index < n_train + n_val else "test"


def pool_layout(pool: int, num_classes: int, train_per_class: int, val_per_class: int,
                test_per_class: int) -> dict:
    """The label-efficiency layout: disjoint index ranges {split: range}, the unlabeled pool
    first; every labeled range is a multiple of the class count, so classes are balanced."""
    out, start = {}, 0
    for split, n in (("pool", pool), ("train", train_per_class * num_classes),
                     ("val", val_per_class * num_classes), ("test", test_per_class * num_classes)):
        start += (-start) % num_classes  # each labeled range starts at class 0
        out[split] = range(start, start + n)
        start += n
    return out


def synthetic_work(seed: int, num_classes: int, size: int, frames: int, fps: float,
                   nuisance: Nuisance = NONE, labeled: bool = True):
    return partial(make_sample, seed=seed, num_classes=num_classes, size=size, frames=frames,
                   fps=fps, nuisance=nuisance, labeled=labeled)
