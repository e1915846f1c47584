"""A trained classifier, ready to use: from a fine-tuning run folder (its best checkpoint) or from
its export (``finetune.export``: ``model.safetensors`` + ``model.json``), with the preprocessing
its own evaluation used. ``finetune.predict`` and ``finetune.features`` start here.

model.json holds everything needed besides the weights: the family and the resolved ``model``
section, the class names, the task (video or volume), the ``data`` section the views are made
with (frames, side, stride in source frames, clips x crops, what a short video does), the
input mean/std, the precision of the run, and where it came from.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch

EXPORT_FORMAT = "tubemae-classifier"
WEIGHTS = "model.safetensors"
META = "model.json"
# The data fields a user of the model needs; the rest of the section is about training.
VIEW_FIELDS = ("stride", "test_clips", "test_crops", "short_video", "batch_size")


class ModelFolderError(ValueError):
    """The path given as a model is not a usable one (shown as one line)."""


@dataclass
class Trained:
    model: torch.nn.Module
    meta: dict
    data: object           # the StreamConfig its views are made with
    device: torch.device
    precision: str          # fp32 | bf16 | fp16, as resolved here

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def autocast(self):
        import contextlib
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def logits(self, video: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(video.to(self.device)).float()

    @torch.no_grad()
    def pooled(self, video: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.pooled(video.to(self.device)).float()


def _data_section(cfg_data, model_cfg) -> dict:
    return {k: getattr(cfg_data, k) for k in VIEW_FIELDS} | {
        "num_frames": model_cfg.num_frames, "size": model_cfg.img_size}


def run_meta(run_dir: str) -> tuple[dict, str]:
    """(model.json's content, best checkpoint tag) of a finished fine-tuning run folder."""
    report_path = os.path.join(run_dir, "report.json")
    if not os.path.isfile(report_path):
        if os.path.isdir(os.path.join(run_dir, "checkpoints")):
            raise ModelFolderError(
                f"{run_dir} is a fine-tuning run that has not finished (no report.json): run "
                f"its command again to finish it, then use the folder")
        raise ModelFolderError(
            f"{run_dir} is neither a fine-tuning run folder (report.json, checkpoints/) nor an "
            f"exported model ({META}, {WEIGHTS}); give one of those")
    with open(report_path) as f:
        report = json.load(f)
    cfg = report["config"]
    model = dict(report["model"])
    data = {k: cfg["data"][k] for k in VIEW_FIELDS if k in cfg["data"]}
    data.update(num_frames=model["num_frames"], size=model["img_size"])
    meta = {"format": EXPORT_FORMAT, "version": 1, "family": model.get("family", "vivit"),
            "model": model, "classes": report["classes"], "kind": report["task"],
            "data": data, "precision": cfg.get("runtime", {}).get("precision", "fp32"),
            "source": {"run_dir": os.path.abspath(run_dir), "checkpoint": report["best"]["tag"],
                       "best_epoch": report["best"].get("epoch"),
                       "test": {k: report["test"].get(k) for k in ("acc", "auc", "top1", "top5")}}}
    return meta, report["best"]["tag"]


def read_model(path: str) -> tuple[dict, dict]:
    """(model.json content, weights) of a run folder or an export folder."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {path} not found; give a fine-tuning run folder or an "
                                f"export of one (python -m finetune.export RUN)")
    if os.path.isfile(path):
        if os.path.basename(path) in (META, WEIGHTS):
            path = os.path.dirname(path) or "."
        else:
            raise ModelFolderError(f"{path} is a file; give the fine-tuning run folder or the "
                                   f"export folder that holds {META} and {WEIGHTS}")
    meta_path = os.path.join(path, META)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ModelFolderError(f"{meta_path} is not valid JSON ({e}); export the run "
                                       f"again") from None
        if meta.get("format") != EXPORT_FORMAT:
            raise ModelFolderError(f"{meta_path} is not a tubemae classifier export")
        weights_path = os.path.join(path, WEIGHTS)
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"{weights_path} not found; export the run again "
                                    f"(python -m finetune.export RUN --out {path})")
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return meta, load_file(weights_path)
        except (SafetensorError, OSError, MemoryError) as e:
            why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ModelFolderError(f"{weights_path} is not a readable safetensors file "
                                   f"({why}); export the run again (python -m finetune.export "
                                   f"RUN --out {path})") from None
    meta, tag = run_meta(path)
    from pretrain.runtime.engine import read_model_weights
    ckpt_dir = os.path.join(path, "checkpoints")
    if not os.path.isdir(os.path.join(ckpt_dir, tag)):
        raise ModelFolderError(f"{path}: its best checkpoint {tag} is gone from checkpoints/; "
                               f"nothing else in the folder is the tested model")
    return meta, read_model_weights(ckpt_dir, tag)


def build_from_meta(meta: dict):
    """The model of model.json (random weights) and the StreamConfig its views use."""
    from data.stream import StreamConfig
    from pretrain.runtime.config import _build
    from .models import build_model
    from .vivit import VivitConfig
    model_cfg = _build(VivitConfig, meta["model"], "model.", META)
    model = build_model(model_cfg)
    data = dataclasses.replace(StreamConfig(mask="none", flip=False),
                               **{k: v for k, v in meta["data"].items()
                                  if k not in ("num_frames", "size")})
    return model, data.with_geometry(model_cfg)


def load_trained(path: str, device: str = "cpu", precision: str | None = None) -> Trained:
    """The classifier at ``path`` (run folder or export), in eval mode on ``device``."""
    from pretrain.runtime.engine import resolve_precision
    meta, weights = read_model(path)
    model, data = build_from_meta(meta)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ModelFolderError(f"{path}: the weights do not fit the model its {META} describes "
                               f"(missing {list(missing)[:3]}, unexpected "
                               f"{list(unexpected)[:3]}); export the run again")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no GPU is visible; use --device cpu")
    model.to(dev).eval()
    prec = resolve_precision(precision or meta.get("precision", "fp32"), dev)
    return Trained(model, meta, data, dev, prec)
