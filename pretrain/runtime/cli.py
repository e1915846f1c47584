"""What every training command does around its work: one line and exit 2 for an error the
user can fix, exit 3 for a run stopped by non-finite losses, exit 4 for a run whose other
process is gone or hung (its node lost), exit 143 for a run stopped by a signal (checkpointed),
and no signal turning a finished, saved run into a kill."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

# Kept light (no torch): a command's heavy imports run inside ``run_command``, so a Ctrl-C
# during start-up is one line too.
EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_STOPPED = 143


class StopSignal(KeyboardInterrupt):
    """A command was asked to stop by a signal (``signum``) where no run of it was there to
    checkpoint: during start-up, or in a study between runs."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _stop(signum, frame):
    raise StopSignal(signum)


def stop_while_starting(prog: str):
    """For a command module run as ``python -m``, called before its heavy imports: until
    ``run_command`` takes over, Ctrl-C (exit 130) or SIGTERM (exit 143) ends the command with
    one line instead of a traceback from inside an import."""
    def handler(signum, frame):
        what = "interrupted" if signum == signal.SIGINT else f"stopped by signal {signum}"
        os.write(2, f"{prog}: {what} while starting; nothing was done\n".encode())
        raise SystemExit(EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_STOPPED)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def recipe_args(prog: str, doc: str, argv=None, init_help: str | None = None,
                launcher: bool = False) -> argparse.Namespace:
    """The command line of a command that runs a recipe: ``--config``, ``--init`` when
    ``init_help`` is given, ``section.key=value`` overrides anywhere on the line, and the
    ``--local_rank`` a launcher adds (``launcher``)."""
    from .config import parse_args_with_overrides
    ap = argparse.ArgumentParser(prog=prog, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a YAML recipe")
    if init_help:
        ap.add_argument("--init", help=init_help)
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    if launcher:
        ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parse_args_with_overrides(ap, argv)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message naming the thing and the fix: shown as one line."""
    from data.atomic import OutputError
    from data.manifest import DataSetError
    from .config import ConfigError
    return ConfigError, DataSetError, FileNotFoundError, ValueError, OutputError


EXIT_INTERRUPTED = 130
EXIT_LOST_PROCESS = 4    # another process of the run is gone or hung


def run_command(prog: str, body: Callable[[], dict | int]) -> int:
    """Run ``body()`` and map how it ended to an exit code: a run's summary or report (exit 0,
    or 143 when a signal stopped it after a checkpoint), or an exit code. Errors a user causes
    and an interrupt each end in one ``prog: ...`` line, never a traceback."""
    # Until a run installs its own handlers (and after it restores these), SIGTERM stops the
    # command as Ctrl-C does: one line, not the default death with no word.
    old = signal.signal(signal.SIGTERM, _stop)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = body()
    except Exception as e:       # the classes are imported only now: see the top
        from .loop import NonFiniteLoss
        from .distributed import LostProcess, is_comm_failure
        if isinstance(e, NonFiniteLoss):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_NONFINITE
        if isinstance(e, LostProcess) or (int(os.environ.get("WORLD_SIZE", 1)) > 1 and
                                          is_comm_failure(e)):
            # the process group is broken: tearing it down (at exit) could wait on the lost
            # peer, so this process ends here, its line written. Outside the training loop
            # (starting, exporting) the failure is named without asking who is gone.
            line = str(e) if isinstance(e, LostProcess) else (
                f"lost contact with another process of the run "
                f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}); run the "
                f"same command on every node to resume from the last complete checkpoint")
            print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_LOST_PROCESS)
        if isinstance(e, user_errors()):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        from data.atomic import FULL_DISK, disk_errno, output_error
        if disk_errno(e, FULL_DISK):                        # a full or read-only disk
            print(f"{prog}: error: {output_error(e, 'an output')}", file=sys.stderr)
            return EXIT_USER_ERROR
        if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
                "can't allocate memory" in str(e) or "Cannot allocate memory" in str(e))):
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else "an allocation"
            print(f"{prog}: error: out of memory ({why}); use a smaller data.batch_size or "
                  f"fewer data.num_workers", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    except KeyboardInterrupt as e:
        if getattr(e, "signum", None) == signal.SIGTERM:
            print(f"{prog}: stopped by signal {e.signum}; finished work is kept, run the same "
                  f"command to resume", file=sys.stderr)
            return EXIT_STOPPED
        print(f"{prog}: interrupted; run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    if isinstance(result, int):
        return result
    # The run is finished and saved: a signal now must not turn a clean exit into a kill.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return EXIT_STOPPED if result.get("stopped_by_signal") else 0
