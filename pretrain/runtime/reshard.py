"""A checkpoint read back by another number of processes, or by the other engine.

Each engine keeps its optimizer state its own way: the plain engine as torch's AdamW state per
parameter; DeepSpeed with ZeRO 1/2 (or bf16 at stage 0) as one flat fp32 vector per parameter
group, cut into one partition per process, with the AdamW moments cut the same way. DeepSpeed
refuses to load partitions cut for another number of processes. Here every checkpoint is read
into one form, per parameter and whole (``FullState``: fp32 weights, the two AdamW moments,
the step count), and that form is cut again for the engine and process count that resume. No
script for the user to run: ``engine.load`` takes this path by itself when the checkpoint was
written by another number of processes or another engine.
"""
from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass

import torch

from .checkpoint import load_checkpoint_file

PLAIN_STATE = "plain_state.pt"
DS_MODEL = "mp_rank_00_model_states.pt"
# What DeepSpeed keeps in its model-states file beside the client state we gave it
DS_KEYS = {"module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes",
           "shared_params", "frozen_param_fragments", "lr_scheduler", "data_sampler",
           "random_ltd", "sparse_tensor_module_names", "skipped_steps", "global_steps",
           "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version"}


@dataclass
class FullState:
    weights: dict          # the module's state dict (parameters and buffers), as saved
    master: dict           # parameter name -> fp32 weights
    exp_avg: dict          # parameter name -> AdamW first moment (fp32), when it has stepped
    exp_avg_sq: dict
    step: float            # AdamW's step count (0: never stepped)
    client: dict           # the client state the run saved


def saved_layout(folder: str) -> tuple[str, int]:
    """(engine, processes) that wrote checkpoint ``folder``: the engine from its files, the
    processes from its rank files."""
    ranks = len(glob.glob(os.path.join(folder, "rank*.pt")))
    engine = "plain" if os.path.isfile(os.path.join(folder, PLAIN_STATE)) else "deepspeed"
    return engine, ranks


def _load_deepspeed(path: str):
    """A DeepSpeed file, loaded as every checkpoint is (tensors and plain data only), with the
    few plain-data classes of DeepSpeed's own that its optimizer files hold allowed."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum,
                                           fragment_address]):
        return load_checkpoint_file(path)


def _rank_of(path: str) -> int:
    return int(re.search(r"zero_pp_rank_(\d+)_", os.path.basename(path)).group(1))


def _per_param(flat: torch.Tensor, names: list, shapes: dict) -> dict:
    out, at = {}, 0
    for n in names:
        k = shapes[n].numel()
        out[n] = flat[at:at + k].view(shapes[n]).float().clone()
        at += k
    return out


def _from_torch_optimizer(sd: dict, group_names: list) -> tuple[dict, dict, float]:
    """AdamW's own state dict (parameters numbered group after group) -> per-name moments."""
    avg, sq, step = {}, {}, 0.0
    flat_names = [n for names in group_names for n in names]
    for idx, st in sd.get("state", {}).items():
        name = flat_names[int(idx)]
        avg[name], sq[name] = st["exp_avg"].float(), st["exp_avg_sq"].float()
        step = float(st["step"])
    return avg, sq, step


def refuse_zero3(folder: str, processes: int):
    from data.plan import LayoutError
    raise LayoutError(
        f"{folder} holds ZeRO-3 partitions of {processes} processes, which tubemae does not cut "
        f"again; resume on {processes} processes, or use runtime.zero_stage 0-2 for a run that "
        f"may change its number of processes")


