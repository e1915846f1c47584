"""`--init PATH`: weights for a ViViT from a pre-trained encoder.

Sources, recognised by their contents:
  our export       ``encoder.safetensors`` (+ ``encoder.json``) from ``pretrain``;
  VideoMAE         official v1/v2 (pre-training or fine-tuned) and HuggingFace checkpoints,
                   through ``pretrain.convert``;
  image ViT        a timm ViT checkpoint file (2D ``patch_embed.proj`` of shape (D, C, p, p),
                   ``cls_token``, learned ``pos_embed``, fused ``qkv`` bias).
Mapping to the four models (names follow the VideoMAE encoder):
  1, 4  every encoder weight by name; Model 1 then computes exactly the encoder's features.
  2     the encoder initialises the spatial encoder (``blocks``, ``norm``); the temporal
        encoder (``temporal_blocks``, ``temporal_norm``) starts new.
  3     ``blocks.i.{norm1,attn,norm2,mlp}`` are the spatial part and load by name;
        ``temporal_attn`` / ``temporal_norm`` are zero-initialised or copied from the spatial
        attention (``model.temporal_init``).
Tokenisers: a 3D tubelet kernel becomes a 2D one (uniform frame sampling) by summing over time,
which keeps the response to a still clip; a 2D image kernel becomes 3D by the central frame
(zeros elsewhere, ``central``) or by averaging over time (``average``). Positional tables: our
fixed sine-cosine table needs nothing; a learned image table is interpolated to H' x W' and
tiled over T' (only where ``model.pos=learned``). The T2T tokeniser always starts new. A key
bias in the image ViT's fused qkv is dropped: it adds the same amount to every logit of a query
row, which softmax ignores.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.nn.functional as F
from einops import repeat

from pretrain.convert import load_published, load_safetensors, read_state_dict
from pretrain.encoder_file import META, WEIGHTS, export_folder, read_meta
from pretrain.model import ClipGeometry
from .convert import inflate_kernel, split_qkv_bias
from .vivit import FactorisedSelfAttentionBlock, ViViT, init_temporal_attention


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


def norm_layout_of(path: str) -> str:
    """'pooled' when ``path`` is an official fine-tuned VideoMAE file (``fc_norm`` after mean
    pooling and no token ``norm``), else 'tokens' (our export, pre-training files, HF, none)."""
    if not path or os.path.isdir(path) or path.endswith(".safetensors"):
        return "tokens"
    try:
        sd, _ = load_published(path)
    except ValueError:
        return "tokens"
    return "pooled" if "fc_norm.weight" in sd and "encoder.norm.weight" not in sd else "tokens"


def resolve_norm_layout(model_cfg, init: str):
    """``model.norm_layout: auto`` -> the layout of the ``--init`` source (before building)."""
    from dataclasses import replace
    if model_cfg.norm_layout != "auto":
        return model_cfg
    from .models import family_class
    layout = norm_layout_of(init) if family_class(model_cfg.family).takes_vit_encoder \
        else "tokens"
    return replace(model_cfg, norm_layout=layout)


def _image_vit_to_encoder(sd: dict, model: ViViT, kernel_init: str, report: dict) -> dict:
    cfg = model.cfg
    out = {}
    for k, v in sd.items():
        split = split_qkv_bias(k, v)
        if split:
            out.update(split)
            report["notes"].append("dropped the key bias of the fused qkv (softmax ignores it)")
        elif k == "patch_embed.proj.weight":
            t = cfg.tubelet_size if cfg.tokenizer == "tubelet" else 1
            out[k] = v[:, :, None] if t == 1 else inflate_kernel(v, t, kernel_init)
        elif k == "pos_embed":
            if cfg.pos != "learned":
                report["unused"].append(k + " (the model uses the fixed sine-cosine table)")
                continue
            t, h, w = cfg.grid
            grid = v[:, 1:] if v.shape[1] != int(v.shape[1] ** 0.5) ** 2 else v
            side = int(grid.shape[1] ** 0.5)
            img = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            img = F.interpolate(img.float(), size=(h, w), mode="bicubic", align_corners=False)
            out[k] = repeat(img[0], "d h w -> 1 (t h w) d", t=t).to(v.dtype)
        elif k in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"):
            report["unused"].append(k)
        else:
            out[k] = v
    return out


def _tubelet_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """(D, C, t, p, p) -> (D, C, 1, p, p): summed over time (same response to a still clip)."""
    return w.sum(dim=2, keepdim=True)


def geometry(sd: dict) -> str:
    """What a state dict's encoder looks like: width, depth, token kernel, channels."""
    w = sd.get("patch_embed.proj.weight")
    blocks = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    width = w.shape[0] if w is not None else next(
        (v.shape[0] for k, v in sd.items() if k.endswith("norm1.weight")), "?")
    kernel = "x".join(map(str, w.shape[2:])) if w is not None else "?"
    chans = w.shape[1] if w is not None else "?"
    return f"width {width}, depth {len(blocks)}, token kernel {kernel}, {chans} channel(s)"


