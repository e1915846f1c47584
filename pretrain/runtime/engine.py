"""Engines: one object owns the wrapped model, backward, optimizer step, save and load.

``PlainEngine`` is a single process with torch AdamW (a laptop, a test, one GPU);
``DeepSpeedEngine`` runs ZeRO 0-3 with bf16/fp16/fp32 and gradient accumulation. Both take the
same AdamW parameter groups (so betas, eps and weight decay are ours, never silently replaced)
and expose the same methods, so the training loops never ask which one they have. This is the
only module that imports deepspeed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import socket
import sys

import torch
from torch import nn

from .checkpoint import load_checkpoint_file, save_file_or_explain
from .distributed import Dist
from .reshard import (PLAIN_STATE, load_into_copies, load_into_partitions,
                      load_into_torch_optimizer, read_full_state, saved_layout)


def _names(model: nn.Module, groups: list) -> tuple[list, dict]:
    """Each AdamW group's parameter names, in order, and every parameter's shape: what a
    checkpoint of another layout is cut again by (``reshard``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return ([g.get("names") or [names.get(id(p), f"group{i}.{j}")
                                for j, p in enumerate(g["params"])]
             for i, g in enumerate(groups)],
            {n: p.shape for n, p in model.named_parameters()})


def _load_full(module: nn.Module, full) -> None:
    """The weights of a ``FullState`` into ``module``: fp32 master weights for parameters (not
    a bf16 copy), the saved buffers."""
    module.load_state_dict({**full.weights, **full.master})


def _adamw(groups, optim_cfg) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA): one launch for all parameters, and it takes the
    # ``found_inf`` flag on the device, so a step with a non-finite loss is skipped without the
    # host ever waiting for the device.
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                             fused=True)


class _NonFinite:
    """Tracks, on the device, whether the losses of the current optimizer step were finite.
    ``skipped`` is the flag of the last step (a 0-d float tensor: 1 = its update was skipped)."""

    def __init__(self):
        self.pending = None
        self.skipped = None

    def loss(self, loss: torch.Tensor):
        bad = (~torch.isfinite(loss.detach())).float()
        self.pending = bad if self.pending is None else torch.maximum(self.pending, bad)

    def flag(self, grad_norm: torch.Tensor | None) -> torch.Tensor:
        """The flag for this step (a bad loss or a non-finite gradient norm); resets."""
        flag = self.pending if self.pending is not None else torch.zeros(())
        if grad_norm is not None and torch.is_tensor(grad_norm):
            bad = (~torch.isfinite(grad_norm.detach().float())).float()
            flag = torch.maximum(flag.to(bad.device), bad)
        self.pending, self.skipped = None, flag
        return flag


def compile_kwargs(runtime_cfg) -> dict:
    """``runtime.compile``: the whole model through torch.compile with static shapes (the
    training batch keeps its shape; the masks arrive as index tensors of fixed length)."""
    mode = runtime_cfg.compile_mode
    return {"dynamic": False, **({} if mode == "default" else {"mode": mode})}


def _compile(module: nn.Module, runtime_cfg):
    return torch.compile(module, **compile_kwargs(runtime_cfg)) if runtime_cfg.compile \
        else module


