"""Published weights <-> our model.

Layouts recognised by their keys:
  ours / official VideoMAE (v1 and v2) pre-training: ``encoder.blocks.{i}.attn.qkv`` ...
  official fine-tuned: ``blocks.{i}...`` without the ``encoder.`` prefix, plus ``fc_norm``/``head``
  HuggingFace: ``videomae.encoder.layer.{i}.attention.attention.{query,key,value}`` (q/v biases as
  ``q_bias``/``v_bias`` in older files, ``query.bias``/``value.bias`` in newer ones), decoder
  layers under ``decoder.decoder_layers``.
Files: .pth/.pt/.bin (torch, loaded with weights_only) or .safetensors, optionally wrapped in
``model`` / ``module`` / ``state_dict``, with or without a DDP ``module.`` prefix.

Note: HuggingFace's ``decoder.norm`` and ``fc_norm`` use LayerNorm eps 1e-5 whatever the config
says; the official models use 1e-6 everywhere, which is what our ``model.norm_eps`` defaults to.
"""
from __future__ import annotations

import json
import os
import re

import torch

TOP_LEVEL = {  # ours -> HF, outside the blocks
    "encoder.patch_embed.proj": "videomae.embeddings.patch_embeddings.projection",
    "encoder.norm": "videomae.layernorm", "decoder.norm": "decoder.norm",
    "decoder.head": "decoder.head", "encoder_to_decoder": "encoder_to_decoder",
    "fc_norm": "fc_norm", "head": "classifier", "mask_token": "mask_token",
}
BLOCK_MAP = [  # ours (inside a block) <-> HF (inside a layer)
    ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
    ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
]


def read_state_dict(path: str) -> dict:
    """Tensors of a checkpoint file, unwrapped; never unpickles arbitrary objects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.endswith(".safetensors"):
        sd = load_safetensors(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is not a readable torch checkpoint ({e})") from None
    for key in ("model", "module", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if any(k.startswith("module.") for k in sd):
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_safetensors(path: str) -> dict:
    """A safetensors file's tensors, or a ValueError naming the file when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); use a run's "
                         f"export/ folder, a VideoMAE checkpoint or an image ViT file") from None


def detect_layout(sd: dict) -> str:
    keys = list(sd)
    if any(k.startswith("videomae.") or ".attention.attention." in k for k in keys):
        return "hf"
    if any(k.startswith("encoder.blocks.") for k in keys):
        return "pretrain"            # ours, or official v1/v2 pre-training
    if any(k.startswith("blocks.") for k in keys):
        return "finetuned"           # official fine-tuned (encoder at the top level)
    raise ValueError("unrecognised checkpoint layout: expected VideoMAE keys such as "
                     "'encoder.blocks.0.attn.qkv.weight' or HuggingFace 'videomae.encoder...'")


def _hf_layer_to_ours(prefix_hf: str, prefix_ours: str, sd: dict, out: dict):
    """One HF layer -> our block (qkv fused, biases split)."""
    a = f"{prefix_hf}.attention.attention."
    q, k, v = (sd[a + n + ".weight"] for n in ("query", "key", "value"))
    out[f"{prefix_ours}.attn.qkv.weight"] = torch.cat([q, k, v])
    qb = sd.get(a + "q_bias", sd.get(a + "query.bias"))
    vb = sd.get(a + "v_bias", sd.get(a + "value.bias"))
    if qb is not None:
        out[f"{prefix_ours}.attn.q_bias"] = qb
        out[f"{prefix_ours}.attn.v_bias"] = vb
    for ours, hf in BLOCK_MAP:
        for leaf in ("weight", "bias"):
            out[f"{prefix_ours}.{ours}.{leaf}"] = sd[f"{prefix_hf}.{hf}.{leaf}"]


