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
import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from data.atomic import write_text_atomic
from data.clips import check_stride
from data.memory import check_batch_memory
from data.manifest import load_shard_set
from data.prep.medmnist import resolve_shards
from data.stream import batch_to_device
from pretrain.runtime.config import to_dict
from pretrain.runtime.distributed import (all_gather_objects, barrier, init_distributed,
                                          shutdown)
from pretrain.runtime.loop import (Loop, Stage, StopRequested, open_run, report_stopped,
                                   run_locked, train_loop)
from pretrain.runtime.optim import cosine_lr, param_groups, peak_lr
from pretrain.runtime.reshard import fit_to_checkpoint
from pretrain.runtime.resume import check_resume_config
from .config import FinetuneConfig, check_recipe, check_splits, config_from_cli  # noqa: F401
from .evaluate import confusion_picture, per_class, stream_outputs, summarize
from .init import init_from, report_counts, resolve_norm_layout, take_export_geometry
from .models import build_model, describe, describe_layer_decay, layer_decay_scale

_check_splits = check_splits        # the name older callers use


def evaluate(engine, cfg: FinetuneConfig, split: str, dist, clips: int, crops: int,
             kind: str) -> dict:
    """Every sample of ``split`` once across ranks, ``clips x crops`` views, softmax-averaged."""
    data = replace(cfg.data, test_clips=clips, test_crops=crops, mask="none")
    engine.train(False)
    part = stream_outputs(lambda video: engine(video.to(dist.device)), data, split,
                          rank=dist.rank, world_size=dist.world_size)
    engine.train(True)
    parts = [p for p in all_gather_objects(part, dist) if p[1] is not None]
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
    check_stride(cfg.data)
    check_batch_memory(cfg.data, cfg.model.in_chans)
    dist = init_distributed(cfg.runtime.device, cfg.runtime.comm_timeout)
    return run_locked(cfg.run.dir, dist, lambda stop: _train(cfg, dist, stop))


class FinetuneStage(Stage):
    """Fine-tuning's part of the loop: cross-entropy (with mixup/cutmix when set); at each
    epoch's end, validation, the history, the best epoch and that epoch's checkpoint."""

    def __init__(self, cfg: FinetuneConfig, engine, dist, logger, ckpt, classes: list[str],
                 kind: str, steps_per_epoch: int, mixup, client: dict | None):
        self.cfg, self.engine, self.dist, self.logger, self.ckpt = cfg, engine, dist, logger, \
            ckpt
        self.classes, self.kind, self.steps_per_epoch, self.mixup = classes, kind, \
            steps_per_epoch, mixup
        self.history, self.best = (client["history"], client["best"]) if client else ([], None)
        self._protect_best()
        self.t_epoch = time.time()

    def _protect_best(self):
        """The best epoch's checkpoint is never rotated away (kept besides keep_last)."""
        self.ckpt.protect = {self.best["tag"]} if self.best else set()

    def forward(self, batch: dict):
        x, y = batch["video"], batch["label"]
        if self.mixup is not None:
            x, y = self.mixup(self.engine.module.normalize(x).float(), y)
        logits = self.engine(x)
        if self.mixup is not None:
            loss = torch.sum(-y * F.log_softmax(logits.float(), -1), -1).mean()
        else:
            loss = F.cross_entropy(logits.float(), y,
                                   label_smoothing=self.cfg.optim.label_smoothing)
        return loss, loss, batch["video"].shape[0]

    def end_of_step(self, step: int):
        if step % self.steps_per_epoch:
            return None, False
        cfg, dist = self.cfg, self.dist
        epoch = step // self.steps_per_epoch
        val = evaluate(self.engine, cfg, "val", dist, 1, 1, self.kind)
        row = {"epoch": epoch, "step": step, "wall_s": round(time.time() - self.t_epoch, 2),
               **{k: v for k, v in val.items() if k != "confusion"}}
        self.history.append(row)
        self.t_epoch = time.time()
        tag = f"epoch{epoch:04d}"
        if self.best is None or val["primary"] > self.best["primary"]:
            self.best = {**row, "tag": tag}
        self._protect_best()
        self.logger.scalars(step, {k: v for k, v in row.items()
                                   if isinstance(v, (int, float))}, prefix="val")
        self.logger.image("val/confusion", step, confusion_picture(
            np.array(val["confusion"]), self.classes,
            f"validation, epoch {epoch}: rows true, columns predicted"))
        if dist.is_main:
            by = "auc" if self.kind == "volume" else "top1"     # what picks the best epoch
            print(f"finetune: epoch {epoch}/{cfg.train.epochs} val acc {val['acc']:.4f} "
                  f"auc {val['auc']:.4f} top1 {val['top1']:.4f} "
                  f"(best epoch {self.best['epoch']} by val {by})", file=sys.stderr)
        return tag, True

    def client_state(self) -> dict:
        return {"history": self.history, "best": self.best}


