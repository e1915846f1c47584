"""Loading a checkpoint's weights into a fine-tuning model, whatever the family: the sources
recognised by their contents (``read_source``), what loads by name and shape, the check that
enough of the encoder loaded, and the report of what was loaded, new, unused or mismatched.
Each family maps a source to its own weights in its own file (``ViViT.load_init`` in vivit.py,
``UniFormer.load_init`` in uniformer.py); ``finetune/init.py`` ties a recipe to them."""
from __future__ import annotations

import os

from pretrain.convert import load_published, load_safetensors, read_state_dict
from pretrain.encoder_file import META, WEIGHTS


class InitMismatch(ValueError):
    """``--init`` holds an encoder of another geometry than the model being fine-tuned."""


def read_source(path: str) -> tuple[dict, str, dict]:
    """(encoder-named state dict, kind, the source's tensors outside the encoder) for any
    supported source."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, WEIGHTS)):
        path = os.path.join(path, WEIGHTS)
    if path.endswith(WEIGHTS) or (
            path.endswith(".safetensors") and os.path.isfile(
                os.path.join(os.path.dirname(path), META))):
        return load_safetensors(path), "tubemae encoder", {}
    if os.path.isdir(path):
        sd, _ = load_published(path)
        enc, dropped = _encoder_part(sd)
        return enc, "VideoMAE (HuggingFace folder)", dropped
    raw = read_state_dict(path)
    w = raw.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        return raw, "image ViT", {}
    sd, _ = load_published(path)
    enc, dropped = _encoder_part(sd)
    return enc, "VideoMAE", dropped


def _encoder_part(sd: dict) -> tuple[dict, dict]:
    """(the encoder's weights without the prefix, the tensors outside the encoder)."""
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    return enc, {k: v for k, v in sd.items() if not k.startswith("encoder.")}


def geometry(sd: dict) -> str:
    """What a state dict's encoder looks like: width, depth, token kernel, channels."""
    w = sd.get("patch_embed.proj.weight")
    blocks = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    width = w.shape[0] if w is not None else next(
        (v.shape[0] for k, v in sd.items() if k.endswith("norm1.weight")), "?")
    kernel = "x".join(map(str, w.shape[2:])) if w is not None else "?"
    chans = w.shape[1] if w is not None else "?"
    return f"width {width}, depth {len(blocks)}, token kernel {kernel}, {chans} channel(s)"


def by_name(sd: dict, target: dict, report: dict) -> dict:
    """The tensors of ``sd`` that ``target`` takes by name and shape; the others go to the
    report (a head of another class count is unused, other shapes mismatched)."""
    load = {}
    for k, v in sd.items():
        if k in ("head.weight", "head.bias") and k in target and target[k].shape != v.shape:
            report["unused"].append(f"{k} (another number of classes)")
        elif k not in target:
            report["unused"].append(k)
        elif target[k].shape != v.shape:
            report["mismatched"].append(f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}")
        else:
            load[k] = v.to(target[k].dtype)
    return load


def load_checked(model, load: dict, core: list, report: dict, allow_partial: bool, explain):
    """Load ``load`` into ``model`` unless it fits less than half of the ``core`` weights (then
    InitMismatch with ``explain(taken)``, or go on under ``allow_partial``); fills the report's
    loaded and new lists."""
    taken = sum(k in load for k in core)
    if core and taken * 2 < len(core) and not allow_partial:
        raise InitMismatch(explain(taken))
    model.load_state_dict(load, strict=False)
    report["loaded"] = sorted(load)
    report["new"] = sorted(k for k in model.state_dict() if k not in load)


def report_counts(report: dict | None) -> dict | None:
    """An init report for report.json: each key list as its length."""
    if report is None:
        return None
    return {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}


def format_report(r: dict) -> str:
    def short(keys):
        """Numbered groups folded: 'blocks 0-11 (144)', 'local_mhra 0-3 (40)', the rest as is."""
        groups, rest = {}, []
        for k in keys:
            parts = k.split(" ")[0].split(".")
            if len(parts) > 2 and parts[1].isdigit():
                groups.setdefault(parts[0], []).append(int(parts[1]))
            else:
                rest.append(k)
        folded = [f"{g} {min(v)}-{max(v)} ({len(v)})" for g, v in groups.items()]
        return ", ".join(folded + rest) or "-"
    lines = [f"init from {r['source']} ({r['kind']})",
             f"  loaded   {len(r['loaded']):4d}: {short(r['loaded'])}",
             f"  new      {len(r['new']):4d}: {short(r['new'])}",
             f"  unused   {len(r['unused']):4d}: {short(r['unused'])}"]
    if r["mismatched"]:
        lines.append(f"  shape mismatch {len(r['mismatched'])}: {', '.join(r['mismatched'])}")
    lines += [f"  note: {n}" for n in dict.fromkeys(r["notes"])]
    return "\n".join(lines)
