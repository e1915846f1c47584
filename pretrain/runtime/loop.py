"""The training loop both stages run: feed -> forward -> backward -> step, with step statistics,
logging (a bar on a terminal, step lines elsewhere, an ETA and a closing summary), stop signals,
the NaN policy, the checkpoint cadence and fault injection.

A stage supplies a ``Stage``: its loss, what else it logs, what happens at the end of a step
(the reconstruction picture in pre-training; evaluation and the best checkpoint at an epoch's
end in fine-tuning), which steps checkpoint, and what a checkpoint records besides the loop's
own state. The loop knows nothing of models or data sets; the stages know nothing of signals,
windows or cadences.
"""
from __future__ import annotations

import os
import resource
from abc import ABC, abstractmethod
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .distributed import LostProcess, all_reduce_max, all_reduce_mean, is_comm_failure

# Fault injection for the resume tests: the process SIGKILLs itself right after finishing this
# optimizer step (and any checkpoint due at it), as `kill -9` or a pre-empted node would.
# "STEP:TERM" sends SIGTERM instead (a scheduler's stop, on a step however fast steps come).
KILL_AFTER_STEP = "TUBEMAE_KILL_AFTER_STEP"


def injected_signal(step: int) -> int | None:
    """The signal ``KILL_AFTER_STEP`` asks for after ``step``, or None."""
    at, _, name = os.environ.get(KILL_AFTER_STEP, "").partition(":")
    return getattr(signal, f"SIG{name or 'KILL'}") if at == str(step) else None


class NonFiniteLoss(RuntimeError):
    """``train.max_nonfinite`` steps in a row had a NaN or inf loss; the run stopped."""


class StopWhileWaiting(Exception):
    """A stop signal came while the loop waited for the loader: it checkpoints the last step
    trained now, without the batch it was waiting for."""


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary.
    A second Ctrl-C interrupts at once. ``notice`` (set by whoever is running: the loop, a
    final test) is the line a first Ctrl-C prints, saying what happens now. While ``waiting``
    (the loop blocked on the loader, which a stuck worker can make last long) a signal raises
    ``StopWhileWaiting`` at once, so a pre-emption's grace period is not spent waiting."""

    def __init__(self):
        self.signum = None
        self.notice: str | None = None
        self.waiting = False
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = self.signum is None
        self.signum = signum
        if first and signum == signal.SIGINT and self.notice:
            # os.write, not print: the handler may run while the stream is mid-write
            os.write(2, (self.notice + "\n").encode())
        if self.waiting:
            self.waiting = False
            raise StopWhileWaiting

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class StepStats:
    """What the loop logs, accumulated on the device between log steps, so that training
    steps never wait for the device: losses of finite steps, skipped (non-finite) steps, and
    the current run of skipped steps in a row."""

    def __init__(self, device: torch.device, nonfinite_total: int = 0):
        zero = torch.zeros((), device=device)
        self.loss_sum, self.loss_count = zero.clone(), zero.clone()
        self.skipped, self.in_row = zero.clone(), zero.clone()
        self.base_total = nonfinite_total

    def add_loss(self, loss: torch.Tensor):
        loss = loss.detach().float()
        ok = torch.isfinite(loss)
        self.loss_sum += torch.where(ok, loss, 0.0)
        self.loss_count += ok

    def add_step(self, skipped: torch.Tensor | None):
        if skipped is None:
            return
        skipped = skipped.to(self.skipped.device)
        self.skipped += skipped
        self.in_row = (self.in_row + skipped) * skipped

    def read(self) -> tuple[float, int, int]:
        """(mean loss of the finite steps since the last read, skipped steps in all, skipped
        in a row now); waits for the device."""
        n = float(self.loss_count)
        loss = float(self.loss_sum) / n if n else float("nan")
        self.loss_sum.zero_()
        self.loss_count.zero_()
        return loss, self.base_total + int(self.skipped), int(self.in_row)

    @property
    def total(self) -> int:
        return self.base_total + int(self.skipped)

    def window(self) -> list[float]:
        """The losses summed since the last log step, for the checkpoint: a resumed run then
        logs the same mean at its first log step as the uninterrupted run."""
        return [float(self.loss_sum), float(self.loss_count)]

    def load_window(self, window: list[float] | None):
        if window:
            self.loss_sum.fill_(window[0])
            self.loss_count.fill_(window[1])


