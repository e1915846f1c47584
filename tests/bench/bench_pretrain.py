"""Pre-training step time: ours vs transformers' VideoMAEForPreTraining (eager and sdpa).

Same geometry, same weights, same mask; one step = forward + backward + AdamW step, fp32 on the
CPU (bf16 with --device cuda, where model FLOPs utilisation is reported too).

    python tests/bench/bench_pretrain.py [--preset vit_s] [--batch 2] [--steps 5]

Prints a table and one JSON line.
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

from data.masks import running_cell_mask, tube_mask  # noqa: E402
from pretrain.convert import ours_to_hf  # noqa: E402
from pretrain.model import ModelConfig, VideoMAE  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16


def hf_model(ours: VideoMAE, impl: str):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining
    c = ours.cfg
    cfg = VideoMAEConfig(
        image_size=c.img_size, patch_size=c.patch_size, num_channels=c.in_chans,
        num_frames=c.num_frames, tubelet_size=c.tubelet_size, hidden_size=c.embed_dim,
        num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        intermediate_size=int(c.mlp_ratio * c.embed_dim),
        decoder_hidden_size=c.decoder_embed_dim, decoder_num_hidden_layers=c.decoder_depth,
        decoder_num_attention_heads=c.decoder_num_heads,
        decoder_intermediate_size=int(c.mlp_ratio * c.decoder_embed_dim),
        use_mean_pooling=False, layer_norm_eps=c.norm_eps, norm_pix_loss=True,
        hidden_act="gelu", attn_implementation=impl)
    m = VideoMAEForPreTrainingWrapper(VideoMAEForPreTraining(cfg))
    m.inner.load_state_dict(ours_to_hf(ours.state_dict()), strict=False)
    return m


class VideoMAEForPreTrainingWrapper(torch.nn.Module):
    """Same call as ours: uint8 (B, C, T, H, W) + mask -> loss; normalises like ours."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1))

    def forward(self, video, mask):
        x = (video.permute(0, 2, 1, 3, 4).float() / 255 - self.mean) / self.std
        return {"loss": self.inner(x.to(self.inner.dtype), bool_masked_pos=mask).loss}


def time_steps(model, video, mask, steps: int, device, dtype, decode=None) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    out = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = (model(video, mask) if decode is None else model(video, mask, decode))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            out.append(time.perf_counter() - t0)
    return out


def train_flops(cfg, batch: int, visible: int, hidden: int) -> float:
    """Matmul FLOPs of one training step (x3 for forward + backward)."""
    def blocks(d, depth, n):
        return depth * (24 * n * d * d + 4 * n * n * d)
    n = visible + hidden
    fwd = 2 * (visible + hidden) * cfg.patch_dim * cfg.embed_dim / 2  # patch embedding (all)
    fwd += blocks(cfg.embed_dim, cfg.depth, visible) + blocks(cfg.decoder_embed_dim,
                                                               cfg.decoder_depth, n)
    fwd += 2 * hidden * cfg.decoder_embed_dim * cfg.patch_dim
    return 3 * fwd * batch


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_s")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    ours = VideoMAE(ModelConfig(preset=args.preset, predict_stats=False)).to(device)
    cfg = ours.cfg
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (args.batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size),
                          dtype=torch.uint8, generator=g).to(device)
    mask = tube_mask(args.batch, cfg.grid, args.ratio, g).to(device)
    decode = running_cell_mask(mask.cpu(), cfg.grid, 0.5, g).to(device)
    results = {}
    for name, build, dec in [("hf_eager", lambda: hf_model(ours, "eager"), None),
                             ("hf_sdpa", lambda: hf_model(ours, "sdpa"), None),
                             ("ours", lambda: ours, None),
                             ("ours_decmask", lambda: ours, decode)]:
        model = build().to(device).train()
        times = time_steps(model, video, mask, args.steps, device, dtype, dec)
        results[name] = statistics.median(times)
        del model
    hidden = int(mask[0].sum())
    flops = train_flops(cfg, args.batch, cfg.num_patches - hidden, hidden)
    print(f"\npre-training step, {args.preset}, {cfg.num_frames}x{cfg.img_size}^2, batch "
          f"{args.batch}, mask {args.ratio}, {device.type} {str(dtype).split('.')[-1]}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<14} {'s/step':>8} {'clips/s':>8} {'x eager':>8} {'x sdpa':>8}")
    for name, t in results.items():
        print(f"{name:<14} {t:8.3f} {args.batch / t:8.2f} {t / results['hf_eager']:8.2f} "
              f"{t / results['hf_sdpa']:8.2f}")
    print("ours_decmask: VideoMAEv2 decoder masking (running cell, 50% of hidden tokens "
          "decoded), a different objective; the other rows compute the same loss.")
    line = {"bench": "pretrain", "preset": args.preset, "batch": args.batch,
            "device": device.type, "s_per_step": {k: round(v, 4) for k, v in results.items()},
            "ours_vs_eager": round(results["ours"] / results["hf_eager"], 3),
            "ours_vs_sdpa": round(results["ours"] / results["hf_sdpa"], 3),
            "ours_decmask_vs_eager": round(results["ours_decmask"] / results["hf_eager"], 3),
            "ours_decmask_vs_sdpa": round(results["ours_decmask"] / results["hf_sdpa"], 3),
            "train_gflop_per_step": round(flops / 1e9, 1)}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if peak:
            line["mfu"] = {k: round(flops / v / (peak * 1e12), 3) for k, v in results.items()}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
