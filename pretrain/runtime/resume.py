"""Whether a run folder may be resumed with the settings given now."""
from __future__ import annotations

import os

import yaml

# Sections a resumed run may change; anything else must match the run's config.yaml.
RESUMABLE_SECTIONS = ("train", "log")
# Keys a resumed run may change: where videos are decoded changes no clip's frames or crop; the
# loader workers, the per-process batch and the accumulation change no step's samples (the
# stream refuses a split that would: ``data.stream.LayoutError``).
RESUMABLE_KEYS = ("data.decode", "data.num_workers", "data.batch_size", "runtime.grad_accum",
                  "runtime.comm_timeout")
# Paths compared by what they point at (a relative path, a/../b, a trailing slash, ~); run.dir
# is not compared at all: the folder holding config.yaml is the run, moved or copied. A
# data.shards elsewhere holding the same set (every shard's name and sha256) is the same data:
# a set copied to object storage continues the run there.
PATH_KEYS = ("data.shards", "run.init")


def check_resume_config(run_dir: str, now: dict, sections=RESUMABLE_SECTIONS,
                        keys=RESUMABLE_KEYS, path_keys=PATH_KEYS):
    """Refuse to resume the run in ``run_dir`` with settings (``now``, the config as nested
    dicts) that would make it a different run; names every changed key. A run folder without a
    finished checkpoint holds no work to protect: a corrected command starts it over."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path) or not has_checkpoint(run_dir):
        return
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    diffs = []
    for section, values in now.items():
        if section in sections or not isinstance(values, dict):
            continue
        for k, v in values.items():
            old = saved.get(section, {}).get(k)
            if f"{section}.{k}" == "run.dir" or f"{section}.{k}" in keys:
                continue
            if f"{section}.{k}" in path_keys and isinstance(v, str) and isinstance(old, str) \
                    and _same_path(old, v):
                continue
            if f"{section}.{k}" == "data.shards" and isinstance(v, str) and \
                    isinstance(old, str) and _same_set(old, v):
                continue
            if old != v:
                diffs.append(f"{section}.{k}: {old!r} -> {v!r}")
    if diffs:
        raise ValueError(f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); "
                         f"resume with the settings of {path}, or choose a new run.dir")


def _same_path(a: str, b: str) -> bool:
    from data.store import same_place
    if not a or not b:
        return a == b
    return same_place(a, b)


def _same_set(a: str, b: str) -> bool:
    """Whether two places hold the same prepared set (every split's shard names and sha256):
    a set copied to a store, or moved, continues the run."""
    from data.manifest import SPLITS, DataSetError, has_splits, load_shard_set

    def content(path):
        splits = SPLITS if has_splits(path) else (None,)
        return {s: [(x.name, x.sha256) for x in load_shard_set(path, s, verify=False).shards]
                for s in splits}
    try:
        return content(a) == content(b)
    except (DataSetError, OSError, ValueError):
        return False


def has_checkpoint(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a finished checkpoint (one with its COMPLETE marker)."""
    ckpts = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(ckpts) and any(os.path.isfile(os.path.join(ckpts, t, "COMPLETE"))
                                        for t in os.listdir(ckpts))
