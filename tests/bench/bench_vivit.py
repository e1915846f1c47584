"""The fine-tuning models side by side: ViViT Models 1-4 at the same width and depth, the same
encoder armed with UniFormer blocks (uniformer_head), and UniFormer-S/B (published video stem);
training and inference clips/s, as the ViViT paper's runtime table (its ViViT-B/16x2 on TPUv3,
K400 top-1 / GFLOPs / ms per clip: M1 80.0/455/58.9, M2 78.8/284/17.4, M3 77.4/372/31.7,
M4 76.3/277/22.9).

    python tests/bench/bench_vivit.py [--preset vit_s] [--frames 16] [--size 224] [--batch 2] \
        [--models 1 2 3 4 uniformer_head uniformer_s uniformer_b]

Prints a table and one JSON line. On a GPU, pass --device cuda (bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.bench.report import Tables, add_results_arg  # noqa: E402
from finetune.models import build_model  # noqa: E402
from finetune.vivit import VivitConfig  # noqa: E402

NAMES = {"1": "ViViT 1 joint space-time", "2": "ViViT 2 factorised encoder",
         "3": "ViViT 3 factorised self-attn", "4": "ViViT 4 factorised dot-product",
         "uniformer_head": "encoder + UniFormer head (4 global)", "uniformer_s": "UniFormer-S",
         "uniformer_b": "UniFormer-B"}


def model_config(name: str, args) -> VivitConfig:
    common = dict(img_size=args.size, num_frames=args.frames, num_classes=400)
    if name.startswith("uniformer_") and name != "uniformer_head":
        return VivitConfig(family="uniformer", preset=name, **common)
    if name == "uniformer_head":
        return VivitConfig(family="uniformer_head", preset=args.preset, **common)
    return VivitConfig(variant=int(name), preset=args.preset, **common)


def timed(fn, steps: int, device) -> float:
    ts = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_s")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["1", "2", "3", "4", "uniformer_head",
                                                   "uniformer_s"], choices=list(NAMES))
    add_results_arg(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randint(0, 256, (args.batch, 3, args.frames, args.size, args.size),
                      dtype=torch.uint8, device=device)
    y = torch.zeros(args.batch, dtype=torch.long, device=device)
    rows = {}
    for name in args.models:
        torch.manual_seed(0)
        m = build_model(model_config(name, args)).to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

        def train_step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.cross_entropy(m(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def infer():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                                 enabled=dtype != torch.float32):
                m(x)
        m.train()
        t_train = timed(train_step, args.steps, device)
        m.eval()
        t_infer = timed(infer, args.steps, device)
        rows[name] = {"params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                         "train_clips_s": round(args.batch / t_train, 3),
                         "infer_clips_s": round(args.batch / t_infer, 3),
                         "infer_ms_per_clip": round(1000 * t_infer / args.batch, 1)}

    print(f"\nViT {args.preset} (ViViT, UniFormer head), {args.frames}x{args.size}^2, tubelet "
          f"2x16x16; UniFormer published stem; batch "
          f"{args.batch}, {device.type} {str(dtype).split('.')[-1]}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<38} {'params M':>9} {'train clips/s':>14} {'infer clips/s':>14} "
          f"{'ms/clip':>8}")
    for v, r in rows.items():
        print(f"{NAMES[v]:<38} {r['params_m']:9.2f} {r['train_clips_s']:14.3f} "
              f"{r['infer_clips_s']:14.3f} {r['infer_ms_per_clip']:8.1f}")
    tables = Tables("vivit", args.results, device=args.device)
    tables.add(f"vivit_{device.type}", f"ViT {args.preset} (ViViT, UniFormer head), {args.frames}x{args.size}^2, "
               f"tubelet 2x16x16; UniFormer published stem; batch {args.batch}, {device.type} "
               f"{str(dtype).split('.')[-1]}, {torch.get_num_threads()} threads",
               ["model", "params M", "train clips/s", "inference clips/s", "inference ms/clip"],
               [[NAMES[v], r["params_m"], r["train_clips_s"], r["infer_clips_s"],
                 r["infer_ms_per_clip"]] for v, r in rows.items()])
    tables.save()
    print(json.dumps({"bench": "vivit", "preset": args.preset, "frames": args.frames,
                      "size": args.size, "batch": args.batch, "device": device.type,
                      "models": rows}))


if __name__ == "__main__":
    main()
