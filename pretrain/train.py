"""The pre-training loop: stream -> VideoMAE -> engine, with checkpoints, resume and logs.

One call of ``train(cfg)`` runs on every rank. A run folder that already holds a checkpoint is
resumed from ``latest``: weights, optimizer, schedule position, RNG and the data stream's
position, so the resumed run sees the same batches and computes the same losses as one that was
never interrupted.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from einops import rearrange

from data.clips import check_stride
from data.memory import check_batch_memory
from data.prep.medmnist import resolve_shards
from data.masks import token_ids
from data.stream import batch_to_device
from .config import PretrainConfig, to_dict
from .export import export_encoder
from .model import VideoMAE, initial_model
from .runtime.distributed import barrier, init_distributed, shutdown
from .runtime.engine import read_model_weights
from .runtime.loop import (Loop, NonFiniteLoss, Stage, StopRequested,  # noqa: F401
                           open_run, report_stopped, run_locked, train_loop)
from .runtime.optim import cosine_lr, param_groups, peak_lr
from .runtime.reshard import fit_to_checkpoint
from .runtime.resume import check_resume_config


def picture(model: VideoMAE, video: torch.Tensor, mask: torch.Tensor, out: dict,
            decode_mask: torch.Tensor | None, max_frames: int = 8) -> np.ndarray:
    """First clip of the batch as three rows (input / masked input / reconstruction) of frames:
    (H, W, 3) uint8."""
    cfg = model.cfg
    v, m = video[:1], mask[:1]
    one = {k: t[:1] for k, t in out.items() if torch.is_tensor(t) and t.ndim == 3}
    rec = model.reconstruct(v, m, one, None if decode_mask is None else decode_mask[:1])
    _, pixels = model.normalize(v)
    t, h, w = cfg.num_frames // cfg.tubelet_size, v.shape[3] // cfg.patch_size, \
        v.shape[4] // cfg.patch_size
    hidden = rearrange(m.float(), "b (t h w) -> b 1 t h w", t=t, h=h, w=w)
    hidden = hidden.repeat_interleave(cfg.tubelet_size, 2).repeat_interleave(
        cfg.patch_size, 3).repeat_interleave(cfg.patch_size, 4)
    masked = pixels * (1 - hidden) + 0.35 * hidden
    rows = torch.cat([pixels, masked, rec.float()], 0)               # (3, C, T, H, W)
    if rows.shape[1] == 1:
        rows = rows.expand(-1, 3, -1, -1, -1)
    step = max(1, rows.shape[2] // max_frames)
    rows = rows[:, :, ::step]
    grid = rearrange(rows, "r c t h w -> (r h) (t w) c")
    return (grid.clamp(0, 1) * 255).round().byte().cpu().numpy()


def _to_device(batch: dict, device: torch.device, size: int | None) -> dict:
    """The batch on the device, plus ``ids``: the visible and reconstructed token numbers,
    computed here on the host from the masks (so the model never has to read a count back)."""
    out = batch_to_device(batch, device, size)
    if "mask" in batch:
        out["ids"] = tuple(i.to(device, non_blocking=True)
                           for i in token_ids(batch["mask"], batch.get("decode_mask")))
    return out


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pre-training; returns a summary dict (rank 0's view)."""
    cfg.data.check()
    check_stride(cfg.data)
    check_batch_memory(cfg.data, cfg.model.in_chans)
    dist = init_distributed(cfg.runtime.device, cfg.runtime.comm_timeout)
    return run_locked(cfg.run.dir, dist, lambda stop: _train(cfg, dist, stop))


