"""`python -m pretrain --config launch/configs/pretrain/NAME.yaml [section.key=value ...]`

Runs under plain python (one process), torchrun, or the deepspeed launcher. A run.dir that
already holds a checkpoint is resumed.

example:
    python -m pretrain --config launch/configs/pretrain/tiny_synthetic.yaml \
        data.shards=runs/quickstart/data/train run.dir=runs/mine/pretrain train.steps=200
"""
from __future__ import annotations


def main(argv=None) -> int:
    from .runtime.cli import recipe_args, run_command
    args = recipe_args("python -m pretrain", __doc__, argv, launcher=True)

    def body() -> dict:
        from .config import load_config
        from .train import train
        return train(load_config(args.config, args.overrides))
    return run_command("pretrain", body)


if __name__ == "__main__":
    raise SystemExit(main())
