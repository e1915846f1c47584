"""`python -m pretrain.export RUN_DIR`: the encoder of a run's checkpoint as
``export/encoder.safetensors`` + ``encoder.json`` (what ``finetune --init`` takes), and
optionally the whole model in the HuggingFace layout (``--hf DIR``). ``--initial`` exports the
run's weights before its first step instead, rebuilt from its config.yaml and run.seed (what a
budget curve's step 0 is).

encoder.safetensors holds the encoder's weights under our names without the ``encoder.``
prefix (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ..., ``norm.weight``);
encoder.json holds the model fields needed to rebuild it and where it came from.

examples:
    python -m pretrain.export runs/quickstart/pretrain                 # -> RUN_DIR/export
    python -m pretrain.export runs/quickstart/pretrain --tag step00000100 --out enc100 \
        --hf hf/videomae_tiny
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from data.atomic import atomic_path, output_folder, umask_mode, write_text_atomic
from .encoder_file import export_encoder  # noqa: F401  (written here; the format's module)
from .model import ModelConfig


def initial_weights(cfg) -> dict:
    """The weights a pre-training run with config ``cfg`` starts from."""
    from .model import initial_model
    return initial_model(cfg.model, cfg.run.seed).state_dict()


def hf_file_names(sd: dict) -> dict:
    """HF state dict -> what a HF file holds: the attention biases as ``q_bias``/``v_bias``,
    which both transformers 4.x (natively) and 5.x (mapped on load) read; fp32."""
    return {k.replace(".attention.attention.query.bias", ".attention.attention.q_bias")
            .replace(".attention.attention.value.bias", ".attention.attention.v_bias"):
            v.float().contiguous() for k, v in sd.items()}


def export_hf(weights: dict, model_cfg: ModelConfig, out_dir: str) -> str:
    """The whole pre-training model as a HuggingFace VideoMAEForPreTraining folder.

    The file names the attention biases ``q_bias``/``v_bias``, as transformers' own
    ``save_pretrained`` writes them: transformers 4.x loads that natively and 5.x maps it on
    load (``query.bias``/``value.bias`` load strictly only into some 5.x releases)."""
    from safetensors.torch import save_file

    from .convert import ours_to_hf

    c = model_cfg.resolved()
    sd = hf_file_names(ours_to_hf(weights))
    config = {"model_type": "videomae", "architectures": ["VideoMAEForPreTraining"],
              "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
              "num_frames": c.num_frames, "tubelet_size": c.tubelet_size,
              "hidden_size": c.embed_dim, "num_hidden_layers": c.depth,
              "num_attention_heads": c.num_heads,
              "intermediate_size": int(c.embed_dim * c.mlp_ratio), "hidden_act": "gelu",
              "qkv_bias": c.qkv_bias, "use_mean_pooling": False, "layer_norm_eps": c.norm_eps,
              "decoder_hidden_size": c.decoder_embed_dim,
              "decoder_num_hidden_layers": c.decoder_depth,
              "decoder_num_attention_heads": c.decoder_num_heads,
              "decoder_intermediate_size": int(c.decoder_embed_dim * c.mlp_ratio),
              "norm_pix_loss": c.norm_pix_loss}
    with output_folder(out_dir):
        with atomic_path(os.path.join(out_dir, "model.safetensors")) as tmp:
            save_file(sd, tmp, metadata={"format": "pt"})
            umask_mode(tmp)
        write_text_atomic(os.path.join(out_dir, "config.json"), json.dumps(config, indent=1))
        write_hf_processor(out_dir, c.img_size, c.in_chans, c.mean, c.std)
    return out_dir


def write_hf_processor(out_dir: str, side: int, in_chans: int, mean=None, std=None):
    """preprocessor_config.json: transformers' VideoMAE processor with our clip side and input
    mean/std (``AutoImageProcessor`` / ``AutoVideoProcessor.from_pretrained(out_dir)``)."""
    from .model import channel_stats
    mean, std = channel_stats(in_chans, mean, std)
    processor = {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
                 "size": {"shortest_edge": side}, "do_center_crop": True,
                 "crop_size": {"height": side, "width": side}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
                 "image_std": list(std), "resample": 2}
    write_text_atomic(os.path.join(out_dir, "preprocessor_config.json"),
                      json.dumps(processor, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--tag", help="checkpoint tag (default: latest)")
    ap.add_argument("--initial", action="store_true",
                    help="the run's initial weights (step 0, rebuilt from its config and seed) "
                         "instead of a checkpoint's")
    ap.add_argument("--out", help="folder for encoder.* (default RUN_DIR/export)")
    ap.add_argument("--hf", help="also write the whole model in the HuggingFace layout here")
    args = ap.parse_args(argv)
    if args.initial and args.tag:
        ap.error("--initial and --tag pick different weights; give one")
    from .config import PretrainConfig, load_config
    from .runtime.engine import read_model_weights

    cfg_path = os.path.join(args.run_dir, "config.yaml")
    ckpt_dir = os.path.join(args.run_dir, "checkpoints")
    try:
        cfg = load_config(cfg_path, schema=PretrainConfig)
        tag = args.tag
        if args.initial:
            weights = initial_weights(cfg)
        else:
            if tag is None:
                with open(os.path.join(ckpt_dir, "latest")) as f:
                    tag = f.read().strip()
            weights = read_model_weights(ckpt_dir, tag)
    except (OSError, ValueError) as e:
        what = "" if args.initial else " with a checkpoint"
        print(f"pretrain.export: error: {e} (is {args.run_dir} a pre-training run folder{what}?)",
              file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "export")
    source = {"run_dir": os.path.abspath(args.run_dir), "checkpoint": tag}
    if args.initial:
        source.update(initial=True, seed=cfg.run.seed)
    try:
        path = export_encoder(weights, cfg.model, out, source)
        hf = export_hf(weights, cfg.model, args.hf) if args.hf else None
    except OSError as e:
        print(f"pretrain.export: error: could not write {e.filename or out} "
              f"({e.strerror or e}); choose a folder you can write to (--out DIR, --hf DIR)",
              file=sys.stderr)
        return 2
    print(path)
    if hf:
        print(hf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
