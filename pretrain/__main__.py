"""`python -m pretrain --config launch/configs/pretrain/NAME.yaml [section.key=value ...]`

Runs under plain python (one process), torchrun, or the deepspeed launcher. A run.dir that
already holds a checkpoint is resumed.
"""
from __future__ import annotations

import argparse
import signal
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a YAML recipe")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    from pretrain.config import parse_args_with_overrides
    args = parse_args_with_overrides(ap, argv)
    from data.manifest import DataSetError
    from .config import ConfigError, load_config
    from .train import NonFiniteLoss, exit_code, train

    try:
        cfg = load_config(args.config, args.overrides)
        code = exit_code(train(cfg))
        # The run is finished and saved: a signal now must not turn a clean exit into a kill.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return code
    except (ConfigError, DataSetError, FileNotFoundError, ValueError) as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
