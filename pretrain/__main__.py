"""`python -m pretrain --config launch/configs/pretrain/NAME.yaml [section.key=value ...]`

Runs under plain python (one process), torchrun, or the deepspeed launcher. A run.dir that
already holds a checkpoint is resumed.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a YAML recipe")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    from pretrain.config import parse_args_with_overrides
    args = parse_args_with_overrides(ap, argv)
    from .config import load_config
    from .runtime.cli import run_command
    from .train import train

    return run_command("pretrain", lambda: train(load_config(args.config, args.overrides)))


if __name__ == "__main__":
    raise SystemExit(main())
