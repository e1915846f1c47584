"""Engines: one object owns the wrapped model, backward, optimizer step, save and load.

``PlainEngine`` is a single process with torch AdamW (a laptop, a test, one GPU);
``DeepSpeedEngine`` runs ZeRO 0-3 with bf16/fp16/fp32 and gradient accumulation. Both take the
same AdamW parameter groups (so betas, eps and weight decay are ours, never silently replaced)
and expose the same methods, so the training loops never ask which one they have. This is the
only module that imports deepspeed.
"""
from __future__ import annotations

import contextlib
import glob
import os
import socket

import torch
from torch import nn

from .distributed import Dist

PLAIN_STATE = "plain_state.pt"


def _adamw(groups, optim_cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


def _check_precision(precision: str, device: torch.device):
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"runtime.precision must be fp32, bf16 or fp16, not {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("runtime.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")


class PlainEngine:
    name = "plain"

    def __init__(self, model: nn.Module, groups: list, optim_cfg, runtime_cfg, dist: Dist):
        _check_precision(runtime_cfg.precision, dist.device)
        self.module = model.to(dist.device)
        self.device = dist.device
        self.optimizer = _adamw(groups, optim_cfg)
        self.accum = runtime_cfg.grad_accum
        self.clip = runtime_cfg.grad_clip
        self.precision = runtime_cfg.precision
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.micro_steps = 0
        self.grad_norm: float | None = None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, *args, **kwargs):
        with self.autocast():
            return self.module(*args, **kwargs)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def backward(self, loss: torch.Tensor):
        loss = loss / self.accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.micro_steps += 1

    def step(self) -> bool:
        """Optimizer step at an accumulation boundary; returns whether one was taken."""
        if self.micro_steps % self.accum:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip > 0 else float("inf"))
        self.grad_norm = float(norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def set_lr(self, lr: float):
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def save(self, ckpt_dir: str, tag: str, client_state: dict):
        path = os.path.join(ckpt_dir, tag)
        os.makedirs(path, exist_ok=True)
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None,
                 "micro_steps": self.micro_steps, "client_state": client_state}
        tmp = os.path.join(path, PLAIN_STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(path, PLAIN_STATE))

    def load(self, ckpt_dir: str, tag: str) -> dict:
        path = os.path.join(ckpt_dir, tag, PLAIN_STATE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: the checkpoint was written by another "
                                    f"engine (runtime.engine) or is incomplete")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.micro_steps = state["micro_steps"]
        return state["client_state"]


def deepspeed_config(runtime_cfg, micro_batch: int, world_size: int) -> dict:
    """The DeepSpeed JSON, generated from the runtime section (never kept by hand)."""
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": runtime_cfg.grad_accum,
        "train_batch_size": micro_batch * runtime_cfg.grad_accum * world_size,
        "zero_optimization": {"stage": runtime_cfg.zero_stage},
        "bf16": {"enabled": runtime_cfg.precision == "bf16"},
        "fp16": {"enabled": runtime_cfg.precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if runtime_cfg.grad_clip > 0:
        cfg["gradient_clipping"] = runtime_cfg.grad_clip
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeepSpeedEngine:
    name = "deepspeed"

    def __init__(self, model: nn.Module, groups: list, optim_cfg, runtime_cfg, dist: Dist,
                 micro_batch: int):
        import deepspeed

        _check_precision(runtime_cfg.precision, dist.device)
        if runtime_cfg.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"runtime.zero_stage must be 0-3, not {runtime_cfg.zero_stage}")
        if dist.world_size == 1:  # a world of one still needs a process group for DeepSpeed
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        deepspeed.init_distributed(dist_backend="nccl" if dist.device.type == "cuda" else "gloo")
        self.config = deepspeed_config(runtime_cfg, micro_batch, dist.world_size)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model.to(dist.device), optimizer=_adamw(groups, optim_cfg), config=self.config)
        self.module = self.engine.module
        self.device = dist.device
        self.grad_norm: float | None = None

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def train(self, mode: bool = True):
        self.engine.train(mode)

    def backward(self, loss: torch.Tensor):
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = None if norm is None else float(norm)
        return boundary

    def set_lr(self, lr: float):
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def save(self, ckpt_dir: str, tag: str, client_state: dict):
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state,
                                    save_latest=False)

    def load(self, ckpt_dir: str, tag: str) -> dict:
        path, client_state = self.engine.load_checkpoint(ckpt_dir, tag=tag)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {ckpt_dir}/{tag}: it was "
                                    f"written by another engine (runtime.engine) or is incomplete")
        return client_state or {}


def build_engine(model: nn.Module, groups: list, optim_cfg, runtime_cfg, dist: Dist,
                 micro_batch: int):
    kind = runtime_cfg.engine
    if kind == "auto":
        kind = "deepspeed" if dist.world_size > 1 else "plain"
    if kind == "plain":
        if dist.world_size > 1:
            raise ValueError("runtime.engine=plain is single-process; use deepspeed (or auto) "
                             "under torchrun or the deepspeed launcher")
        return PlainEngine(model, groups, optim_cfg, runtime_cfg, dist)
    if kind == "deepspeed":
        return DeepSpeedEngine(model, groups, optim_cfg, runtime_cfg, dist, micro_batch)
    raise ValueError(f"runtime.engine must be auto, plain or deepspeed, not {kind!r}")


def read_model_weights(ckpt_dir: str, tag: str) -> dict:
    """Full fp32 model weights from a checkpoint of either engine, in one process (export)."""
    path = os.path.join(ckpt_dir, tag)
    plain = os.path.join(path, PLAIN_STATE)
    if os.path.isfile(plain):
        return torch.load(plain, map_location="cpu", weights_only=False)["model"]
    if glob.glob(os.path.join(path, "*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with contextlib.redirect_stdout(None):
            sd = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
        return {k: v.float() for k, v in sd.items()}
    states = sorted(glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")))
    if not states:
        raise FileNotFoundError(f"{path} holds no model weights")
    sd = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in sd.items()}