class RunTotals:
    """What this process's part of a run did, for the ETA and the closing summary."""

    def __init__(self, name: str, start_step: int):
        self.name, self.start_step, self.t0 = name, start_step, time.perf_counter()
        self.clips, self.wait, self.busy = 0, 0.0, 0.0
        self.first = self.last = self.best = None

    def add(self, step: int, loss: float, clips: int, wait: float, dt: float):
        self.clips, self.wait, self.busy = self.clips + clips, self.wait + wait, self.busy + dt
        if loss == loss:  # not NaN
            self.first = self.first or (step, loss)
            self.last = (step, loss)
            if self.best is None or loss < self.best[1]:
                self.best = (step, loss)

    def eta(self, step: int, total: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.t0) / done * (total - step) if done else 0.0

    def summary(self, step: int, checkpoint: str, export: str | None = None) -> str:
        wall = time.perf_counter() - self.t0
        parts = [f"{self.name}: summary: steps {self.start_step}->{step} in {duration(wall)}",
                 f"{self.clips / max(self.busy, 1e-9):.1f} clips/s",
                 f"data wait {100 * self.wait / max(self.busy, 1e-9):.0f}%"]
        if self.last:
            parts.append(f"loss {self.first[1]:.4f} (step {self.first[0]}) -> "
                         f"{self.last[1]:.4f} (step {self.last[0]}), best {self.best[1]:.4f} "
                         f"(step {self.best[0]})")
        parts.append(f"checkpoint {checkpoint}")
        if export:
            parts.append(f"export {export}")
        return "; ".join(parts)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def as_scalar(value) -> float | None:
    """A logged scalar from a device tensor, a float or None (read at log steps only)."""
    return None if value is None else float(value)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ignore(signum, frame):
    pass


class _LoaderWatch:
    """Bounds one wait on the loader by ``data.timeout``: at half of it, one warning naming the
    worker and the shard the batch is owed from; at all of it, ``LoaderWorkerLost`` raised in
    the waiting (main) thread through SIGUSR1, since a worker stopped in the middle of sending
    a batch leaves the loader blocked in a read that its own timeout never ends."""

    def __init__(self, name: str, stream, timeout: float | None):
        import threading
        self.name, self.stream, self.timeout = name, stream, timeout
        self.on = bool(timeout) and hasattr(stream, "waiting_on") and \
            threading.current_thread() is threading.main_thread()
        self.fired = False

    def _who(self) -> str:
        try:
            return self.stream.waiting_on()
        except Exception:
            return "a loader worker"

    def _warn(self):
        print(f"{self.name}: warning: no batch for {self.timeout / 2:.0f} s from "
              f"{self._who()}; the run stops at {self.timeout:.0f} s (data.timeout)",
              file=sys.stderr, flush=True)

    def _fire(self):
        import threading
        self.fired = True
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def _handle(self, signum, frame):
        if self.fired:
            from data.stream import LoaderWorkerLost
            self.fired = False
            raise LoaderWorkerLost(
                f"no batch came from {self._who()} in {self.timeout:.0f} s (data.timeout): it "
                f"is stuck, as on a hung network read or a stopped process; check the storage "
                f"of the shards, or raise data.timeout")

    def __enter__(self):
        import threading
        if self.on:
            self.old = signal.signal(signal.SIGUSR1, self._handle)
            self.timers = [threading.Timer(self.timeout / 2, self._warn),
                           threading.Timer(self.timeout, self._fire)]
            for t in self.timers:
                t.daemon = True
                t.start()
        return self

    def __exit__(self, *exc):
        if self.on:
            for t in self.timers:
                t.cancel()
            self.fired = False
            # never back to the default action (ending the process): a SIGUSR1 sent just
            # before the cancel would still arrive
            signal.signal(signal.SIGUSR1, self.old if callable(self.old) or
                          self.old == signal.SIG_IGN else _ignore)


