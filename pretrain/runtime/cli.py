"""What every training command does around its work: one line and exit 2 for an error the
user can fix, exit 3 for a run stopped by non-finite losses, exit 143 for a run stopped by a
signal (checkpointed), and no signal turning a finished, saved run into a kill."""
from __future__ import annotations

import signal
import sys
from typing import Callable

from .loop import EXIT_NONFINITE, EXIT_STOPPED, NonFiniteLoss

EXIT_USER_ERROR = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message naming the thing and the fix: shown as one line."""
    from data.manifest import DataSetError
    from pretrain.config import ConfigError
    return ConfigError, DataSetError, FileNotFoundError, ValueError


def run_command(prog: str, body: Callable[[], dict]) -> int:
    """Run ``body()`` (a run; returns its summary or report) and map how it ended to an exit
    code, printing one ``prog: error: ...`` line for the errors a user causes."""
    try:
        summary = body()
    except NonFiniteLoss as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except user_errors() as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    # The run is finished and saved: a signal now must not turn a clean exit into a kill.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return EXIT_STOPPED if summary.get("stopped_by_signal") else 0