CPUINFO = "/proc/cpuinfo"
FAST_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# Test-only: what ``auto`` resolves to on a CPU, whatever the CPU says (bf16 or fp32). The suite
# is run once each way to show that no test depends on the CPU it runs on.
AUTO_PRECISION_ENV = "TUBEMAE_TEST_AUTO_PRECISION"


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """AMX or AVX512-BF16 in the ``flags`` line of ``cpuinfo`` (default: this machine's), what
    makes bf16 matmuls faster than fp32 on a CPU; False where the file cannot be read."""
    try:
        with open(cpuinfo or CPUINFO) as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return bool(FAST_BF16_FLAGS & set(flags))


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """``auto`` -> bf16 where the device runs it fast (CUDA with bf16; a CPU with AMX or
    AVX512-BF16), fp32 elsewhere. An explicit bf16 on a CPU without them runs, with a warning."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        forced = os.environ.get(AUTO_PRECISION_ENV)
        if forced:
            if forced not in ("bf16", "fp32"):
                raise ValueError(f"{AUTO_PRECISION_ENV}={forced!r}: use bf16 or fp32 (or unset it)")
            return forced
        return "bf16" if cpu_has_fast_bf16(cpuinfo) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16(cpuinfo) and \
            os.environ.get("RANK", "0") == "0":  # one line per run, not per rank
        print("warning: runtime.precision=bf16 on a CPU without AMX or AVX512-BF16 runs bf16 "
              "in software, many times slower than fp32; use runtime.precision=auto or fp32 "
              "here", file=sys.stderr)
    return precision


def _check_precision(precision: str, device: torch.device):
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"runtime.precision must be fp32, bf16 or fp16, not {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("runtime.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")


class PlainEngine:
    name = "plain"

    def __init__(self, model: nn.Module, groups: list, optim_cfg, runtime_cfg, dist: Dist):
        _check_precision(runtime_cfg.precision, dist.device)
        self.group_names, self.shapes = _names(model, groups)
        self.module = model.to(dist.device)
        self.device = dist.device
        self.optimizer = _adamw(groups, optim_cfg)
        self.accum = runtime_cfg.grad_accum
        self.clip = runtime_cfg.grad_clip
        self.precision = runtime_cfg.precision
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.micro_steps = 0
        self.grad_norm: torch.Tensor | None = None   # of the last step, on the device
        self.nonfinite = _NonFinite()
        self.forward = _compile(self.module, runtime_cfg)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, *args, **kwargs):
        with self.autocast():
            return self.forward(*args, **kwargs)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def backward(self, loss: torch.Tensor):
        self.nonfinite.loss(loss)
        loss = loss / self.accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.micro_steps += 1

    def step(self) -> bool:
        """Optimizer step at an accumulation boundary; returns whether one was taken. A step
        whose loss or gradient norm is not finite leaves weights and optimizer state as they
        were (``nonfinite.skipped`` says so), decided on the device."""
        if self.micro_steps % self.accum:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self.grad_norm = norm.detach()
        skip = self.nonfinite.flag(norm)
        if self.scaler:  # fp16: the scaler skips steps with inf/NaN gradients itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.found_inf = skip
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
        save_file_or_explain(state, os.path.join(path, PLAIN_STATE))

    def load(self, ckpt_dir: str, tag: str) -> dict:
        path = os.path.join(ckpt_dir, tag, PLAIN_STATE)
        if not os.path.isfile(path):     # written by DeepSpeed, on any number of processes
            full = read_full_state(os.path.join(ckpt_dir, tag), self.group_names, self.shapes)
            _load_full(self.module, full)
            load_into_torch_optimizer(self.optimizer, full, self.group_names)
            self.micro_steps = 0
            return full.client
        state = load_checkpoint_file(path, self.device)
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
        # No overflow check: it reads a flag back from the device every step. Our fused AdamW
        # skips a non-finite step on the device instead (fp16 keeps DeepSpeed's loss scaler).
        "bf16": {"enabled": runtime_cfg.precision == "bf16", "check_grad_overflow": False},
        "fp16": {"enabled": runtime_cfg.precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronises the device around every step; the loop
        # measures clips/s itself.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
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
        self.group_names, self.shapes = _names(model, groups)
        self.adamw = _adamw(groups, optim_cfg)
        self.precision = runtime_cfg.precision
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model.to(dist.device), optimizer=self.adamw, config=self.config)
        if runtime_cfg.compile:
            self.engine.compile(compile_kwargs=compile_kwargs(runtime_cfg))
        self.module = self.engine.module
        self.device = dist.device
        self.world_size, self.rank = dist.world_size, dist.rank
        self.grad_norm: torch.Tensor | float | None = None
        # DeepSpeed computes the global norm itself except with fp32 ZeRO-0 and no clipping;
        # there the gradients are whole in .grad and we take it (on the device, no wait).
        self.own_norm = runtime_cfg.zero_stage == 0 and runtime_cfg.precision == "fp32" and \
            runtime_cfg.grad_clip <= 0
        self.nonfinite = _NonFinite()

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def train(self, mode: bool = True):
        self.engine.train(mode)

    def backward(self, loss: torch.Tensor):
        self.nonfinite.loss(loss)
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary:
            # DeepSpeed ends in our fused AdamW, which skips the update on the device when
            # the step's loss was not finite (bf16/fp32 have no loss scaler to do it). Every
            # rank must skip together: the flag is reduced on the device, no host wait.
            flag = self.nonfinite.flag(None).to(self.device)
            if self.world_size > 1:
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.adamw.found_inf = flag
            if self.own_norm:
                grads = [p.grad for p in self.module.parameters() if p.grad is not None]
                own = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) \
                    if grads else None
        self.engine.step()
        if boundary:
            self.grad_norm = own if self.own_norm else self.engine.get_global_grad_norm()
        return boundary

    def set_lr(self, lr: float):
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def save(self, ckpt_dir: str, tag: str, client_state: dict):
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state,
                                    save_latest=False)

    def load(self, ckpt_dir: str, tag: str) -> dict:
        folder = os.path.join(ckpt_dir, tag)
        engine, processes = saved_layout(folder)
        if (engine, processes) != ("deepspeed", self.world_size):
            # the plain engine's, or DeepSpeed's on another number of processes: DeepSpeed
            # would refuse its partitions; they are cut again here (ZeRO-3's are refused)
            full = read_full_state(folder, self.group_names, self.shapes)
            _load_full(self.module, full)
            opt = self.engine.optimizer
            if opt is self.adamw:                       # stage 0 in fp32: AdamW, whole
                load_into_torch_optimizer(self.adamw, full, self.group_names)
            elif hasattr(opt, "single_partition_of_fp32_groups") or \
                    hasattr(opt, "fp32_groups_flat_partition"):    # ZeRO 1/2, bf16 ZeRO
                load_into_partitions(opt, full, self.group_names, self.rank, self.world_size)
            elif hasattr(opt, "fp32_groups") and hasattr(opt, "optimizer"):   # bf16/fp16, 0
                load_into_copies(opt, full, self.group_names)
            else:
                from data.plan import LayoutError
                raise LayoutError(
                    f"{folder} was written by {processes} process(es) ({engine}); DeepSpeed's "
                    f"{type(opt).__name__} state cannot be cut again here: resume on "
                    f"{processes} process(es) with runtime.engine={engine}")
            return full.client
        path, client_state = self.engine.load_checkpoint(ckpt_dir, tag=tag)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {ckpt_dir}/{tag}: it was "
                                    f"written by another engine (runtime.engine) or is incomplete")
        return client_state or {}


def build_engine(model: nn.Module, groups: list, optim_cfg, runtime_cfg, dist: Dist,
                 micro_batch: int):
    """The engine of ``runtime_cfg.engine``; ``engine.precision`` is the precision it runs
    (``auto`` resolved for this device)."""
    runtime_cfg = dataclasses.replace(runtime_cfg, precision=resolve_precision(
        runtime_cfg.precision, dist.device))
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
        return load_checkpoint_file(plain)["model"]
    if glob.glob(os.path.join(path, "*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with contextlib.redirect_stdout(None):
            sd = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
        return {k: v.float() for k, v in sd.items()}
    states = sorted(glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")))
    if not states:
        raise FileNotFoundError(f"{path} holds no model weights")
    sd = load_checkpoint_file(states[0])["module"]
    return {k: v.float() for k, v in sd.items()}