def _our_block_to_hf(prefix_ours: str, prefix_hf: str, sd: dict, out: dict):
    a = f"{prefix_hf}.attention.attention."
    q, k, v = sd[f"{prefix_ours}.attn.qkv.weight"].chunk(3)
    out[a + "query.weight"], out[a + "key.weight"], out[a + "value.weight"] = q, k, v
    if f"{prefix_ours}.attn.q_bias" in sd:
        out[a + "query.bias"] = sd[f"{prefix_ours}.attn.q_bias"]
        out[a + "value.bias"] = sd[f"{prefix_ours}.attn.v_bias"]
    for ours, hf in BLOCK_MAP:
        for leaf in ("weight", "bias"):
            out[f"{prefix_hf}.{hf}.{leaf}"] = sd[f"{prefix_ours}.{ours}.{leaf}"]


def _indices(sd: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m})


def hf_to_ours(sd: dict) -> dict:
    out = {}
    for i in _indices(sd, r"videomae\.encoder\.layer\.(\d+)\."):
        _hf_layer_to_ours(f"videomae.encoder.layer.{i}", f"encoder.blocks.{i}", sd, out)
    for i in _indices(sd, r"decoder\.decoder_layers\.(\d+)\."):
        _hf_layer_to_ours(f"decoder.decoder_layers.{i}", f"decoder.blocks.{i}", sd, out)
    _copy_top_level(sd, out, {hf: ours for ours, hf in TOP_LEVEL.items()})
    return out


def ours_to_hf(sd: dict) -> dict:
    """Our pre-training (or encoder-only) state dict -> HF VideoMAEForPreTraining names."""
    sd = {k if k.startswith(("encoder.", "decoder.", "encoder_to_decoder", "mask_token",
                              "fc_norm", "head")) else f"encoder.{k}": v for k, v in sd.items()}
    out = {}
    for i in _indices(sd, r"encoder\.blocks\.(\d+)\."):
        _our_block_to_hf(f"encoder.blocks.{i}", f"videomae.encoder.layer.{i}", sd, out)
    for i in _indices(sd, r"decoder\.blocks\.(\d+)\."):
        _our_block_to_hf(f"decoder.blocks.{i}", f"decoder.decoder_layers.{i}", sd, out)
    _copy_top_level(sd, out, TOP_LEVEL)
    return out


def _copy_top_level(sd: dict, out: dict, names: dict):
    """Copy the tensors outside the blocks, renamed by ``names`` (module name -> module name;
    their .weight/.bias, or the tensor itself for a bare parameter such as mask_token)."""
    for src, dst in names.items():
        for leaf in ("", ".weight", ".bias"):
            if src + leaf in sd:
                out[dst + leaf] = sd[src + leaf]


def to_ours(sd: dict) -> dict:
    """Any recognised layout -> our names (pre-training model; fine-tuned encoders get the
    ``encoder.`` prefix, their ``fc_norm``/``head`` kept as is). Positional tables are dropped:
    ours are fixed and rebuilt for any grid."""
    layout = detect_layout(sd)
    if layout == "hf":
        sd = hf_to_ours(sd)
    elif layout == "finetuned":
        sd = {(k if k.startswith(("fc_norm", "head")) else f"encoder.{k}"): v
              for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.endswith("pos_embed")}


def hf_config_to_ours(config: dict) -> dict:
    """Model-section fields from a HuggingFace VideoMAE config.json."""
    return {"img_size": config.get("image_size", 224), "patch_size": config.get("patch_size", 16),
            "num_frames": config.get("num_frames", 16),
            "tubelet_size": config.get("tubelet_size", 2),
            "in_chans": config.get("num_channels", 3), "embed_dim": config["hidden_size"],
            "depth": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
            "mlp_ratio": config.get("intermediate_size", 4 * config["hidden_size"]) /
            config["hidden_size"],
            "decoder_embed_dim": config.get("decoder_hidden_size", 384),
            "decoder_depth": config.get("decoder_num_hidden_layers", 4),
            "decoder_num_heads": config.get("decoder_num_attention_heads", 6),
            "norm_pix_loss": config.get("norm_pix_loss", True)}