def open_feed(batches: Iterator[dict], stream, prepare: Callable[[dict], dict],
              device: torch.device, prefetch: bool):
    """(feed, position): the batches ready for the device, and what a checkpoint saves as the
    data position (the stream's position after the last batch trained on). With ``prefetch``
    (a GPU, NVDEC) batches are readied on a thread while the device trains."""
    if prefetch:
        from data.prefetch import Prefetcher
        feed = Prefetcher(batches, stream, prepare, device)
        return feed, feed
    return map(prepare, batches), stream


class Stage(ABC):
    """What a stage gives the loop. ``forward`` is required; the rest have quiet defaults."""

    @abstractmethod
    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(the loss to backpropagate, the loss to log, clips in the batch on this rank)."""

    def scalars(self) -> dict:
        """Scalars logged at a log step besides the loop's own."""
        return {}

    def end_of_step(self, step: int) -> tuple[str | None, bool]:
        """After step ``step`` was logged: (a checkpoint tag to save now or None, whether time
        went to something other than training, such as an evaluation)."""
        return None, False

    def client_state(self) -> dict:
        """What a checkpoint records for this stage, besides the loop's step and statistics."""
        return {}


def run_locked(run_dir: str, dist, body: Callable[[StopRequested], dict]) -> dict:
    """``body(stop)`` holding the run folder's lock (one command per run folder), with stop
    signals caught for the whole run: a signal during start-up stops after the first step, one
    after the last step lets the export or the test finish; never a death mid-write."""
    from .checkpoint import RunDirLock
    lock = RunDirLock(run_dir, dist.is_main)
    try:
        with StopRequested() as stop:
            return body(stop)
    finally:
        lock.release()


@dataclass
class Loop:
    """A run's loop: its name (the log prefix), length, schedule and cadences."""
    name: str
    total_steps: int
    lr_at: Callable[[int], float]
    grad_accum: int = 1
    log_every: int = 10
    max_nonfinite: int = 5
    progress: bool = False
    nonfinite_hint: str = "lower the learning rate or check the data"


@dataclass
class Run:
    """What a run holds while it trains (``open_run``)."""
    engine: object
    stream: object            # the training stream (its position is saved in checkpoints)
    ckpt: object              # the Checkpointer of run.dir
    client: dict | None       # the resumed checkpoint's client state, None for a new run
    batches: Iterator[dict]   # the loader's batches
    feed: Iterator[dict]      # the same, ready for the device
    position: object          # what a checkpoint saves as the data position
    logger: object
    decode: str               # data.decode as resolved on this machine

    @property
    def step(self) -> int:
        return self.client["step"] if self.client else 0


def open_run(cfg, model, groups, dist, prepare: Callable[[dict], dict], shard_set=None) -> Run:
    """The set-up both stages share: the engine over ``model`` with its AdamW parameter
    ``groups``, the training stream (of ``shard_set``, or of ``cfg.data.shards``), the
    checkpointer of ``cfg.run.dir`` and the resume from its newest intact checkpoint (a new run
    writes config.yaml first), the feed (``prepare`` readies a loader batch for the device) and
    the metrics logger. ``cfg`` has the run, data, optim, runtime and train sections."""
    from dataclasses import replace
    from data.nvdec import resolve_decode
    from data.stream import TrainStream
    from .checkpoint import Checkpointer
    from .config import dump_yaml
    from .engine import build_engine
    from .logger import MetricsLogger
    engine = build_engine(model, groups, cfg.optim, cfg.runtime, dist, cfg.data.batch_size)
    decode = resolve_decode(cfg.data.decode, dist.device)
    stream = TrainStream(replace(cfg.data, decode=decode), dist.rank, dist.world_size,
                         shard_set=shard_set, pin_memory=dist.device.type == "cuda",
                         accum=cfg.runtime.grad_accum)
    ckpt = Checkpointer(cfg.run.dir, dist, cfg.train.keep_last)
    client, batches = ckpt.resume(engine, stream, lambda: dump_yaml(
        cfg, os.path.join(cfg.run.dir, "config.yaml")))
    feed, position = open_feed(batches, stream, prepare, dist.device,
                               decode == "nvdec" or dist.device.type == "cuda")
    logger = MetricsLogger(cfg.run.dir, dist.is_main,
                           resume_step=client["step"] if client else None)
    return Run(engine, stream, ckpt, client, batches, feed, position, logger, decode)


