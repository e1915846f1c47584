"""The study's plan, as pure functions of its spec: which runs a (k, seed) needs, and which
pre-training checkpoints the budget curve probes. Nothing here reads or writes a file."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """One run: a fine-tune (``what`` = finetune) or a probe (linear and kNN) of one init on the
    k-shot subset of one seed, in ``run_dir``."""
    k: str
    seed: int
    init: str              # pretrained | scratch | untrained
    what: str              # finetune | probe
    run_dir: str


def run_dir(out: str, k: str, seed: int, init: str, what: str) -> str:
    return os.path.join(out, "runs", f"k{k}", init, f"s{seed}", what)


def plan_jobs(spec) -> list[Job]:
    """Every run of the study, in a fixed order: k, then seed, then init, then fine-tune before
    probe. A probe run gives both linear and kNN."""
    whats = (["finetune"] if "finetune" in spec.methods else []) + \
        (["probe"] if {"linear", "knn"} & set(spec.methods) else [])
    return [Job(k, seed, init, what, run_dir(spec.out, k, seed, init, what))
            for k in spec.ks for seed in spec.seeds for init in spec.inits for what in whats]


def checkpoint_step(tag: str) -> int:
    """A checkpoint tag's step: 'step00000200' -> 200."""
    return int("".join(c for c in tag if c.isdigit()) or 0)


def budget_tags(finished: list[str], wanted_steps, where: str) -> list[str]:
    """The checkpoint tags the budget curve probes: ``wanted_steps`` (or every finished tag), in
    step order. A FileNotFoundError names a wanted step without a finished checkpoint, and the
    steps there are."""
    tags = sorted(finished, key=checkpoint_step)
    if not tags:
        raise FileNotFoundError(f"{where} holds no finished checkpoints to probe")
    if not wanted_steps:
        return tags
    by_step = {checkpoint_step(t): t for t in tags}
    missing = [n for n in wanted_steps if n not in by_step]
    if missing:
        raise FileNotFoundError(f"{where} has no finished checkpoint at step(s) {missing}; it has "
                                f"{sorted(by_step)} (train.ckpt_every and train.keep_last "
                                f"decide which)")
    return [by_step[n] for n in sorted(set(wanted_steps))]


def budget_jobs(spec, tags: list[str]) -> list[tuple[str, int, int, str]]:
    """(tag, step, seed, probe run dir) for the run's initial weights (step 0) and ``tags``."""
    return [(tag, 0 if tag == "initial" else checkpoint_step(tag), seed,
             os.path.join(spec.out, "budget", tag, f"s{seed}", "probe"))
            for tag in ["initial", *tags] for seed in spec.seeds]
