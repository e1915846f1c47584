"""`python -m finetune --config launch/configs/finetune/NAME.yaml --init PATH [section.key=value]`

PATH: our export (RUN_DIR/export or its encoder.safetensors), an official or HuggingFace
VideoMAE checkpoint, or a timm image-ViT checkpoint file; `--init none` trains from scratch.
A run.dir that already holds a checkpoint is resumed.

example:
    python -m finetune --config launch/configs/finetune/synthetic_vivit.yaml \
        --init runs/quickstart/pretrain/export data.shards=runs/quickstart/data \
        run.dir=runs/mine/finetune
"""
from __future__ import annotations


def main(argv=None) -> int:
    from pretrain.runtime.cli import recipe_args, run_command
    args = recipe_args("python -m finetune", __doc__, argv,
                       init_help="weights to start from, or 'none'", launcher=True)

    def body() -> dict:
        from .config import config_from_cli
        from .train import train
        return train(config_from_cli(args.config, args.init, args.overrides))
    return run_command("finetune", body)


if __name__ == "__main__":
    raise SystemExit(main())