def read_full_state(folder: str, group_names: list, shapes: dict) -> FullState:
    """Checkpoint ``folder`` (either engine, any number of processes) as a ``FullState``.
    ``group_names``: the parameter names of each AdamW group, in order; ``shapes``: each
    parameter's shape."""
    plain = os.path.join(folder, PLAIN_STATE)
    if os.path.isfile(plain):
        state = load_checkpoint_file(plain)
        weights = state["model"]
        avg, sq, step = _from_torch_optimizer(state["optimizer"], group_names)
        master = {n: weights[n].float() for names in group_names for n in names}
        return FullState(weights, master, avg, sq, step, state["client_state"])
    model_file = os.path.join(folder, DS_MODEL)
    stage3 = glob.glob(os.path.join(folder, "zero_pp_rank_*_mp_rank_00_model_states.pt"))
    if stage3:
        refuse_zero3(folder, len(stage3))
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"{folder} holds neither engine's files")
    model = _load_deepspeed(model_file)
    client = {k: v for k, v in model.items() if k not in DS_KEYS}
    weights = model["module"]
    parts = sorted(glob.glob(os.path.join(folder, "*zero_pp_rank_*_mp_rank_00_optim_states.pt")),
                   key=_rank_of)
    if not parts:                       # stage 0: AdamW's state, whole, in every process
        sd = model.get("optimizer") or {}
        master = {n: weights[n].float() for names in group_names for n in names}
        if "fp32_groups" in sd:         # bf16/fp16: fp32 copies of the weights beside AdamW
            for names, copies in zip(group_names, sd["fp32_groups"]):
                master.update({n: c.float() for n, c in zip(names, copies)})
            sd = sd["optimizer_state_dict"]
        avg, sq, step = _from_torch_optimizer(sd, group_names) if sd else ({}, {}, 0.0)
        return FullState(weights, master, avg, sq, step, client)
    sds = [_load_deepspeed(p)["optimizer_state_dict"] for p in parts]
    if "single_partition_of_fp32_groups" not in sds[0]:
        refuse_zero3(folder, len(parts))
    master, avg, sq, step = {}, {}, {}, 0.0
    for i, names in enumerate(group_names):
        total = sum(shapes[n].numel() for n in names)
        # padding, if any, is at the end of the last partition
        flat = torch.cat([sd["single_partition_of_fp32_groups"][i].flatten() for sd in sds])
        master.update(_per_param(flat[:total], names, shapes))
        states = [sd["base_optimizer_state"]["state"].get(i) for sd in sds]
        if all(s is not None and "exp_avg" in s for s in states):
            for key, into in (("exp_avg", avg), ("exp_avg_sq", sq)):
                flat = torch.cat([s[key].flatten() for s in states])
                into.update(_per_param(flat[:total], names, shapes))
            step = float(states[0]["step"])
    return FullState(weights, master, avg, sq, step, client)


def _moments(full: FullState, names: list, like: torch.Tensor):
    if not all(n in full.exp_avg for n in names):
        return None
    return [torch.cat([full.exp_avg[n].flatten() for n in names]).to(like),
            torch.cat([full.exp_avg_sq[n].flatten() for n in names]).to(like)]


def load_into_torch_optimizer(optimizer: torch.optim.Optimizer, full: FullState,
                              group_names: list):
    """Per-parameter AdamW state into ``optimizer`` (whose groups hold the parameters named by
    ``group_names``, in order)."""
    sd = optimizer.state_dict()
    idx = 0
    for names in group_names:
        for n in names:
            if n in full.exp_avg:
                sd["state"][idx] = {"step": torch.tensor(full.step),
                                    "exp_avg": full.exp_avg[n].clone(),
                                    "exp_avg_sq": full.exp_avg_sq[n].clone()}
            idx += 1
    optimizer.load_state_dict(sd)


def load_into_copies(optimizer, full: FullState, group_names: list):
    """A ``FullState`` into a DeepSpeed optimizer that keeps a whole fp32 copy of each weight
    in every process (bf16 or fp16 at ZeRO stage 0): the copies, then AdamW's state over them."""
    for copies, names in zip(optimizer.fp32_groups, group_names):
        for c, n in zip(copies, names):
            c.data.copy_(full.master[n].to(c))
    load_into_torch_optimizer(optimizer.optimizer, full, group_names)


