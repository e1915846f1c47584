"""The pre-training loop: stream -> VideoMAE -> engine, with checkpoints, resume and logs.

One call of ``train(cfg)`` runs on every rank. A run folder that already holds a checkpoint is
resumed from ``latest``: weights, optimizer, schedule position, RNG and the data stream's
position, so the resumed run sees the same batches and computes the same losses as one that was
never interrupted.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import signal
import sys
import time

import numpy as np
import torch
import yaml
from einops import rearrange

from data.manifest import resolve_shards
from data.masks import token_ids
from data.nvdec import resolve_decode
from data.prefetch import Prefetcher
from data.stream import TrainStream, batch_to_device
from .config import PretrainConfig, dump_yaml, to_dict
from .export import export_encoder
from .model import VideoMAE, initial_model
from .runtime.checkpoint import Checkpointer, RunDirLock
from .runtime.distributed import (all_reduce_max, all_reduce_mean, barrier, init_distributed,
                                  shutdown)
from .runtime.engine import build_engine, read_model_weights
from .runtime.logger import MetricsLogger
from .runtime.optim import cosine_lr, param_groups, scaled_lr

# Sections a resumed run may change; anything else must match the run's config.yaml.
RESUMABLE_CHANGES = ("train", "log")
# Keys a resumed run may change: where videos are decoded changes no clip's frames or crop.
RESUMABLE_KEYS = ("data.decode",)
# Paths compared by what they point at (a relative path, a/../b, a trailing slash, ~); run.dir
# is not compared at all: the folder holding config.yaml is the run, moved or copied.
PATH_KEYS = ("data.shards", "run.init")
# Fault injection for the resume tests: the process SIGKILLs itself right after finishing this
# optimizer step (and any checkpoint due at it), as `kill -9` or a pre-empted node would.
KILL_AFTER_STEP = "TUBEMAE_KILL_AFTER_STEP"


class NonFiniteLoss(RuntimeError):
    pass


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary.
    A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def check_geometry(cfg: PretrainConfig):
    """The data section and the model section must describe the same clip and token grid."""
    pairs = [("data.num_frames", cfg.data.num_frames, "model.num_frames", cfg.model.num_frames),
             ("data.tubelet", cfg.data.tubelet, "model.tubelet_size", cfg.model.tubelet_size),
             ("data.patch", cfg.data.patch, "model.patch_size", cfg.model.patch_size)]
    if cfg.data.size is not None:
        pairs.append(("data.size", cfg.data.size, "model.img_size", cfg.model.img_size))
    for a, va, b, vb in pairs:
        if va != vb:
            raise ValueError(f"{a}={va} but {b}={vb}: the clips and the model disagree; set both "
                             f"to the same value")


def check_resume_config(run_dir: str, cfg: PretrainConfig):
    """Refuse to resume a run with settings that would make it a different run."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    now = to_dict(cfg)
    diffs = []
    for section, values in now.items():
        if section in RESUMABLE_CHANGES or not isinstance(values, dict):
            continue
        for k, v in values.items():
            old = saved.get(section, {}).get(k)
            if f"{section}.{k}" == "run.dir" or f"{section}.{k}" in RESUMABLE_KEYS:
                continue
            if f"{section}.{k}" in PATH_KEYS and isinstance(v, str) and isinstance(old, str) \
                    and _same_path(old, v):
                continue
            if old != v:
                diffs.append(f"{section}.{k}: {old!r} -> {v!r}")
    if diffs:
        raise ValueError(f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); "
                         f"resume with the settings of {path}, or choose a new run.dir")


def _same_path(a: str, b: str) -> bool:
    if not a or not b:
        return a == b
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


