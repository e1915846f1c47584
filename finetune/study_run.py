"""Running the study's plan: the k-shot subsets and encoders it needs made on disk, a config per
run, and the runs themselves, ``--jobs`` at once in spawned processes."""
from __future__ import annotations

import contextlib
import functools
import json
import os

from pretrain.runtime.cli import StopSignal


def load_report(path: str) -> dict | None:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def subset_for(spec, k: str, seed: int) -> str:
    """The k-shot copy of the set for ``seed`` (nested over k), made once; ``all`` is the set."""
    if k == "all":
        return spec.set
    from data.prep.subset import make_subset
    out = os.path.join(spec.out, "data", f"k{k}_s{seed}")
    if not load_report(os.path.join(out, "train", "manifest.json")):
        make_subset(spec.set, out, int(k), seed)
    return out


def untrained_encoder(spec, seed: int) -> str:
    """The pre-training model's encoder at step 0 (its own initialisation, seeded by ``seed``)
    in the geometry of the study's encoder: the control that tells what pre-training added
    beyond the init scheme (the fine-tuning models start new layers differently)."""
    from pretrain.encoder_file import export_encoder, read_meta
    from pretrain.model import ModelConfig, initial_model
    out = os.path.join(spec.out, "untrained", f"s{seed}")
    if os.path.isfile(os.path.join(out, "encoder.safetensors")):
        return out
    src = spec.encoder
    meta = read_meta(src)
    if meta is None:
        raise ValueError(f"--inits untrained builds the pre-training model in the geometry of "
                         f"--encoder, read from its encoder.json; {src} has none (it works "
                         f"with our exports)")
    model = initial_model(ModelConfig(**meta["model"]), seed)
    export_encoder(model.state_dict(), model.cfg, out, {"untrained": True, "seed": seed,
                                                        "geometry_of": src})
    return out


def init_for(spec, init: str, seed: int) -> str:
    """``run.init`` of an init: the study's encoder, none (scratch), or the untrained one."""
    if init == "pretrained":
        return spec.encoder
    if init == "scratch":
        return ""
    return untrained_encoder(spec, seed)


def config_for(spec, shards: str, run_dir: str, init: str, seed: int):
    """The fine-tuning config of one run: the recipe, the study's overrides, and
    ``data.repeats`` set so an epoch sees about ``clips_per_epoch`` clips."""
    from data.manifest import load_shard_set
    from pretrain.runtime.config import load_config
    from .train import FinetuneConfig
    n = load_shard_set(shards, "train").num_samples
    repeats = max(1, round(spec.clips_per_epoch / max(1, n)))
    return load_config(spec.config, [
        f"data.repeats={repeats}", *spec.overrides, f"data.shards={shards}",
        f"run.dir={run_dir}", f"run.init={init}", f"run.seed={seed}"], schema=FinetuneConfig)