def init_from(model, path: str, kernel_init: str = "auto", verbose: bool = True,
              allow_partial: bool = False) -> dict:
    """Load ``path`` into ``model`` through its family's ``load_init`` and return the report
    {source, loaded, new, unused, mismatched, notes}; prints it when verbose. ``auto`` is the
    family's kernel init (central for a ViT, average for an image UniFormer).

    Raises InitMismatch when less than half of the encoder weights the model can take load
    (another preset or geometry: training would silently start from scratch), unless
    ``allow_partial``."""
    if kernel_init == "auto":
        kernel_init = model.default_kernel_init
    return model.load_init(path, kernel_init, verbose, allow_partial)


def init_vit(model: ViViT, path: str, kernel_init: str = "central", verbose: bool = True,
             allow_partial: bool = False) -> dict:
    """A ViViT (or the armed encoder, whose added blocks start new) from a ViT: our export, an
    official or HuggingFace VideoMAE checkpoint (pre-trained or fine-tuned), or an image ViT
    (2D kernels inflated with ``kernel_init``)."""
    sd, kind, dropped = read_source(path)
    report = {"source": path, "kind": kind, "loaded": [], "new": [],
              "unused": [f"{k} (not part of the encoder)" for k in sorted(dropped)],
              "mismatched": [], "notes": []}
    if kind == "image ViT":
        sd = _image_vit_to_encoder(sd, model, kernel_init, report)
    target = model.state_dict()
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 5 and model.cfg.tokenizer == "uniform" and w.shape[2] != 1:
        sd["patch_embed.proj.weight"] = _tubelet_to_uniform(w)
        report["notes"].append("tubelet kernel summed over time for uniform frame sampling")
    if model.cfg.tokenizer == "t2t":
        report["notes"].append("the T2T tokeniser starts new (no pre-trained counterpart)")
    load = {}
    for k, v in dropped.items():  # a fine-tuned file's pooled-feature norm and head
        if k.startswith("fc_norm.") and not isinstance(getattr(model, "fc_norm", None),
                                                       torch.nn.LayerNorm):
            report["unused"] = [f"{k} (a LayerNorm's; model.head_norm=batch starts its "
                                f"BatchNorm new)" if u.startswith(k + " ") else u
                                for u in report["unused"]]
            continue
        if k.startswith(("fc_norm.", "head.")) and k in target and target[k].shape == v.shape:
            load[k] = v.to(target[k].dtype)
            report["unused"] = [u for u in report["unused"] if not u.startswith(k + " ")]
    load.update(_by_name(sd, target, report))
    # The encoder weights this model can take from a pre-trained encoder (not the parts that
    # always start new: Model 3's temporal attention, the T2T tokeniser).
    core = [k for k in target if k.startswith(("blocks.", "patch_embed.")) and
            "temporal_" not in k and not (model.cfg.tokenizer == "t2t" and
                                          k.startswith("patch_embed."))]
    _load(model, load, core, report, allow_partial, lambda taken: (
        f"--init {path} fits {taken} of the {len(core)} encoder weights of this model: its "
        f"encoder has {geometry(sd)}, the model has {geometry(target)}. Choose the "
        f"model.preset / geometry the encoder was trained with, or set "
        f"run.init_partial=true to load what fits and train the rest from scratch"))
    if model.cfg.variant == 3 and model.cfg.temporal_init == "copy":
        for blk in model.blocks:
            if isinstance(blk, FactorisedSelfAttentionBlock):
                init_temporal_attention(blk, "copy")
        report["notes"].append("temporal attention copied from the loaded spatial attention")
    if verbose:
        print(format_report(report))
    return report


