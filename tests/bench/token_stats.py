"""Per-block token statistics of encoder exports: how much of each token is common to every
clip, and how much differs between clips (docs/label-efficiency.md).

For each export (``encoder.safetensors`` + ``encoder.json``, e.g. ``pretrain.export RUN --tag
stepN`` for N over a run, and ``--initial`` for step 0), over the first ``--clips`` clips of a
prepared video split (one centred clip each, the encoder's geometry, every token visible),
after the embedding, after each block and after the final norm:
  common  RMS over features of the pooled (token-mean) feature averaged over clips: the part
          every clip shares;
  spread  RMS over features of the pooled feature's std over clips: what tells clips apart;
  tokens  RMS over features of the std over a clip's tokens.
Also the patch embedding's DC gain (RMS over output channels of each kernel's sum per input
channel) and weight RMS.

    python tests/bench/token_stats.py runs/quickstart/data/test enc0 enc30 enc300 [--clips 128]

Prints a table per export and one JSON line. ``--recentre OUT`` (one export) also writes the
export with that common part taken out, layer by layer, as an export in OUT: the split's mean
token subtracted from the patch-embedding bias, then each block's mean increment from its last
bias (docs/experiments/2026-12-01-harder-sets.md).

    python tests/bench/token_stats.py runs/quickstart/data/pool enc300 --recentre enc300_rc
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from data.decode import decode_frames  # noqa: E402
from data.manifest import load_shard_set  # noqa: E402
from data.sampling import eval_clip_indices  # noqa: E402
from data.shard_reader import decode_sample, leading_samples  # noqa: E402
from pretrain.convert import load_safetensors  # noqa: E402
from pretrain.model import ModelConfig, VideoMAEEncoder, channel_stats  # noqa: E402


def clips(split: str, n: int, cfg: ModelConfig, stride: int) -> torch.Tensor:
    """(n, C, T, H, W) uint8: one centred clip of ``cfg.num_frames`` frames ``stride`` stored
    frames apart from each of the split's first ``n`` samples (frames as stored, no resize)."""
    out = []
    for raw in leading_samples(load_shard_set(split), n):
        _, payload, _ = decode_sample(raw)
        frames = decode_frames(payload, lambda k: eval_clip_indices(
            k, cfg.num_frames, stride, 1)[0])
        out.append(torch.from_numpy(frames).permute(3, 0, 1, 2))
    return torch.stack(out)


def rms(t: torch.Tensor) -> float:
    return t.float().pow(2).mean().sqrt().item()


def stats(x: torch.Tensor) -> dict:
    pooled = x.mean(1)
    return {"common": rms(pooled.mean(0)), "spread": rms(pooled.std(0)),
            "tokens": rms(x.std(1))}


def encoder_and_input(folder: str, video_of):
    """The export's encoder (eval), its clips normalised as the encoder's input, its config."""
    meta = json.load(open(os.path.join(folder, "encoder.json")))
    cfg = ModelConfig(**meta["model"])
    enc = VideoMAEEncoder(cfg).eval()
    enc.load_state_dict(load_safetensors(os.path.join(folder, "encoder.safetensors")))
    mean, std = channel_stats(cfg.in_chans, cfg.mean, cfg.std)
    shape = (1, cfg.in_chans, 1, 1, 1)
    x = (video_of(cfg).float() / 255 - torch.tensor(mean).view(shape)) / torch.tensor(
        std).view(shape)
    return enc, x, cfg


@torch.no_grad()
def export_stats(folder: str, video_of) -> dict:
    enc, x, _ = encoder_and_input(folder, video_of)
    h = enc.embed(x)
    rows = {"embed": stats(h)}
    for i, blk in enumerate(enc.blocks):
        h = blk(h)
        rows[f"block{i}"] = stats(h)
    rows["norm"] = stats(enc.norm(h))
    w = enc.patch_embed.proj.weight
    rows["patch_embed"] = {"dc_gain": rms(w.sum(dim=tuple(range(2, w.ndim)))),
                           "weight_rms": rms(w)}
    return rows


@torch.no_grad()
def recentre(folder: str, video_of, out: str) -> dict:
    """Write ``folder``'s encoder with the part common to the clips taken out of its residual
    stream to ``out``; returns the statistics after its final norm."""
    from pretrain.export import export_encoder
    enc, x, cfg = encoder_and_input(folder, video_of)
    h = enc.embed(x)
    common = h.mean((0, 1))
    enc.patch_embed.proj.bias -= common
    h = h - common
    for blk in enc.blocks:
        nxt = blk(h)
        step = (nxt - h).mean((0, 1))
        blk.mlp.fc2.bias -= step
        h = nxt - step
    export_encoder({f"encoder.{k}": v for k, v in enc.state_dict().items()}, cfg, out,
                   {"recentred_from": folder})
    return stats(enc.norm(h))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("split", help="a prepared video split, e.g. runs/quickstart/data/test")
    ap.add_argument("exports", nargs="+", help="encoder export folders")
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--stride", type=int, default=2, help="stored frames between frames")
    ap.add_argument("--recentre", metavar="OUT",
                    help="write the (one) export with the common part taken out to OUT")
    args = ap.parse_args()
    if args.recentre and len(args.exports) != 1:
        ap.error("--recentre takes one export")
    torch.set_num_threads(1)
    cache = {}

    def video_of(cfg):
        key = (cfg.num_frames, args.stride)
        if key not in cache:
            cache[key] = clips(args.split, args.clips, cfg, args.stride)
        return cache[key]
    out = {}
    for folder in args.exports:
        rows = export_stats(folder, video_of)
        out[folder] = rows
        pe = rows.pop("patch_embed")
        print(f"\n{folder}: patch embedding DC gain {pe['dc_gain']:.3f}, weight RMS "
              f"{pe['weight_rms']:.4f}")
        print(f"{'':<8} {'common':>8} {'spread':>8} {'tokens':>8}")
        for name, r in rows.items():
            print(f"{name:<8} {r['common']:8.3f} {r['spread']:8.3f} {r['tokens']:8.3f}")
        rows["patch_embed"] = pe
    if args.recentre:
        after = recentre(args.exports[0], video_of, args.recentre)
        print(f"\nrecentred export in {args.recentre}; after its final norm: common "
              f"{after['common']:.3f}, spread {after['spread']:.3f}, tokens {after['tokens']:.3f}")
        out[args.recentre] = {"norm": after}
    print()
    print(json.dumps({"bench": "token_stats", "clips": args.clips, "exports": out}))


if __name__ == "__main__":
    main()
