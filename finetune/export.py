"""`python -m finetune.export RUN [--out DIR] [--hf DIR]`: a fine-tuned model as one folder that
``finetune.predict`` and ``finetune.features`` take, with nothing else from the run.

    python -m finetune.export runs/quickstart/finetune --out runs/quickstart/model
    python -m finetune.predict runs/quickstart/model clip.mp4

DIR (default RUN/model) gets:
  model.safetensors  the best checkpoint's weights (the one the run's test scored), fp32;
  model.json         the family and its resolved ``model`` section, the class names, the task,
                     the preprocessing (frames, side, stride in source frames, clips x crops,
                     input mean/std), the run's precision, and where it came from (run folder,
                     checkpoint, its test metrics).
``--hf DIR`` also writes transformers' ``VideoMAEForVideoClassification`` layout (config.json
with ``id2label`` and mean pooling, model.safetensors, preprocessor_config.json), for
``pipeline("video-classification", model=DIR)``. It takes ViViT model 1 over tubelets with mean
pooling, fixed positions and the pooled norm layout (``model.norm_layout=pooled``: one norm,
after pooling, as that class has); other models are refused, naming what differs.
"""
from __future__ import annotations

import argparse
import json
import os


def export_classifier(meta: dict, weights: dict, out: str) -> str:
    """Write model.safetensors + model.json of a model (``trained.read_model``) to ``out``."""
    from safetensors.torch import save_file

    from data.atomic import atomic_path, output_folder, umask_mode, write_text_atomic
    from .trained import META, WEIGHTS
    with output_folder(out):
        with atomic_path(os.path.join(out, WEIGHTS)) as tmp:
            save_file({k: v.detach().float().contiguous().cpu() for k, v in weights.items()},
                      tmp, metadata={"format": "tubemae-classifier"})
            umask_mode(tmp)
        write_text_atomic(os.path.join(out, META), json.dumps(meta, indent=1))
    return out


def check_hf_classifier(model: dict):
    """Refuse, naming each setting, a model (its resolved ``model`` section) that
    VideoMAEForVideoClassification cannot hold."""
    want = {"family": "vivit", "variant": 1, "tokenizer": "tubelet", "pool": "mean",
            "pos": "sincos", "head_norm": "layer", "norm_layout": "pooled"}
    blockers = [f"model.{k}={model.get(k)!r} (needs {v!r})" for k, v in want.items()
                if model.get(k) != v]
    if blockers:
        raise ValueError("transformers' VideoMAEForVideoClassification cannot hold this model: "
                         + "; ".join(blockers) + ". Fine-tune with those settings to export it "
                         "there (model.norm_layout=pooled keeps one norm, after pooling)")


def export_hf_classifier(meta: dict, weights: dict, out: str) -> str:
    """transformers' VideoMAEForVideoClassification folder of a ViViT model 1 classifier."""
    from safetensors.torch import save_file

    from data.atomic import atomic_path, output_folder, umask_mode, write_text_atomic
    from pretrain.convert import ours_to_hf
    from pretrain.export import hf_file_names, write_hf_processor
    m = meta["model"]
    check_hf_classifier(m)
    enc = {("" if k.startswith(("fc_norm", "head")) else "encoder.") + k: v
           for k, v in weights.items() if not k.startswith("pos_embed")}
    sd = hf_file_names(ours_to_hf(enc))
    classes = meta["classes"]
    config = {"model_type": "videomae", "architectures": ["VideoMAEForVideoClassification"],
              "image_size": m["img_size"], "patch_size": m["patch_size"],
              "num_channels": m["in_chans"], "num_frames": m["num_frames"],
              "tubelet_size": m["tubelet_size"], "hidden_size": m["embed_dim"],
              "num_hidden_layers": m["depth"], "num_attention_heads": m["num_heads"],
              "intermediate_size": int(m["embed_dim"] * m["mlp_ratio"]), "hidden_act": "gelu",
              "qkv_bias": m["qkv_bias"], "use_mean_pooling": True,
              "layer_norm_eps": m["norm_eps"],
              "id2label": {str(i): c for i, c in enumerate(classes)},
              "label2id": {c: i for i, c in enumerate(classes)}}
    with output_folder(out):
        with atomic_path(os.path.join(out, "model.safetensors")) as tmp:
            save_file(sd, tmp, metadata={"format": "pt"})
            umask_mode(tmp)
        write_text_atomic(os.path.join(out, "config.json"), json.dumps(config, indent=1))
        write_hf_processor(out, m["img_size"], m["in_chans"], m.get("mean"), m.get("std"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a finished fine-tuning run folder (or an export to copy)")
    ap.add_argument("--out", help="the export folder (default RUN/model)")
    ap.add_argument("--hf", help="also write transformers' VideoMAEForVideoClassification "
                                 "layout here (ViViT model 1, tubelets, mean pooling, "
                                 "model.norm_layout=pooled)")
    args = ap.parse_args(argv)
    from pretrain.runtime.cli import run_command

    def body() -> int:
        out = args.out or os.path.join(args.run, "model")
        try:
            from .trained import read_model
            meta, weights = read_model(args.run)
            if args.hf:         # checked first: a refused --hf writes nothing
                check_hf_classifier(meta["model"])
            export_classifier(meta, weights, out)
            print(out)
            if args.hf:
                print(export_hf_classifier(meta, weights, args.hf))
        except PermissionError as e:
            raise ValueError(f"could not write {e.filename or out} ({e.strerror}); choose a "
                             f"folder you can write to (--out DIR, --hf DIR)") from None
        return 0
    return run_command("finetune.export", body)


if __name__ == "__main__":
    raise SystemExit(main())
