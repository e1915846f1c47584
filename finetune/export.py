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
"""
from __future__ import annotations

import argparse
import json
import os


def export_classifier(run: str, out: str) -> str:
    """Write model.safetensors + model.json of ``run`` (a run folder or an export) to ``out``."""
    from safetensors.torch import save_file

    from data.atomic import umask_mode, write_text_atomic
    from .trained import META, WEIGHTS, read_model
    meta, weights = read_model(run)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, WEIGHTS)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in weights.items()},
              path + ".tmp", metadata={"format": "tubemae-classifier"})
    umask_mode(path + ".tmp")
    os.replace(path + ".tmp", path)
    write_text_atomic(os.path.join(out, META), json.dumps(meta, indent=1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a finished fine-tuning run folder (or an export to copy)")
    ap.add_argument("--out", help="the export folder (default RUN/model)")
    args = ap.parse_args(argv)
    from pretrain.runtime.cli import run_command

    def body() -> int:
        out = args.out or os.path.join(args.run, "model")
        try:
            export_classifier(args.run, out)
            print(out)
        except PermissionError as e:
            raise ValueError(f"could not write {e.filename or out} ({e.strerror}); choose a "
                             f"folder you can write to (--out DIR)") from None
        return 0
    return run_command("finetune.export", body)


if __name__ == "__main__":
    raise SystemExit(main())
