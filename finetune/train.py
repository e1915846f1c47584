"""The fine-tuning loop: ViViT, UniFormer or the UniFormer-armed encoder (``model.family``) on a
prepared folder with train/val/test splits.

Reuses the pre-training runtime (engines, checkpoints and exact resume, TensorBoard and
metrics.jsonl). Evaluates on val after every epoch, keeps the best checkpoint by the validation
metric (AUC for volumes, top-1 for videos), runs the test split on it, and writes
``run.dir/report.json`` with every metric, the config and the init used.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from data.atomic import write_text_atomic
from data.manifest import DataSetError, has_splits, load_shard_set, resolve_shards
from data.nvdec import resolve_decode
from data.stream import EvalStream, StreamConfig, TrainStream, batch_to_device
from pretrain.config import (LogConfig, OptimConfig, RunConfig, RuntimeConfig, dump_yaml,
                             to_dict)
from pretrain.runtime.checkpoint import Checkpointer, RunDirLock
from pretrain.runtime.distributed import (all_gather_objects, all_reduce_max, all_reduce_mean,
                                          barrier, init_distributed, shutdown)
from pretrain.runtime.engine import build_engine
from pretrain.runtime.logger import MetricsLogger
from pretrain.runtime.optim import cosine_lr, param_groups, scaled_lr
from pretrain.train import (KILL_AFTER_STEP, StepStats, StopRequested, as_scalar,
                            check_resume_config, duration, memory_mb)
from .evaluate import confusion_picture, per_class, summarize
from .init import init_from, report_counts, resolve_norm_layout
from .models import build_model, describe, layer_decay_scale
from .vivit import VivitConfig


@dataclass
class FinetuneRunConfig(RunConfig):
    init: str = ""                    # encoder / checkpoint to start from; "" = from scratch
    kernel_init: str = "auto"         # 2D kernels -> 3D: central | average | auto (central
                                      # for an image ViT, average for an image UniFormer)
    init_partial: bool = False        # allow an init that fits less than half of the encoder


@dataclass
class FinetuneOptimConfig(OptimConfig):
    base_lr: float = 5e-4             # per 256 clips
    betas: tuple = (0.9, 0.999)
    warmup_epochs: float = 5.0
    layer_decay: float = 0.75         # lr x decay^(layers above); 1 = off
    label_smoothing: float = 0.1
    mixup: float = 0.0                # timm Mixup alpha (0.8 in the K400 recipe)
    cutmix: float = 0.0               # timm CutMix alpha (1.0 in the K400 recipe)


@dataclass
class FinetuneTrainConfig:
    epochs: int = 10
    keep_last: int = 1                # checkpoints kept besides the best
    max_nonfinite: int = 5


@dataclass
class FinetuneConfig:
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    data: StreamConfig = field(default_factory=lambda: StreamConfig(mask="none", flip=True))
    model: VivitConfig = field(default_factory=VivitConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)


def config_from_cli(config: str, init: str | None, overrides) -> "FinetuneConfig":
    """A fine-tuning config from ``--config``, ``--init`` (``none`` = from scratch) and
    ``section.key=value`` overrides: what ``python -m finetune`` and ``finetune.probe`` take."""
    from pretrain.config import load_config
    overrides = list(overrides)
    if init is not None:
        overrides.append(f"run.init={'' if init.lower() == 'none' else init}")
    return load_config(config, overrides, schema=FinetuneConfig)


def _check_splits(shards: str):
    if os.path.isdir(shards) and not has_splits(shards):
        raise DataSetError(f"{shards} has no train/val/test splits; fine-tuning needs all three "
                           f"(prep writes them for MedMNIST, the synthetic set, and Kinetics "
                           f"CSVs / split lists)")


def _check(cfg: FinetuneConfig, classes: int):
    if cfg.data.num_frames != cfg.model.num_frames:
        raise ValueError(f"data.num_frames={cfg.data.num_frames} but model.num_frames="
                         f"{cfg.model.num_frames}; set both to the same value")
    if cfg.data.size is not None and cfg.data.size != cfg.model.img_size:
        raise ValueError(f"data.size={cfg.data.size} but model.img_size={cfg.model.img_size}")
    if (cfg.optim.mixup > 0 or cfg.optim.cutmix > 0) and cfg.data.batch_size % 2:
        raise ValueError("mixup/cutmix pair samples within a batch: data.batch_size must be even")
    if cfg.model.head_norm == "batch" and cfg.data.batch_size < 2:
        raise ValueError("model.head_norm=batch standardises over the batch: data.batch_size "
                         "must be at least 2 (or use model.head_norm=layer)")
    if cfg.model.num_classes not in (0, classes):
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the data has {classes} "
                         f"classes; set model.num_classes=0 to take it from the data")


def evaluate(engine, cfg: FinetuneConfig, split: str, dist, clips: int, crops: int,
             kind: str) -> dict:
    """Every sample of ``split`` once across ranks, ``clips x crops`` views, softmax-averaged."""
    data = replace(cfg.data, test_clips=clips, test_crops=crops, mask="none")
    stream = EvalStream(data, split, dist.rank, dist.world_size)
    engine.train(False)
    idx, logits, labels = [], [], []
    with torch.no_grad():
        for batch in stream:
            out = engine(batch["video"].to(dist.device))
            idx.append(batch["index"].numpy())
            logits.append(out.float().cpu().numpy())
            labels.append(batch["label"].numpy())
    engine.train(True)
    parts = all_gather_objects((np.concatenate(idx) if idx else np.zeros(0, np.int64),
                                np.concatenate(logits) if logits else None,
                                np.concatenate(labels) if labels else np.zeros(0, np.int64)),
                               dist)
    parts = [p for p in parts if p[1] is not None]
    return summarize(kind, np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]),
                     np.concatenate([p[2] for p in parts]))


def _mixup(cfg: FinetuneConfig, num_classes: int):
    if cfg.optim.mixup <= 0 and cfg.optim.cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=cfg.optim.mixup, cutmix_alpha=cfg.optim.cutmix,
                 label_smoothing=cfg.optim.label_smoothing, num_classes=num_classes)


def train(cfg: FinetuneConfig) -> dict:
    """Fine-tune (or resume), evaluate, test the best checkpoint; returns the report."""
    dist = init_distributed(cfg.runtime.device)
    lock = RunDirLock(cfg.run.dir, dist.is_main)  # one command per run folder
    try:
        return _train(cfg, dist)
    finally:
        lock.release()


def _train(cfg: FinetuneConfig, dist) -> dict:
    t_start = time.time()
    cfg.data = replace(cfg.data, mask="none")
    cfg.data.check()
    cfg.data.shards = resolve_shards(cfg.data.shards, os.path.join(cfg.run.dir, "data"),
                                     dist.is_main, lambda: barrier(dist))
    _check_splits(cfg.data.shards)
    train_set = load_shard_set(cfg.data.shards, "train")
    _check(cfg, train_set.num_classes)
    if cfg.model.num_classes == 0:
        cfg.model = replace(cfg.model, num_classes=train_set.num_classes)
    cfg.model = resolve_norm_layout(cfg.model, cfg.run.init)
    run_dir = cfg.run.dir
    check_resume_config(run_dir, cfg)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    init_report = None
    if cfg.run.init:
        init_report = init_from(model, cfg.run.init, cfg.run.kernel_init,
                                verbose=dist.is_main, allow_partial=cfg.run.init_partial)
    decay = layer_decay_scale(model, cfg.optim.layer_decay) \
        if cfg.optim.layer_decay < 1 else None
    total_batch = cfg.data.batch_size * cfg.runtime.grad_accum * dist.world_size
    steps_per_epoch = max(1, math.ceil(train_set.num_samples * cfg.data.repeats / total_batch))
    total_steps = steps_per_epoch * cfg.train.epochs
    peak_lr = cfg.optim.lr if cfg.optim.lr is not None else scaled_lr(cfg.optim.base_lr,
                                                                      total_batch)
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch) or cfg.optim.warmup_steps
    engine = build_engine(model, param_groups(model, cfg.optim.weight_decay, decay), cfg.optim,
                          cfg.runtime, dist, cfg.data.batch_size)
    stream = TrainStream(replace(cfg.data, decode=resolve_decode(cfg.data.decode, dist.device)),
                         dist.rank, dist.world_size, shard_set=train_set,
                         pin_memory=dist.device.type == "cuda")
    ckpt = Checkpointer(run_dir, dist, cfg.train.keep_last)
    mixup = _mixup(cfg, train_set.num_classes)
    kind = train_set.kind
    client, batches = ckpt.resume(engine, stream,
                                  lambda: dump_yaml(cfg, os.path.join(run_dir, "config.yaml")))
    step, history, best = (client["step"], client["history"], client["best"]) if client \
        else (0, [], None)
    ckpt.protect = {best["tag"]} if best else set()
    logger = MetricsLogger(run_dir, dist.is_main, resume_step=step if client else None)
    if dist.is_main:
        what = f"resuming at step {step}" if client else "new run"
        print(f"finetune: {what} in {run_dir}: {describe(model)}, {dist.world_size} "
              f"process(es) on {dist.device.type}, engine {engine.name}, precision "
              f"{engine.precision}, {train_set.num_samples} training samples, "
              f"{steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs, peak lr "
              f"{peak_lr:.3g}, init {cfg.run.init or 'none (from scratch)'}", file=sys.stderr)
    stats, t_epoch = StepStats(dist.device, client.get("nonfinite_total", 0) if client
                               else 0), time.time()
    stats.load_window(client and client.get("log_window"))
    t_window, wait_window, clips_window, t_run, step0 = time.time(), 0.0, 0, time.time(), step
    stopped = None
    engine.train(True)
    with StopRequested() as stop:
        while step < total_steps:
            engine.set_lr(cosine_lr(step, total_steps, peak_lr, warmup, cfg.optim.min_lr))
            for _ in range(cfg.runtime.grad_accum):
                t0 = time.time()
                batch = batch_to_device(next(batches), dist.device, cfg.data.size)
                wait_window += time.time() - t0
                clips_window += batch["video"].shape[0] * dist.world_size
                x, y = batch["video"], batch["label"]
                if mixup is not None:
                    x, y = mixup(engine.module.normalize(x).float(), y)
                logits = engine(x)
                if mixup is not None:
                    loss = torch.sum(-y * F.log_softmax(logits.float(), -1), -1).mean()
                else:
                    loss = F.cross_entropy(logits.float(), y,
                                           label_smoothing=cfg.optim.label_smoothing)
                # A non-finite loss is not waited for: the engine skips that step's update on
                # the device, and the count is read at the next log step.
                engine.backward(loss)
                engine.step()
                stats.add_loss(loss)
            stats.add_step(engine.nonfinite.skipped)
            step += 1
            if step % cfg.log.every == 0:
                mean_loss, nonfinite_total, in_row = stats.read()
                if in_row >= cfg.train.max_nonfinite:
                    raise RuntimeError(f"the loss was NaN or inf {in_row} times in a row (up to "
                                       f"step {step}); stopping (last checkpoint "
                                       f"{ckpt.latest_tag()} is intact). Lower optim.base_lr")
                dt = max(time.time() - t_window, 1e-9)
                row = {"loss": all_reduce_mean(mean_loss, dist),
                       "nonfinite_total": nonfinite_total,
                       "lr": max(g["lr"] for g in engine.optimizer.param_groups),
                       "grad_norm": as_scalar(engine.grad_norm),
                       "clips_per_s": clips_window / dt, "data_wait": wait_window / dt,
                       "memory_mb": memory_mb(dist.device),
                       "skipped_samples": sum(stream.skipped)}
                logger.scalars(step, row)
                if dist.is_main:
                    eta = (time.time() - t_run) / (step - step0) * (total_steps - step)
                    print(f"step {step}/{total_steps} loss {row['loss']:.4f} lr "
                          f"{row['lr']:.3g} clips/s {row['clips_per_s']:.1f} data-wait "
                          f"{100 * row['data_wait']:.0f}% eta {duration(eta)}",
                          file=sys.stderr)
                t_window, wait_window, clips_window = time.time(), 0.0, 0
            if all_reduce_max([float(stop.signum is not None)], dist)[0] > 0:
                stopped = stop.signum
                break
            if step % steps_per_epoch == 0:
                epoch = step // steps_per_epoch
                val = evaluate(engine, cfg, "val", dist, 1, 1, kind)
                row = {"epoch": epoch, "step": step, "wall_s": round(time.time() - t_epoch, 2),
                       **{k: v for k, v in val.items() if k != "confusion"}}
                history.append(row)
                t_epoch = t_window = time.time()  # the evaluation is not training time
                tag = f"epoch{epoch:04d}"
                if best is None or val["primary"] > best["primary"]:
                    best = {**row, "tag": tag}
                ckpt.protect = {best["tag"]}
                ckpt.save_run(engine, tag, {"step": step, "history": history, "best": best,
                                            "log_window": stats.window(),
                                            "nonfinite_total": stats.total}, stream)
                logger.scalars(step, {k: v for k, v in row.items()
                                      if isinstance(v, (int, float))}, prefix="val")
                logger.image("val/confusion", step, confusion_picture(
                    np.array(val["confusion"]), train_set.classes,
                    f"validation, epoch {epoch}: rows true, columns predicted"))
                if dist.is_main:
                    print(f"finetune: epoch {epoch}/{cfg.train.epochs} val acc {val['acc']:.4f} "
                          f"auc {val['auc']:.4f} top1 {val['top1']:.4f} "
                          f"(best epoch {best['epoch']})", file=sys.stderr)
            if os.environ.get(KILL_AFTER_STEP) == str(step):  # fault injection (tests)
                logger.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    if stopped:
        if step % steps_per_epoch:  # mid-epoch: save where we are
            ckpt.save_run(engine, f"step{step:08d}", {"step": step, "history": history,
                                                      "best": best, "log_window": stats.window(),
                                                      "nonfinite_total": stats.total}, stream)
        logger.close()
        if dist.is_main:
            print(f"finetune: stopped by signal {stopped} at step {step}; run the same command "
                  f"to resume", file=sys.stderr)
        shutdown()
        return {"stopped_by_signal": True, "step": step}
    engine.load(ckpt.dir, best["tag"])
    test = evaluate(engine, cfg, "test", dist, cfg.data.test_clips, cfg.data.test_crops, kind)
    logger.image("test/confusion", step, confusion_picture(
        np.array(test["confusion"]), train_set.classes,
        f"test ({test['samples']} samples, best epoch {best['epoch']}): rows true, columns "
        f"predicted"))
    test["per_class"] = per_class(np.array(test["confusion"]), train_set.classes)
    logger.close()
    report = {"run_dir": os.path.abspath(run_dir), "task": kind,
              "classes": train_set.classes, "init": cfg.run.init or None,
              "init_report": report_counts(init_report),
              "model": dataclasses.asdict(model.cfg), "best": best, "history": history,
              "test": test, "wall_s": round(time.time() - t_start, 2),
              "config": to_dict(cfg)}
    if dist.is_main:
        write_text_atomic(os.path.join(run_dir, "report.json"),
                          json.dumps(report, indent=1, default=json_default))
        print(f"finetune: best epoch {best['epoch']} (val {best['primary']:.4f}); test acc "
              f"{test['acc']:.4f} auc {test['auc']:.4f} top1 {test['top1']:.4f} top5 "
              f"{test['top5']:.4f}; report in {run_dir}/report.json", file=sys.stderr)
    shutdown()
    return report


def json_default(o):
    """numpy scalars and tuples as JSON (``json.dumps(..., default=json_default)``)."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))