def load_into_partitions(optimizer, full: FullState, group_names: list, rank: int,
                         processes: int):
    """A ``FullState`` into a DeepSpeed optimizer that keeps one flat fp32 partition per group
    (ZeRO 1/2, or bf16 at stage 0): this process's partition of the weights and moments."""
    base = optimizer.optimizer
    for i, names in enumerate(group_names):
        part = base.param_groups[i]["params"][0]
        size = part.numel()

        def mine(whole: torch.Tensor) -> torch.Tensor:
            """This process's partition of a group's flat vector (padded at the end)."""
            padded = torch.zeros(size * processes, dtype=whole.dtype, device=whole.device)
            padded[:whole.numel()] = whole
            return padded[rank * size:(rank + 1) * size].clone()

        part.data.copy_(mine(torch.cat([full.master[n].flatten() for n in names])).to(part))
        moments = _moments(full, names, part)
        if moments is not None:
            st = base.state[part]
            for key, values in zip(("exp_avg", "exp_avg_sq"), moments):
                st[key] = mine(values)
            st["step"] = torch.tensor(full.step, dtype=torch.float32, device=part.device)
            if "step" in base.param_groups[i]:
                base.param_groups[i]["step"] = int(full.step)
    link = getattr(optimizer, "_link_all_hp_params", None)
    if link is not None:
        link()


def fit_to_checkpoint(cfg, dist, name: str) -> str | None:
    """A run resumed on another number of processes keeps its samples per step: the
    per-process batch (``data.batch_size``), else the accumulation (``runtime.grad_accum``),
    is changed in ``cfg`` to hold them, with a line saying so (rank 0), which is returned
    (None when nothing changes); raises ``LayoutError`` naming process counts that work when none does."""
    from data.plan import LayoutError
    from .checkpoint import Checkpointer
    ckpt = Checkpointer(cfg.run.dir, dist)
    for tag in ckpt.candidates():
        if ckpt.damage(tag) is None:
            break
    else:
        return None
    folder = os.path.join(ckpt.dir, tag)
    try:
        stream = load_checkpoint_file(os.path.join(folder, "rank0.pt"))["stream"]
        canon = stream["canon"]
    except (OSError, KeyError, RuntimeError, ValueError):
        return None    # unreadable, or an older format: the resume itself says why
    data, runtime = cfg.data, cfg.runtime
    per_step = canon["ranks"] * canon["chunk"] * canon["accum"]
    reps, world = data.repeats, dist.world_size
    batch, accum = data.batch_size // reps, runtime.grad_accum
    if world * accum * batch == per_step:
        return None
    _, before = saved_layout(folder)
    # another process count: the per-process batch follows (the accumulation stays); the same
    # count with another batch asked for: the accumulation follows
    keep_accum = per_step % (world * accum) == 0
    keep_batch = per_step % (world * batch) == 0
    if keep_accum and (before != world or not keep_batch):
        batch = per_step // (world * accum)
    elif keep_batch:
        accum = per_step // (world * batch)
    elif per_step % world == 0:
        batch, accum = per_step // world, 1
    else:
        fits = [w for w in range(1, per_step + 1) if per_step % w == 0]
        raise LayoutError(
            f"{cfg.run.dir}: a step of this run holds {per_step * reps} clips, which "
            f"{world} processes cannot share evenly; resume on {', '.join(map(str, fits[:12]))}"
            f"{' ...' if len(fits) > 12 else ''} processes")
    changes = []
    if batch * reps != data.batch_size:
        changes.append(f"data.batch_size {data.batch_size} -> {batch * reps}")
    if accum != runtime.grad_accum:
        changes.append(f"runtime.grad_accum {runtime.grad_accum} -> {accum}")
    data.batch_size, runtime.grad_accum = batch * reps, accum
    line = (f"{name}: {tag} was written by {before} process(es), resuming on {world}: "
            f"{' and '.join(changes)} keeps the {per_step * reps} clips of a step")
    if dist.is_main:
        print(line, file=sys.stderr)
    return line
