"""`python -m finetune --config launch/configs/finetune/NAME.yaml --init PATH [section.key=value]`

PATH: our export (RUN_DIR/export or its encoder.safetensors), an official or HuggingFace
VideoMAE checkpoint, or a timm image-ViT checkpoint file; `--init none` trains from scratch.
A run.dir that already holds a checkpoint is resumed.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--init", help="weights to start from, or 'none'")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    from pretrain.runtime.config import parse_args_with_overrides
    args = parse_args_with_overrides(ap, argv)
    from pretrain.runtime.cli import run_command
    from .train import config_from_cli, train

    return run_command("finetune", lambda: train(config_from_cli(args.config, args.init,
                                                                 args.overrides)))


if __name__ == "__main__":
    raise SystemExit(main())