def _train(cfg: FinetuneConfig, dist, stop: StopRequested) -> dict:
    t_start = time.time()
    cfg = take_export_geometry(cfg, verbose=dist.is_main)
    cfg.data = replace(cfg.data, mask="none")
    cfg.data.check()
    cfg.data.shards = resolve_shards(cfg.data.shards, os.path.join(cfg.run.dir, "data"),
                                     dist.is_main, lambda: barrier(dist))
    check_splits(cfg.data.shards)
    train_set = load_shard_set(cfg.data.shards, "train")
    check_recipe(cfg, train_set.num_classes)
    if cfg.model.num_classes == 0:
        cfg.model = replace(cfg.model, num_classes=train_set.num_classes)
    cfg.model = resolve_norm_layout(cfg.model, cfg.run.init)
    run_dir = cfg.run.dir
    check_resume_config(run_dir, to_dict(cfg))
    fit_to_checkpoint(cfg, dist, "finetune")
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
    lr = peak_lr(cfg.optim, total_batch)
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch) or cfg.optim.warmup_steps
    run = open_run(cfg, model, param_groups(model, cfg.optim.weight_decay, decay), dist,
                   lambda raw: batch_to_device(raw, dist.device, cfg.data.size),
                   shard_set=train_set)
    engine, ckpt, client, logger, step = run.engine, run.ckpt, run.client, run.logger, run.step
    if dist.is_main:
        what = f"resuming at step {step}" if client else "new run"
        print(f"finetune: {what} in {run_dir}: {describe(model)}, {dist.world_size} "
              f"process(es) on {dist.where}, engine {engine.name}, precision "
              f"{engine.precision}, {train_set.num_samples} training samples, "
              f"{steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs, peak lr "
              f"{lr:.3g}, init {cfg.run.init or 'none (from scratch)'}", file=sys.stderr)
        if decay is not None:
            print(f"finetune: layer-wise lr decay {cfg.optim.layer_decay:g}: "
                  f"{describe_layer_decay(model, cfg.optim.layer_decay)}", file=sys.stderr)
    stage = FinetuneStage(cfg, engine, dist, logger, ckpt, train_set.classes, train_set.kind,
                          steps_per_epoch, _mixup(cfg, train_set.num_classes), client)
    loop = Loop("finetune", total_steps,
                lambda s: cosine_lr(s, total_steps, lr, warmup, cfg.optim.min_lr),
                cfg.runtime.grad_accum, cfg.log.every, cfg.train.max_nonfinite,
                cfg.log.progress, "lower optim.base_lr or optim.lr, or check the data")
    result = train_loop(loop, stage, run, dist, stop)
    step, best = result.step, stage.best
    if result.stopped:
        logger.close()
        report_stopped("finetune", result, ckpt, dist)
        shutdown()
        return {"stopped_by_signal": True, "step": step}
    engine.load(ckpt.dir, best["tag"])
    if dist.is_main:
        stop.notice = "finetune: finishing the test first; Ctrl-C again to stop now"
    test = evaluate(engine, cfg, "test", dist, cfg.data.test_clips, cfg.data.test_crops,
                    train_set.kind)
    logger.image("test/confusion", step, confusion_picture(
        np.array(test["confusion"]), train_set.classes,
        f"test ({test['samples']} samples, best epoch {best['epoch']}): rows true, columns "
        f"predicted"))
    test["per_class"] = per_class(np.array(test["confusion"]), train_set.classes)
    logger.close()
    report = {"run_dir": os.path.abspath(run_dir), "task": train_set.kind,
              "classes": train_set.classes, "init": cfg.run.init or None,
              "init_report": report_counts(init_report),
              "model": dataclasses.asdict(model.cfg), "best": best, "history": stage.history,
              "test": test, "wall_s": round(time.time() - t_start, 2),
              "config": to_dict(cfg)}
    if dist.is_main:
        write_text_atomic(os.path.join(run_dir, "report.json"),
                          json.dumps(report, indent=1, default=json_default))
        print(result.totals.summary(step, os.path.join(ckpt.dir, best["tag"])),
              file=sys.stderr)
        metric = "auc" if train_set.kind == "volume" else "top1"     # what chose the epoch
        print(f"finetune: best epoch {best['epoch']} (val {metric} {best['primary']:.4f}); "
              f"test acc {test['acc']:.4f} auc {test['auc']:.4f} top1 {test['top1']:.4f} top5 "
              f"{test['top5']:.4f}; report in {run_dir}/report.json", file=sys.stderr)
    barrier(dist)         # every rank leaves together (see pretrain.train)
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