class StepStats:
    """What the loop logs, accumulated on the device between log steps, so that training
    steps never wait for the device: losses of finite steps, skipped (non-finite) steps, and
    the current run of skipped steps in a row."""

    def __init__(self, device: torch.device, nonfinite_total: int = 0):
        zero = torch.zeros((), device=device)
        self.loss_sum, self.loss_count = zero.clone(), zero.clone()
        self.skipped, self.in_row = zero.clone(), zero.clone()
        self.base_total = nonfinite_total

    def add_loss(self, loss: torch.Tensor):
        loss = loss.detach().float()
        ok = torch.isfinite(loss)
        self.loss_sum += torch.where(ok, loss, 0.0)
        self.loss_count += ok

    def add_step(self, skipped: torch.Tensor | None):
        if skipped is None:
            return
        skipped = skipped.to(self.skipped.device)
        self.skipped += skipped
        self.in_row = (self.in_row + skipped) * skipped

    def read(self) -> tuple[float, int, int]:
        """(mean loss of the finite steps since the last read, skipped steps in all, skipped
        in a row now); waits for the device."""
        n = float(self.loss_count)
        loss = float(self.loss_sum) / n if n else float("nan")
        self.loss_sum.zero_()
        self.loss_count.zero_()
        return loss, self.base_total + int(self.skipped), int(self.in_row)

    @property
    def total(self) -> int:
        return self.base_total + int(self.skipped)

    def window(self) -> list[float]:
        """The losses summed since the last log step, for the checkpoint: a resumed run then
        logs the same mean at its first log step as the uninterrupted run."""
        return [float(self.loss_sum), float(self.loss_count)]

    def load_window(self, window: list[float] | None):
        if window:
            self.loss_sum.fill_(window[0])
            self.loss_count.fill_(window[1])


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pre-training; returns a summary dict (rank 0's view)."""
    cfg.data.check()
    check_geometry(cfg)
    dist = init_distributed(cfg.runtime.device)
    lock = RunDirLock(cfg.run.dir, dist.is_main)  # one command per run folder
    try:
        # Installed for the whole run: a signal during start-up stops after the first step,
        # one after the last step lets the export finish; never a death mid-write.
        with StopRequested() as stop:
            return _train(cfg, dist, stop)
    finally:
        lock.release()


def _train(cfg: PretrainConfig, dist, stop: StopRequested) -> dict:
    run_dir = cfg.run.dir
    cfg.data.shards = resolve_shards(cfg.data.shards, os.path.join(run_dir, "data"),
                                     dist.is_main, lambda: barrier(dist))
    check_resume_config(run_dir, cfg)
    model = initial_model(cfg.model, cfg.run.seed)
    total_batch = cfg.data.batch_size * cfg.runtime.grad_accum * dist.world_size
    peak_lr = cfg.optim.lr if cfg.optim.lr is not None else scaled_lr(cfg.optim.base_lr,
                                                                      total_batch)
    engine = build_engine(model, param_groups(model, cfg.optim.weight_decay), cfg.optim,
                          cfg.runtime, dist, cfg.data.batch_size)
    decode = resolve_decode(cfg.data.decode, dist.device)
    stream = TrainStream(dataclasses.replace(cfg.data, decode=decode), dist.rank,
                         dist.world_size,
                         pin_memory=dist.device.type == "cuda")
    ckpt = Checkpointer(run_dir, dist, cfg.train.keep_last)
    client, batches = ckpt.resume(engine, stream,
                                  lambda: dump_yaml(cfg, os.path.join(run_dir, "config.yaml")))

    def prepare(raw: dict) -> dict:
        return _to_device(raw, dist.device, cfg.data.size)
    # On a GPU (and with nvdec) batches are readied on a thread while the device trains;
    # `position` is what checkpoints save: the stream's position after the last batch
    # trained on.
    if decode == "nvdec" or dist.device.type == "cuda":
        feed = position = Prefetcher(batches, stream, prepare, dist.device)
    else:
        feed, position = map(prepare, batches), stream
    tag = client and client["tag"]
    step, nonfinite_total = (client["step"], client["nonfinite_total"]) if client else (0, 0)
    logger = MetricsLogger(run_dir, dist.is_main, resume_step=step if tag else None)
    if dist.is_main:
        what = f"resuming {run_dir} at step {step} ({tag})" if tag else f"new run in {run_dir}"
        print(f"pretrain: {what}; {dist.world_size} process(es) on {dist.device.type}, engine "
              f"{engine.name}, precision {engine.precision}, batch {cfg.data.batch_size} "
              f"x accum {cfg.runtime.grad_accum} x {dist.world_size} = {total_batch}, peak lr "
              f"{peak_lr:.3g}, data.decode {decode}", file=sys.stderr)

    stats = StepStats(dist.device, nonfinite_total)
    stats.load_window(client and client.get("log_window"))

    def save(at_step: int):
        ckpt.save_run(engine, f"step{at_step:08d}", {"step": at_step, "nonfinite_total":
                                                     stats.total, "peak_lr": peak_lr,
                                                     "log_window": stats.window()}, position)

    bar = None
    if dist.is_main and cfg.log.progress and sys.stderr.isatty():
        # a bar for a terminal; a file (SLURM, nohup) gets a step line at every log step
        from tqdm import tqdm
        bar = tqdm(total=cfg.train.steps, initial=step, desc="pretrain", unit="step",
                   dynamic_ncols=True, file=sys.stderr)
    run = RunTotals(step)
    engine.train()
    last_saved = step if tag else -1
    t_window, wait_window, clips_window = time.perf_counter(), 0.0, 0
    stopped = None
    last = None
    try:
        while step < cfg.train.steps:
            lr = cosine_lr(step, cfg.train.steps, peak_lr, cfg.optim.warmup_steps,
                           cfg.optim.min_lr)
            engine.set_lr(lr)
            for _ in range(cfg.runtime.grad_accum):
                t0 = time.perf_counter()
                batch = next(feed)
                wait_window += time.perf_counter() - t0
                out = engine(batch["video"], batch["mask"], batch.get("decode_mask"),
                             ids=batch["ids"])
                # A non-finite loss is not waited for here: the engine skips that step's
                # update on the device, and the count is read at the next log step.
                engine.backward(out["loss"])
                engine.step()
                stats.add_loss(out["recon_loss"])
                clips_window += batch["video"].shape[0]
                last = (batch, out)
            stats.add_step(engine.nonfinite.skipped)
            step += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.log.every == 0 or step == cfg.train.steps:
                loss, nonfinite_total, in_row = stats.read()
                dt = time.perf_counter() - t_window
                loss = all_reduce_mean(loss, dist)
                scalars = {"loss": loss, "lr": lr, "grad_norm": as_scalar(engine.grad_norm),
                           "clips_per_s": clips_window * dist.world_size / dt,
                           "data_wait": wait_window / dt, "memory_mb": memory_mb(dist.device),
                           "nonfinite_total": nonfinite_total, "epoch": stream.epoch,
                           "skipped_samples": sum(stream.skipped)}
                if "stats_loss" in last[1]:
                    scalars["stats_loss"] = float(last[1]["stats_loss"].detach())
                logger.scalars(step, scalars)
                run.add(step, loss, clips_window * dist.world_size, wait_window, dt)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                elif dist.is_main:
                    print(f"step {step}/{cfg.train.steps} loss {loss:.4f} lr {lr:.3g} "
                          f"clips/s {scalars['clips_per_s']:.1f} data-wait "
                          f"{100 * scalars['data_wait']:.0f}% eta "
                          f"{duration(run.eta(step, cfg.train.steps))}", file=sys.stderr)
                if in_row and dist.is_main:
                    print(f"pretrain: non-finite loss; {in_row} step(s) in a row up to step "
                          f"{step} left the weights unchanged ({nonfinite_total} in all)",
                          file=sys.stderr)
                if in_row >= cfg.train.max_nonfinite:
                    last_tag = ckpt.latest_tag()
                    raise NonFiniteLoss(
                        f"the loss was NaN or inf {in_row} times in a row (up to step {step});"
                        f" stopping. The last good checkpoint ({last_tag or 'none yet'}) is "
                        f"intact. Lower optim.base_lr, set runtime.grad_clip, or check the data")
                clips_window, wait_window = 0, 0.0
                t_window = time.perf_counter()
            if cfg.log.picture_every and step % cfg.log.picture_every == 0 and dist.is_main:
                b, o = last
                logger.image("reconstruction", step, picture(
                    engine.module, b["video"], b["mask"], o, b.get("decode_mask")))
            if all_reduce_max([float(stop.signum is not None)], dist)[0] > 0:
                stopped = stop.signum or signal.SIGTERM
                break
            if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
                save(step)
                last_saved = step
            if os.environ.get(KILL_AFTER_STEP) == str(step):
                logger.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        if stopped and last_saved != step:
            save(step)
    finally:
        if isinstance(feed, Prefetcher):
            feed.close()
    if bar is not None:
        bar.close()
    logger.close()
    summary = {"step": step, "run_dir": run_dir, "nonfinite_total": stats.total,
               "stopped_by_signal": bool(stopped)}
    if stopped:
        if dist.is_main:
            print(run.summary(step, os.path.join(ckpt.dir, ckpt.latest_tag() or ""), None),
                  file=sys.stderr)
            print(f"pretrain: stopped by signal {stopped}; checkpoint saved at step {step}. "
                  f"Run the same command to resume.", file=sys.stderr)
        shutdown()
        return summary
    tag = ckpt.latest_tag() or (client and client["tag"])  # latest may name a lost tag
    if cfg.train.export and dist.is_main:
        weights = read_model_weights(ckpt.dir, tag)
        summary["export"] = export_encoder(weights, model.cfg, os.path.join(run_dir, "export"),
                                           {"run_dir": os.path.abspath(run_dir), "step": step,
                                            "checkpoint": tag})
        print(f"pretrain: done at step {step}; encoder exported to {summary['export']}",
              file=sys.stderr)
    if dist.is_main:
        print(run.summary(step, os.path.join(ckpt.dir, tag or ""), summary.get("export")),
              file=sys.stderr)
    shutdown()
    return summary


class RunTotals:
    """What this process's part of a run did, for the ETA and the closing summary."""

    def __init__(self, start_step: int):
        self.start_step, self.t0 = start_step, time.perf_counter()
        self.clips, self.wait, self.busy = 0, 0.0, 0.0
        self.first = self.last = self.best = None

    def add(self, step: int, loss: float, clips: int, wait: float, dt: float):
        self.clips, self.wait, self.busy = self.clips + clips, self.wait + wait, self.busy + dt
        if loss == loss:  # not NaN
            self.first = self.first or (step, loss)
            self.last = (step, loss)
            if self.best is None or loss < self.best[1]:
                self.best = (step, loss)

    def eta(self, step: int, total: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.t0) / done * (total - step) if done else 0.0

    def summary(self, step: int, checkpoint: str, export: str | None) -> str:
        wall = time.perf_counter() - self.t0
        parts = [f"pretrain: summary: steps {self.start_step}->{step} in {duration(wall)}",
                 f"{self.clips / max(self.busy, 1e-9):.1f} clips/s",
                 f"data wait {100 * self.wait / max(self.busy, 1e-9):.0f}%"]
        if self.last:
            parts.append(f"loss {self.first[1]:.4f} (step {self.first[0]}) -> "
                         f"{self.last[1]:.4f} (step {self.last[0]}), best {self.best[1]:.4f} "
                         f"(step {self.best[0]})")
        parts.append(f"checkpoint {checkpoint}")
        if export:
            parts.append(f"export {export}")
        return "; ".join(parts)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def as_scalar(value) -> float | None:
    """A logged scalar from a device tensor, a float or None (read at log steps only)."""
    return None if value is None else float(value)


def exit_code(summary: dict) -> int:
    return 143 if summary.get("stopped_by_signal") else 0