def _heads(width: int, table: dict, what: str) -> int:
    if width not in table:
        raise ValueError(f"the heads of a {width}-wide {what} are not in the file and not a "
                         f"known model's; give --{what.replace(' ', '-')}-heads")
    return table[width]


def fields_from_state_dict(sd: dict, heads: int | None = None,
                           decoder_heads: int | None = None) -> dict:
    """Model-section fields read off our-layout tensors (official files carry no config):
    widths, depths, patch and tubelet; the heads of the known widths (our presets, ViT-g)
    unless given. The clip side and frame count are not in the tensors."""
    from .model import PRESETS
    enc_heads = {p[0]: p[2] for p in PRESETS.values()} | {1408: 16}
    dec_heads = {p[3]: p[5] for p in PRESETS.values()}
    w = sd["encoder.patch_embed.proj.weight"]                     # (D, C, t, p, p)
    out = {"embed_dim": w.shape[0], "in_chans": w.shape[1], "tubelet_size": w.shape[2],
           "patch_size": w.shape[3],
           "num_heads": heads or _heads(w.shape[0], enc_heads, "encoder"),
           "depth": len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks.")})}
    if "decoder.head.weight" in sd:
        d = sd["decoder.head.weight"].shape[1]
        out.update(decoder_embed_dim=d,
                   decoder_num_heads=decoder_heads or _heads(d, dec_heads, "decoder"),
                   decoder_depth=len({k.split(".")[2] for k in sd
                                      if k.startswith("decoder.blocks.")}))
    fc1 = sd.get("encoder.blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        out["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
    return out


def load_published(path: str) -> tuple[dict, dict]:
    """(our state dict, model fields found beside it) from an official or HF checkpoint file, or
    a HF folder (config.json + model.safetensors / pytorch_model.bin)."""
    fields = {}
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                fields = hf_config_to_ours(json.load(f))
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path} holds no model.safetensors or pytorch_model.bin")
    return to_ours(read_state_dict(path)), fields


def main(argv=None) -> int:
    """`python -m pretrain.convert CHECKPOINT [--out DIR]`: a published VideoMAE pre-training
    or fine-tuned checkpoint as our encoder export (what ``finetune --init`` and
    ``finetune.probe``/``features`` take, and what ``pretrain.export`` writes)."""
    import argparse
    import sys
    ap = argparse.ArgumentParser(
        prog="python -m pretrain.convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + """
example:
    python -m pretrain.convert checkpoint.pth --out weights/videomae_b --num-frames 16
    python -m pretrain.convert hf_videomae_folder --out weights/videomae_hf
(``finetune --init`` also takes the published file directly; converting once gives a folder
with its geometry written down.)""")
    ap.add_argument("checkpoint", help="an official .pth/.pt/.bin/.safetensors file, or a "
                                       "HuggingFace VideoMAE folder")
    ap.add_argument("--out", required=True, help="the export folder to write")
    ap.add_argument("--img-size", type=int, help="clip side (official files carry none; "
                                                 "default 224)")
    ap.add_argument("--num-frames", type=int, help="frames (official files: default 16)")
    ap.add_argument("--encoder-heads", type=int, help="attention heads (official files of an "
                                                      "unknown width)")
    ap.add_argument("--decoder-heads", type=int, help="the decoder's, likewise")
    args = ap.parse_args(argv)
    from .encoder_file import export_encoder
    from .model import ModelConfig
    try:
        sd, fields = load_published(args.checkpoint)
        if not fields:
            fields = fields_from_state_dict(sd, args.encoder_heads, args.decoder_heads)
        if args.img_size:
            fields["img_size"] = args.img_size
        if args.num_frames:
            fields["num_frames"] = args.num_frames
        model_cfg = ModelConfig(**{k: v for k, v in fields.items()
                                   if k in ModelConfig.__dataclass_fields__})
        path = export_encoder(sd, model_cfg, args.out,
                              {"converted_from": os.path.abspath(args.checkpoint)})
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"pretrain.convert: error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