@functools.lru_cache(maxsize=None)
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, once per version of it (size and mtime): every run of a study shares
    the same encoder, which need not be read again for each."""
    from data.manifest import file_sha256
    return file_sha256(path)


def run_key(cfg) -> dict:
    """What a study run's result depends on: the init's content (sha256 of its weights, not
    its path: an encoder re-exported in place is another encoder), the resolved config without
    the run folder, and the contents of the data (the sha256 of every shard of every split)."""
    import hashlib
    from data.manifest import has_splits, load_shard_set
    from pretrain.runtime.config import to_dict
    init = cfg.run.init
    if init and os.path.isdir(init):
        init = os.path.join(init, "encoder.safetensors")
    config = to_dict(cfg)
    config["run"] = {k: v for k, v in config["run"].items() if k not in ("dir", "init")}
    splits = ("train", "val", "test") if has_splits(cfg.data.shards) else (None,)
    data = {str(sp): [s.sha256 for s in load_shard_set(cfg.data.shards, sp, verify=False).shards]
            for sp in splits}
    config["data"] = {k: v for k, v in config["data"].items() if k != "shards"}
    if init:
        st = os.stat(init)
        init = _content_sha256(os.path.realpath(init), st.st_size, st.st_mtime_ns)
    text = json.dumps({"init": init or None, "config": config,
                       "data": data}, sort_keys=True)
    return {"key": hashlib.sha256(text.encode()).hexdigest(), "init": cfg.run.init or None}


def claim_run_dir(run_dir: str, key: dict) -> str | None:
    """Make ``run_dir`` this run's: a folder left by a run with another key (another encoder,
    config or data in the same --out) is moved aside, never reused; returns where it went."""
    mark = os.path.join(run_dir, "study_run.json")
    old = load_report(mark) if os.path.isdir(run_dir) else None
    moved = None
    if os.path.isdir(run_dir) and (old or {}).get("key") != key["key"]:
        n = 1
        while os.path.exists(f"{run_dir}.stale{n}"):
            n += 1
        moved = f"{run_dir}.stale{n}"
        os.replace(run_dir, moved)
    os.makedirs(run_dir, exist_ok=True)
    with open(mark, "w") as f:
        json.dump(key, f)
    return moved


def _worker_init(threads: int):
    import torch
    torch.set_num_threads(threads)


def execute(what: str, cfg) -> None:
    """One fine-tune or probe run (in the study's process or a pool worker)."""
    from .probe import run_probe
    from .train import train
    if what == "probe":
        run_probe(cfg)
    elif train(cfg).get("stopped_by_signal"):   # checkpointed; the same command resumes it
        import signal
        raise StopSignal(signal.SIGTERM)


@contextlib.contextmanager
def sigterm_interrupts():
    """Within: SIGTERM and SIGINT raise StopSignal in this (main) thread."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise StopSignal(signum)
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_ignored():
    """Within: SIGINT and SIGTERM ignored; processes started here inherit that (across spawn's
    exec too), so a signal to the whole group cannot kill one that is still importing."""
    import signal
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


STOP_GRACE_S = 120.0   # how long a stopped study waits for its runs to checkpoint


def run_pool(todo: list[tuple], jobs: int, fn=execute, grace: float = STOP_GRACE_S):
    """Run (what, config) jobs through ``fn``, ``jobs`` at once in spawned processes with
    cores/jobs threads each, or in this process (a single job too gets cores/jobs threads,
    so a run's numbers do not depend on how many others are left).

    A SIGTERM or SIGINT (to this process or its whole group) stops the study the way a single
    fine-tune stops: the workers were born ignoring both, so none dies half-way; a fine-tune
    running in one has its own handlers, gets the signal (passed on here if it came to the
    study alone), checkpoints and returns; jobs not started are cancelled. Whatever is still
    running after ``grace`` seconds is killed. Then StopSignal is raised here."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs > 1 and len(todo) > 1:
        import concurrent.futures as cf
        import multiprocessing as mp
        import signal
        with _signals_ignored():
            pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                          initializer=_worker_init, initargs=(threads,))
            futures = [pool.submit(fn, what, cfg) for what, cfg in todo]
        try:
            with sigterm_interrupts():
                for f in cf.as_completed(futures):
                    f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            procs = [p for p in (getattr(pool, "_processes", None) or {}).values()]
            for proc in procs:
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
            with _signals_ignored():         # a second signal must not cut the wait short
                cf.wait([f for f in futures if not f.cancelled()], timeout=grace)
                for proc in procs:
                    if proc.is_alive():
                        proc.kill()
            raise
        finally:
            # every worker has finished or was killed above: waiting joins the executor's
            # thread now, instead of leaving it to race the interpreter's exit
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        # One job left (a resumed study, a grid of one) runs here, on the threads it would have
        # had in the pool: the thread count sets the order of sums, so a run's numbers would
        # otherwise depend on how many other runs its study had left.
        import torch
        before = torch.get_num_threads()
        if jobs > 1:
            _worker_init(threads)
        try:
            with sigterm_interrupts():
                for what, cfg in todo:
                    fn(what, cfg)
        finally:
            torch.set_num_threads(before)