def init_uniformer(model, path: str, kernel_init: str = "average", verbose: bool = True,
                   allow_partial: bool = False) -> dict:
    """A UniFormer from a UniFormer checkpoint: a 2D image one (published image layout, kernels
    inflated with ``kernel_init``) or a video one (ours or published), loaded by name."""
    from .uniformer import inflate
    if os.path.isdir(path) or path.endswith("encoder.safetensors"):
        raise InitMismatch(f"--init {path} is a ViT encoder; a ViT encoder initialises "
                           f"model.family=uniformer_head (the encoder armed with UniFormer "
                           f"blocks) or vivit, not the UniFormer itself")
    sd = read_state_dict(path)
    stem = sd.get("patch_embed1.proj.weight")
    if stem is None:
        kind = "VideoMAE / ViT" if "patch_embed.proj.weight" in sd or any(
            k.startswith(("encoder.", "videomae.")) for k in sd) else "unknown"
        raise InitMismatch(f"--init {path} holds no UniFormer (no patch_embed1.proj.weight; "
                           f"looks like {kind}). A ViT encoder initialises "
                           f"model.family=uniformer_head or vivit")
    report = {"source": path, "kind": "UniFormer", "loaded": [], "new": [], "unused": [],
              "mismatched": [], "notes": []}
    if stem.ndim == 4:
        report["kind"] = "image UniFormer (2D)"
        sd, notes = inflate(sd, model, kernel_init)
        report["notes"] += notes
    else:
        sd = dict(pair for k, v in sd.items() for pair in split_qkv_bias(k, v) or [(k, v)])
    target = model.state_dict()
    load = _by_name(sd, target, report)
    core = [k for k in target if k.startswith(("blocks", "patch_embed"))]
    _load(model, load, core, report, allow_partial, lambda taken: (
        f"--init {path} fits {taken} of the {len(core)} stage weights of this UniFormer "
        f"({model.cfg.preset}, dims {list(model.cfg.uniformer.dims)}, depths "
        f"{list(model.cfg.uniformer.depths)}, {model.cfg.in_chans} channel(s)). Choose the "
        f"preset the checkpoint was trained with, or set run.init_partial=true"))
    if verbose:
        print(format_report(report))
    return report


def _by_name(sd: dict, target: dict, report: dict) -> dict:
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


def _load(model, load: dict, core: list, report: dict, allow_partial: bool, explain):
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


# The clip geometry an encoder was trained with: the model section's keys, as in encoder.json.
GEOMETRY = tuple(f.name for f in dataclasses.fields(ClipGeometry))


# The input normalisation an encoder was trained with (encoder.json's model.mean / model.std):
# the model applies it, so a fine-tune must apply the same one.
INPUT_STATS = ("mean", "std")


def encoder_geometry(path: str) -> dict:
    """The geometry keys and input statistics (as tuples) stored beside our export
    (encoder.json); {} for other sources."""
    meta = read_meta(path)
    if meta is None:
        return {}
    m = meta["model"]
    return {k: tuple(m[k]) if k in INPUT_STATS else m[k]
            for k in GEOMETRY + INPUT_STATS if m.get(k) is not None}


def _show(v) -> str:
    return "[" + ", ".join(f"{x:g}" for x in v) + "]" if isinstance(v, tuple) else str(v)


def take_export_geometry(cfg, stated=(), verbose: bool = True):
    """``cfg`` with the clip geometry and input statistics of the export in ``run.init`` over
    the recipe's: an encoder is fine-tuned at the geometry it was trained at, on inputs
    normalised as in its pre-training. A key in ``stated`` (``model.KEY`` given on the command
    line) that differs from the export's is an InitMismatch naming both, unless
    ``run.init_partial`` (then the stated value stays, and only what fits loads)."""
    from dataclasses import replace
    from pretrain.model import channel_stats
    from .models import family_class
    geo = encoder_geometry(cfg.run.init)
    if not geo or not family_class(cfg.model.family).takes_vit_encoder:
        return cfg
    stats = dict(zip(INPUT_STATS, channel_stats(cfg.model.in_chans, cfg.model.mean,
                                                cfg.model.std)))

    def current(k):  # the recipe's value; its input statistics as they resolve
        return tuple(stats[k]) if k in INPUT_STATS else getattr(cfg.model, k)

    diffs = {k: v for k, v in geo.items() if current(k) != v}
    explicit = [k for k in diffs if f"model.{k}" in stated]
    if explicit and not cfg.run.init_partial:
        given = ", ".join(f"model.{k}={_show(current(k))}" for k in explicit)
        want = ", ".join(f"{k} {_show(geo[k])}" for k in explicit)
        raise InitMismatch(f"{given} on the command line, but the encoder {cfg.run.init} was "
                           f"trained at {want} (encoder.json): drop the override to fine-tune "
                           f"at the encoder's geometry and input statistics, or set "
                           f"run.init_partial=true to keep what you gave")
    take = {k: v for k, v in diffs.items() if k not in explicit}
    if not take:
        return cfg
    if verbose:
        print(f"finetune: clip geometry and input statistics from "
              f"{export_folder(cfg.run.init)}/encoder.json: "
              + ", ".join(f"model.{k} {_show(v)} (the recipe says {_show(current(k))})"
                          for k, v in take.items()), file=sys.stderr)
    model = replace(cfg.model, **take)
    return replace(cfg, model=model, data=cfg.data.with_geometry(model))
