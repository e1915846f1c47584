"""`python -m data.preview SHARDS`: stream one batch and describe it (and draw it).

    python -m data.preview runs/data/synthetic --num-frames 16 --stride 2 --size 64 --batch 2 --json
    python -m data.preview SHARDS --png batch.png   # frames, hidden tokens shaded
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from einops import rearrange, repeat

from .manifest import DataSetError
from .stream import StreamConfig, TrainStream


def summarize(batch: dict, stream: TrainStream) -> dict:
    cfg, ss = stream.cfg, stream.shard_set
    out = {
        "shards": ss.root, "kind": ss.kind, "num_samples": ss.num_samples,
        "num_shards": len(ss.shards), "classes": ss.classes,
        "clip": {"shape": list(batch["video"].shape), "dtype": str(batch["video"].dtype)},
        "labels": batch["label"].tolist(),
        "label_names": [ss.classes[i] if 0 <= i < len(ss.classes) else "(unlabeled)"
                        for i in batch["label"].tolist()],
        "index": batch["index"].tolist(),
    }
    if "mask" in batch:
        m = batch["mask"]
        out["mask"] = {"kind": cfg.mask, "shape": list(m.shape),
                       "token_grid": list(cfg.token_grid(batch["video"].shape[-1])),
                       "hidden_per_sample": m.sum(1).tolist(), "ratio": cfg.mask_ratio}
    return out


def draw(batch: dict, cfg: StreamConfig, path: str, max_frames: int = 16):
    """One row per clip, one column per frame; hidden tokens darkened with their grid drawn."""
    from PIL import Image

    video = batch["video"]  # (B, C, T, H, W) uint8
    if video.shape[1] == 1:
        video = video.expand(-1, 3, -1, -1, -1)
    b, _, t, h, w = video.shape
    frames = rearrange(video, "b c t h w -> b t h w c").float()
    if "mask" in batch:
        tt, hh, ww = cfg.token_grid(h)
        m = rearrange(batch["mask"], "b (t h w) -> b t h w", t=tt, h=hh, w=ww).float()
        m = repeat(m, "b t h w -> b (t u) (h p) (w q) 1", u=cfg.tubelet, p=cfg.patch,
                   q=cfg.patch)
        frames = frames * (1 - 0.7 * m)
        edge = torch.zeros(h, w, 1)
        edge[::cfg.patch] = 1
        edge[:, ::cfg.patch] = 1
        frames = torch.where(edge.bool() & m.bool(), torch.full_like(frames, 90.0), frames)
    step = max(1, t // max_frames)
    frames = frames[:, ::step]
    grid = rearrange(frames, "b t h w c -> (b h) (t w) c").clamp(0, 255).byte().numpy()
    Image.fromarray(grid).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.preview", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", help="a prepared folder, or a set in a store (s3://, https://, "
                                   "pipe:); the train split is read when splits exist")
    ap.add_argument("--split", default=None)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--size", type=int, default=224, help="clip side (0 keeps a volume's own)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mask", default="tube", choices=("tube", "random", "none"))
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--tubelet", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ap.add_argument("--png", help="save a picture of the batch with the mask drawn")
    args = ap.parse_args(argv)
    cfg = StreamConfig(shards=args.shards, split=args.split, batch_size=args.batch,
                       num_workers=0, num_frames=args.num_frames, stride=args.stride,
                       size=args.size or None, mask=args.mask, mask_ratio=args.mask_ratio,
                       patch=args.patch, tubelet=args.tubelet, seed=args.seed,
                       shuffle_buffer=1)
    try:
        stream = TrainStream(cfg)
        batch = next(iter(stream))
    except (DataSetError, ValueError) as e:
        print(f"data.preview: error: {e}", file=sys.stderr)
        return 2
    from data.clips import short_samples, stored_stride
    short, looked, shortest = short_samples(cfg, stream.shard_set)
    if short:
        step = stored_stride(cfg, stream.shard_set)
        print(f"data.preview: warning: {short} of the first {looked} samples are shorter than "
              f"one clip ({args.num_frames} frames x stride {step} = "
              f"{(args.num_frames - 1) * step + 1} stored frames; the shortest has {shortest}): "
              f"their clips repeat the last frame (data.short_video=clamp) or loop; use a "
              f"smaller --stride or --num-frames", file=sys.stderr)
    summary = summarize(batch, stream)
    if args.png:
        draw(batch, cfg, args.png)
        summary["png"] = args.png
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>12}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
