"""Pre-training step time: ours vs transformers' VideoMAEForPreTraining (eager and sdpa).

Same geometry, same weights, same mask; one step = forward + backward + fused AdamW step, fp32
on the CPU (bf16 autocast with --device cuda, where model FLOPs utilisation is reported too).
Optional rows: ``--compile`` (torch.compile), several ``--batch`` sizes, and ``--engines`` (the
step through our plain engine and DeepSpeed ZeRO-0/1/2, what ``python -m pretrain`` runs).

    python tests/bench/bench_pretrain.py [--preset vit_s] [--batch 2] [--steps 5]
    python tests/bench/bench_pretrain.py --device cuda --preset vit_b --batch 32 64 128 \\
        --compile --engines

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

from tests.bench.report import Tables, add_results_arg  # noqa: E402
from data.masks import running_cell_mask, token_ids, tube_mask  # noqa: E402
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


def time_steps(step, steps: int, device) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step()`` after three warm-up calls (compiling
    happens there)."""
    out = []
    for i in range(steps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            out.append(time.perf_counter() - t0)
    return out


def profile(name: str, step, device, steps: int = 3):
    """Top kernels of a few steps, by time on the device (the CPU on a CPU run)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {name}, {steps} steps:", file=sys.stderr)
    print(prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60),
          file=sys.stderr)


def model_step(model, video, mask, device, dtype, decode=None, ids=None, compiled=None):
    """One training step of a bare model: forward under autocast, backward, fused AdamW;
    ``compiled``: a torch.compile mode (None: eager)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    if compiled is not None:
        torch._dynamo.reset()  # each mode compiles afresh
    fwd = model if compiled is None else torch.compile(
        model, dynamic=False, **({} if compiled == "default" else {"mode": compiled}))

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if ids is None:
                loss = fwd(video, mask)["loss"]
            else:
                loss = fwd(video, mask, decode, ids=ids)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def engine_step(kind: str, cfg: ModelConfig, video, mask, ids, device, precision: str,
                compiled: str | None, zero_stage: int):
    """One step through our runtime's engine (what ``python -m pretrain`` runs)."""
    from pretrain.config import OptimConfig, RuntimeConfig
    from pretrain.runtime.distributed import init_distributed
    from pretrain.runtime.engine import build_engine
    from pretrain.runtime.optim import param_groups
    torch.manual_seed(0)
    model = VideoMAE(cfg)
    rt = RuntimeConfig(engine=kind, precision=precision, compile=compiled is not None,
                       compile_mode=compiled or "default", zero_stage=zero_stage,
                       device=device.type)
    engine = build_engine(model, param_groups(model, 0.05), OptimConfig(), rt,
                          init_distributed(device.type), video.shape[0])
    engine.set_lr(1e-4)

    def step():
        out = engine(video, mask, None, ids=ids)
        engine.backward(out["loss"])
        engine.step()
    return step, engine


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
    ap.add_argument("--batch", type=int, nargs="+", default=[2],
                    help="batch sizes of our rows (the first one for the transformers rows)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows")
    ap.add_argument("--compile-mode", nargs="+", default=["default"],
                    choices=["default", "max-autotune-no-cudagraphs"],
                    help="torch.compile modes of the compiled rows (the engine rows use the "
                         "last)")
    ap.add_argument("--engines", action="store_true",
                    help="add rows through our engines: plain vs DeepSpeed ZeRO-0/1/2 at the "
                         "largest batch (compiled when --compile)")
    ap.add_argument("--no-hf", action="store_true", help="leave out the transformers rows")
    ap.add_argument("--profile", nargs="*", default=[], metavar="ROW",
                    help="print the top device kernels of these rows (torch.profiler)")
    add_results_arg(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    ours = VideoMAE(ModelConfig(preset=args.preset, predict_stats=False)).to(device)
    cfg = ours.cfg
    g = torch.Generator().manual_seed(0)

    def inputs(batch):
        video = torch.randint(0, 256, (batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size),
                              dtype=torch.uint8, generator=g)
        mask = tube_mask(batch, cfg.grid, args.ratio, g)
        decode = running_cell_mask(mask, cfg.grid, 0.5, g)
        ids = tuple(i.to(device) for i in token_ids(mask))
        dec_ids = tuple(i.to(device) for i in token_ids(mask, decode))
        return video.to(device), mask.to(device), decode.to(device), ids, dec_ids

    rows = []   # (name, batch, seconds per step)

    def measure(name, batch, step):
        try:
            t = statistics.median(time_steps(step, args.steps, device))
        except torch.OutOfMemoryError:
            print(f"{name} batch {batch}: out of memory", file=sys.stderr)
            return
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((name, batch, t))
        print(f"  {name:<22} batch {batch:4d}: {t:.4f} s/step, {batch / t:.1f} clips/s",
              file=sys.stderr, flush=True)
        if name in args.profile:
            profile(name, step, device)

    b0 = args.batch[0]
    video, mask, decode, ids, dec_ids = inputs(b0)
    if not args.no_hf:
        for impl in ("eager", "sdpa"):
            m = hf_model(ours, impl).to(device).train()
            measure(f"hf_{impl}", b0, model_step(m, video, mask, device, dtype))
            del m
    measure("ours_decmask", b0, model_step(ours, video, mask, device, dtype, decode, dec_ids))
    for batch in args.batch:
        video, mask, decode, ids, _ = inputs(batch)
        measure("ours", batch, model_step(ours, video, mask, device, dtype, ids=ids))
        for mode in args.compile_mode if args.compile else ():
            name = "ours_compiled" + ("" if mode == "default" else "_autotune")
            measure(name, batch, model_step(ours, video, mask, device, dtype, ids=ids,
                                            compiled=mode))
    if args.engines:
        batch = args.batch[-1]
        video, mask, _, ids, _ = inputs(batch)
        del ours
        for kind, stage in (("plain", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2)):
            step, engine = engine_step(kind, cfg, video, mask, ids, device, precision,
                                       args.compile_mode[-1] if args.compile else None, stage)
            measure(f"engine_{kind}" + (f"_zero{stage}" if kind == "deepspeed" else ""),
                    batch, step)
            del step, engine
    hidden = int(mask[0].sum())

    def flops(batch):
        return train_flops(cfg, batch, cfg.num_patches - hidden, hidden)
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"\npre-training step, {args.preset}, {cfg.num_frames}x{cfg.img_size}^2, mask "
          f"{args.ratio}, {device.type} {precision}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, {torch.get_num_threads()} threads")
    ref = {name: t / b for name, b, t in rows if name in ("hf_eager", "hf_sdpa")}
    print(f"{'row':<24} {'batch':>5} {'s/step':>8} {'clips/s':>9} {'x eager':>8} {'x sdpa':>8}"
          + (f" {'MFU':>6}" if peak else ""))
    for name, b, t in rows:
        per_clip = t / b
        line = f"{name:<24} {b:5d} {t:8.4f} {b / t:9.1f}"
        line += "".join(f" {per_clip / ref[k]:8.2f}" if k in ref else f" {'':>8}"
                        for k in ("hf_eager", "hf_sdpa"))
        if peak:
            line += f" {flops(b) / t / (peak * 1e12):6.1%}"
        print(line)
    print("x eager / x sdpa: time per clip relative to transformers at the first batch size. "
          "ours_decmask: VideoMAEv2 decoder masking (half the hidden tokens decoded), another "
          "objective; the other rows compute the same loss.")
    line = {"bench": "pretrain", "preset": args.preset, "device": device.type,
            "precision": precision, "torch": torch.__version__,
            "rows": [{"name": n, "batch": b, "s_per_step": round(t, 5),
                      "clips_per_s": round(b / t, 2),
                      **({"mfu": round(flops(b) / t / (peak * 1e12), 4)} if peak else {})}
                     for n, b, t in rows],
            "train_gflop_per_clip": round(flops(1) / 1e9, 1)}
    tables = Tables("pretrain", args.results, device=args.device)
    columns = ["row", "batch", "s/step", "clips/s", "x eager", "x sdpa"] + (["MFU"] if peak else [])
    tables.add(f"pretrain_step_{device.type}",
               f"Pre-training step, {args.preset}, {cfg.num_frames}x{cfg.img_size}^2, mask "
               f"{args.ratio}, {device.type} {precision}, {torch.get_num_threads()} threads; x "
               f"eager / x sdpa: time per clip against transformers' VideoMAE at batch {b0}; "
               f"ours_decmask: decoder masking (half the hidden tokens decoded), another "
               f"objective", columns,
               [[n, b, round(t, 4), round(b / t, 1),
                 *[round(t / b / ref[k], 2) if k in ref else None for k in ("hf_eager", "hf_sdpa")],
                 *([f"{flops(b) / t / (peak * 1e12):.1%}"] if peak else [])] for n, b, t in rows])
    tables.save()
    print(json.dumps(line))


if __name__ == "__main__":
    main()