class PretrainStage(Stage):
    """Pre-training's part of the loop: the masked-reconstruction loss, the logged epoch and
    target-statistics loss, the reconstruction picture and the checkpoint cadence."""

    def __init__(self, cfg: PretrainConfig, engine, stream, logger, dist, peak_lr: float):
        self.cfg, self.engine, self.stream, self.logger, self.dist = cfg, engine, stream, \
            logger, dist
        self.peak_lr = peak_lr
        self.last = None

    def forward(self, batch: dict):
        out = self.engine(batch["video"], batch["mask"], batch.get("decode_mask"),
                          ids=batch["ids"])
        self.last = (batch, out)
        return out["loss"], out["recon_loss"], batch["video"].shape[0]

    def scalars(self) -> dict:
        extra = {"epoch": self.stream.epoch}
        if "stats_loss" in self.last[1]:
            extra["stats_loss"] = float(self.last[1]["stats_loss"].detach())
        return extra

    def end_of_step(self, step: int):
        every = self.cfg.log.picture_every
        if every and step % every == 0 and self.dist.is_main:
            b, o = self.last
            self.logger.image("reconstruction", step, picture(
                self.engine.module, b["video"], b["mask"], o, b.get("decode_mask")))
        due = step % self.cfg.train.ckpt_every == 0 or step == self.cfg.train.steps
        return (f"step{step:08d}" if due else None), False

    def client_state(self) -> dict:
        return {"peak_lr": self.peak_lr}


def _train(cfg: PretrainConfig, dist, stop: StopRequested) -> dict:
    run_dir = cfg.run.dir
    cfg.data.shards = resolve_shards(cfg.data.shards, os.path.join(run_dir, "data"),
                                     dist.is_main, lambda: barrier(dist))
    check_resume_config(run_dir, to_dict(cfg))
    fit_to_checkpoint(cfg, dist, "pretrain")
    model = initial_model(cfg.model, cfg.run.seed)
    total_batch = cfg.data.batch_size * cfg.runtime.grad_accum * dist.world_size
    lr = peak_lr(cfg.optim, total_batch)
    run = open_run(cfg, model, param_groups(model, cfg.optim.weight_decay), dist,
                   lambda raw: _to_device(raw, dist.device, cfg.data.size))
    engine, stream, ckpt, client, step = run.engine, run.stream, run.ckpt, run.client, run.step
    if dist.is_main:
        what = f"resuming {run_dir} at step {step} ({client['tag']})" if client \
            else f"new run in {run_dir}"
        print(f"pretrain: {what}; {dist.world_size} process(es) on {dist.where}, engine "
              f"{engine.name}, precision {engine.precision}, batch {cfg.data.batch_size} "
              f"x accum {cfg.runtime.grad_accum} x {dist.world_size} = {total_batch}, peak lr "
              f"{lr:.3g}, data.decode {run.decode}", file=sys.stderr)
    loop = Loop("pretrain", cfg.train.steps,
                lambda s: cosine_lr(s, cfg.train.steps, lr, cfg.optim.warmup_steps,
                                    cfg.optim.min_lr),
                cfg.runtime.grad_accum, cfg.log.every, cfg.train.max_nonfinite,
                cfg.log.progress, "lower optim.base_lr, set runtime.grad_clip, or check the data")
    stage = PretrainStage(cfg, engine, stream, run.logger, dist, lr)
    result = train_loop(loop, stage, run, dist, stop)
    run.logger.close()
    step, stopped = result.step, result.stopped
    summary = {"step": step, "run_dir": run_dir, "nonfinite_total": result.stats.total,
               "stopped_by_signal": bool(stopped)}
    if stopped:
        report_stopped("pretrain", result, ckpt, dist)
        shutdown()
        return summary
    tag = ckpt.latest_tag() or (client and client["tag"])  # latest may name a lost tag
    if cfg.train.export and dist.is_main:
        stop.notice = "pretrain: finishing the export first; Ctrl-C again to stop now"
        weights = read_model_weights(ckpt.dir, tag)
        summary["export"] = export_encoder(weights, model.cfg, os.path.join(run_dir, "export"),
                                           {"run_dir": os.path.abspath(run_dir), "step": step,
                                            "checkpoint": tag})
        print(f"pretrain: done at step {step}; encoder exported to {summary['export']}",
              file=sys.stderr)
    if dist.is_main:
        print(result.totals.summary(step, os.path.join(ckpt.dir, tag or ""),
                                    summary.get("export")), file=sys.stderr)
    # every rank leaves together: a rank that tore its process group down while rank 0 still
    # exported aborted at exit now and then (gloo: "terminate called without an active
    # exception", exit -6)
    barrier(dist)
    shutdown()
    return summary