@dataclass
class LoopResult:
    step: int
    stopped: int | None        # the signal that stopped the run, or None
    stats: StepStats
    totals: RunTotals


def train_loop(loop: Loop, stage: Stage, run: Run, dist, stop: StopRequested) -> LoopResult:
    """Run steps from the resumed checkpoint (or step 0) to ``loop.total_steps``, or until a
    stop signal (then checkpoint and return). The loader's batches are closed on every way out,
    so no loader worker outlives the loop."""
    engine, feed, batches, ckpt, logger = run.engine, run.feed, run.batches, run.ckpt, run.logger
    stream, client, position = run.stream, run.client, run.position
    step = run.step
    stats = StepStats(dist.device, client.get("nonfinite_total", 0) if client else 0)
    stats.load_window(client and client.get("log_window"))
    totals = RunTotals(loop.name, step)
    last_saved = step if client else -1

    def save(tag: str):
        ckpt.save_run(engine, tag, {"step": step, "nonfinite_total": stats.total,
                                    "log_window": stats.window(), **stage.client_state()},
                      position)

    bar = None
    if dist.is_main and loop.progress and sys.stderr.isatty():
        # a bar for a terminal; a file (SLURM, nohup) gets a step line at every log step
        from tqdm import tqdm
        bar = tqdm(total=loop.total_steps, initial=step, desc=loop.name, unit="step",
                   dynamic_ncols=True, file=sys.stderr)
    engine.train(True)
    t_window, wait_window, clips_window = time.perf_counter(), 0.0, 0
    stopped = None
    if dist.is_main:
        stop.notice = (f"{loop.name}: stopping after this step, with a checkpoint; Ctrl-C "
                       f"again to stop at once (back to the last checkpoint)")
    from data.stream import LoaderWorkerLost
    from .checkpoint import rng_state
    alone = dist.world_size == 1
    watch = getattr(stream, "watch", None)
    timeout = getattr(getattr(stream, "cfg", None), "timeout", None) \
        if getattr(getattr(stream, "cfg", None), "num_workers", 0) else None
    try:
        while step < loop.total_steps:
            lr = loop.lr_at(step)
            engine.set_lr(lr)
            at_start = position.state_dict()
            # a step cut short is saved as it started: its RNG too, when batches came before
            rng_at_start = rng_state(dist.device) if loop.grad_accum > 1 else None
            for _ in range(loop.grad_accum):
                t0 = time.perf_counter()
                try:
                    # One process: a stop signal while it waits on the loader stops at once
                    # (several ranks stop together at the step's end, as their collectives
                    # need); a lost or stuck worker checkpoints the last step, then stops.
                    stop.waiting = alone
                    if alone and stop.signum is not None:
                        raise StopWhileWaiting
                    if watch is not None:
                        watch.check()
                        watch.waiting = True
                    with _LoaderWatch(loop.name, stream, timeout):
                        batch = next(feed)
                except (StopWhileWaiting, LoaderWorkerLost) as e:
                    stop.waiting = False
                    if not alone:
                        raise
                    if last_saved != step:
                        ckpt.save(engine, f"step{step:08d}", {
                            "step": step, "nonfinite_total": stats.total,
                            "log_window": stats.window(), **stage.client_state()},
                            {"stream": at_start,
                             "rng": rng_at_start or rng_state(dist.device)})
                        last_saved = step
                    if isinstance(e, LoaderWorkerLost):
                        raise LoaderWorkerLost(
                            f"{e}; checkpoint saved at step {step}: run the same command to "
                            f"resume") from None
                    stopped = stop.signum or signal.SIGTERM
                    break
                finally:
                    stop.waiting = False
                    if watch is not None:
                        watch.waiting = False
                wait_window += time.perf_counter() - t0
                loss, logged, clips = stage.forward(batch)
                # A non-finite loss is not waited for here: the engine skips that step's
                # update on the device, and the count is read at the next log step.
                engine.backward(loss)
                engine.step()
                stats.add_loss(logged)
                clips_window += clips
            if stopped:
                break
            stats.add_step(engine.nonfinite.skipped)
            step += 1
            if bar is not None:
                bar.update(1)
            if step % loop.log_every == 0 or step == loop.total_steps:
                mean_loss, nonfinite_total, in_row = stats.read()
                dt = max(time.perf_counter() - t_window, 1e-9)
                mean_loss = all_reduce_mean(mean_loss, dist)
                scalars = {"loss": mean_loss, "lr": lr, "grad_norm": as_scalar(engine.grad_norm),
                           "clips_per_s": clips_window * dist.world_size / dt,
                           "data_wait": wait_window / dt, "memory_mb": memory_mb(dist.device),
                           "nonfinite_total": nonfinite_total,
                           "skipped_samples": sum(stream.skipped), **stage.scalars()}
                logger.scalars(step, scalars)
                totals.add(step, mean_loss, clips_window * dist.world_size, wait_window, dt)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                elif dist.is_main:
                    print(f"step {step}/{loop.total_steps} loss {mean_loss:.4f} lr {lr:.3g} "
                          f"clips/s {scalars['clips_per_s']:.1f} data-wait "
                          f"{100 * scalars['data_wait']:.0f}% eta "
                          f"{duration(totals.eta(step, loop.total_steps))}", file=sys.stderr)
                if in_row and dist.is_main:
                    print(f"{loop.name}: non-finite loss; {in_row} step(s) in a row up to step "
                          f"{step} left the weights unchanged ({nonfinite_total} in all)",
                          file=sys.stderr)
                if in_row >= loop.max_nonfinite:
                    last_tag = ckpt.latest_tag()
                    raise NonFiniteLoss(
                        f"the loss was NaN or inf {in_row} times in a row (up to step {step});"
                        f" stopping. The last good checkpoint ({last_tag or 'none yet'}) is "
                        f"intact. {loop.nonfinite_hint[:1].upper()}{loop.nonfinite_hint[1:]}")
                t_window, wait_window, clips_window = time.perf_counter(), 0.0, 0
            tag, off_training = stage.end_of_step(step)
            if off_training:  # an evaluation is neither training nor waiting for data
                t_window, wait_window, clips_window = time.perf_counter(), 0.0, 0
            if tag is not None:
                save(tag)
                last_saved = step
            if all_reduce_max([float(stop.signum is not None)], dist)[0] > 0:
                stopped = stop.signum or signal.SIGTERM
                break
            if (sig := injected_signal(step)) is not None:
                logger.flush()
                os.kill(os.getpid(), sig)
        if stopped and last_saved != step:
            save(f"step{step:08d}")
    except Exception as e:
        if dist.world_size == 1 or not is_comm_failure(e):
            raise
        # a process is gone (its node lost) or hung: the collectives cannot go on, and no
        # checkpoint can be completed (its COMPLETE marker waits on every rank)
        logger.flush()
        raise LostProcess(lost_process_line(loop.name, step, e, ckpt, dist)) from None
    finally:
        if hasattr(feed, "close"):
            feed.close()
        if hasattr(batches, "close"):
            try:                 # shuts the loader's workers down now, on every way out
                batches.close()
            except ValueError:   # still running on a prefetch thread that did not stop
                pass
        if bar is not None:
            bar.close()
    return LoopResult(step, stopped, stats, totals)


def lost_process_line(name: str, step: int, error: BaseException, ckpt, dist) -> str:
    """One line for a run whose collectives failed: who is gone, the last complete
    checkpoint, and how the run comes back."""
    from .distributed import describe_ranks, lost_ranks
    who = describe_ranks(lost_ranks(dist))
    tag = ckpt.latest_tag()
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    where = f"the last complete checkpoint is {os.path.join(ckpt.dir, tag)}" if tag else \
        "no checkpoint is complete yet"
    return (f"lost {who} during step {step + 1} ({reason}); {where}. Run the same command "
            f"on every node to resume once the node is back, or on the processes left "
            f"(the global batch is kept)")


def report_stopped(name: str, result: LoopResult, ckpt, dist):
    """The two lines a run stopped by a signal ends with (rank 0): its summary, and where it
    stands and how to go on."""
    if dist.is_main:
        print(result.totals.summary(result.step, os.path.join(ckpt.dir, ckpt.latest_tag() or "")),
              file=sys.stderr)
        print(f"{name}: stopped by signal {result.stopped}; checkpoint saved at step "
              f"{result.step}. Run the same command to resume.", file=sys.stderr)
