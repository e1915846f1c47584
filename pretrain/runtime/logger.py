"""Scalars to TensorBoard (``run.dir/tb``) and ``run.dir/metrics.jsonl`` (one JSON line per
log step), pictures to TensorBoard; only rank 0 writes."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from data.atomic import write_text_atomic


class MetricsLogger:
    def __init__(self, run_dir: str, enabled: bool, resume_step: int | None = None):
        """``resume_step``: the step a resumed run continues from; what an interrupted run
        logged after it is dropped, so the logs read as one uninterrupted run."""
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            path = os.path.join(run_dir, "metrics.jsonl")
            if resume_step is not None and os.path.isfile(path):
                with open(path) as f:
                    keep = [line for line in f if _step_of(line) <= resume_step]
                write_text_atomic(path, "".join(keep))
            self.writer = SummaryWriter(os.path.join(run_dir, "tb"),
                                        purge_step=None if resume_step is None
                                        else resume_step + 1)
            self.jsonl = open(path, "a")

    def scalars(self, step: int, values: dict, prefix: str = "train"):
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None}
        for k, v in clean.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), "split": prefix,
                                     **clean}) + "\n")
        self.jsonl.flush()

    def image(self, tag: str, step: int, image: np.ndarray):
        """image (H, W, 3) uint8."""
        if self.enabled:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self):
        if self.enabled:
            self.writer.flush()

    def close(self):
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError):
        return 1 << 62  # a torn last line: dropped
