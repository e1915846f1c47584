"""Our encoder export, one place for its format: ``encoder.safetensors`` (the encoder's
weights under our names, without the ``encoder.`` prefix) and ``encoder.json`` (format,
version, the model fields that rebuild it, and where it came from). Written by
``pretrain.export``, ``pretrain.convert`` and the study's untrained control; read by fine-tuning,
the probe and the study."""
from __future__ import annotations

import dataclasses
import json
import os

from data.atomic import atomic_path, output_folder, umask_mode, write_text_atomic

FORMAT = "tubemae-encoder"
WEIGHTS = "encoder.safetensors"
META = "encoder.json"


def export_encoder(weights: dict, model_cfg, out_dir: str, provenance: dict) -> str:
    """Write encoder.safetensors + encoder.json; returns the safetensors path."""
    from safetensors.torch import save_file

    enc = {k[len("encoder."):]: v.detach().float().contiguous().cpu()
           for k, v in weights.items() if k.startswith("encoder.")}
    if not enc:
        raise ValueError("no encoder weights found (keys starting with 'encoder.')")
    path = os.path.join(out_dir, WEIGHTS)
    meta = {"format": FORMAT, "version": 1,
            "model": json.loads(json.dumps(dataclasses.asdict(model_cfg.resolved()))),
            "source": provenance}
    with output_folder(out_dir):
        with atomic_path(path) as tmp:
            save_file(enc, tmp, metadata={"format": FORMAT})
            umask_mode(tmp)
        write_text_atomic(os.path.join(out_dir, META), json.dumps(meta, indent=1))
    return path


def export_folder(path: str) -> str | None:
    """The folder of our export that ``path`` names (the folder, its encoder.safetensors, or a
    pre-training run holding export/), or None for any other source."""
    if not path:
        return None
    for folder in (path, os.path.join(path, "export"), os.path.dirname(path)):
        if os.path.isfile(os.path.join(folder, META)) and (
                folder != os.path.dirname(path) or path.endswith(".safetensors")):
            return folder
    return None


def read_meta(path: str) -> dict | None:
    """encoder.json of the export ``path`` names, or None when it names none (or the file is
    not ours)."""
    folder = export_folder(path)
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None
