"""Reading prepared data sets: a shard set (folder with manifest.json) or a folder of splits.

A shard set's manifest.json is the contract between prep and every reader: format version,
kind (video or volume), class names, the options prep ran with, and per shard its name, sample
count, bytes and sha256. Readers trust its counts and check what is cheap (files exist, sizes
match).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from .errors import DataSetError
from .store import (StoreOptions, check_url, child, is_remote, list_sizes, member,
                    read_if_there)

__all__ = ["DataSetError", "Shard", "ShardSet", "has_splits", "load_shard_set", "file_sha256"]

FORMAT = "tubemae-shards"
VERSION = 1
SPLITS = ("train", "val", "test")
INTERRUPTED = "prep was interrupted: re-run the same prep command to finish it"


def file_sha256(path: str) -> str:
    """The sha256 of a file, read in 1 MB blocks (what the manifest records per shard)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    url: str          # path (or any webdataset-openable address) of the tar
    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardSet:
    root: str
    kind: str
    classes: list
    shards: list
    options: dict = field(default_factory=dict)
    split: str | None = None
    io: StoreOptions | None = None    # how its shards are read from a store (data.store_*)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def has_splits(path: str) -> bool:
    if is_remote(path):
        return read_if_there(member(path, "manifest.json")) is None and any(
            read_if_there(member(child(path, s), "manifest.json")) is not None for s in SPLITS)
    return not os.path.isfile(os.path.join(path, "manifest.json")) and any(
        os.path.isfile(os.path.join(path, s, "manifest.json")) for s in SPLITS)


def _remote_manifest(path: str, split: str | None, options) -> tuple[str, bytes]:
    """(the set folder's URL, its manifest's bytes) of a set in a store; with splits, those of
    ``split`` (default train)."""
    check_url(path)
    text = read_if_there(member(path, "manifest.json"), options)
    if text is not None:
        return path, text
    found = []
    for s in SPLITS:
        text = read_if_there(member(child(path, s), "manifest.json"), options)
        if text is None:
            continue
        if s == (split or "train"):
            return child(path, s), text
        found.append(s)
    if found:
        raise DataSetError(f"{path} has no '{split or 'train'}' split (it has {found})")
    partial = any(read_if_there(member(where, ".progress.jsonl"), options) is not None
                  for where in [path] + [child(path, s) for s in SPLITS])
    hint = INTERRUPTED if partial else \
        f"check the URL, or prepare it with `python -m data.prep ... --out {path}`"
    raise DataSetError(f"{path} is not a prepared shard set (no manifest.json there); {hint}")


def load_shard_set(path: str, split: str | None = None, verify: bool = True,
                   options: StoreOptions | None = None) -> ShardSet:
    """Open a prepared folder, or a prepared set in a store (s3://, http(s)://, pipe:; see
    data/store.py). With splits present, ``split`` picks one (default: train).

    Raises DataSetError naming the folder and the prep command when it is not a prepared set.
    """
    if is_remote(path):
        options = options or StoreOptions()
        root, text = _remote_manifest(path, split, options)
        return _parse_manifest(root, "manifest.json", text, verify, options)
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise DataSetError(f"data set folder {path} does not exist; create it with "
                           f"`python -m data.prep {{videos,medmnist,synthetic}} ... --out {path}`")
    if has_splits(path):
        split = split or "train"
        sub = os.path.join(path, split)
        if not os.path.isfile(os.path.join(sub, "manifest.json")):
            present = [s for s in SPLITS if os.path.isfile(os.path.join(path, s, "manifest.json"))]
            raise DataSetError(f"{path} has no '{split}' split (it has {present})")
        path = sub
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isfile(mpath):
        partial = any(os.path.isfile(os.path.join(path, *s, ".progress.jsonl"))
                      for s in [()] + [(s,) for s in SPLITS])
        hint = INTERRUPTED if partial else "prepare it with `python -m data.prep ...`"
        raise DataSetError(f"{path} is not a prepared shard set (no manifest.json); {hint}")
    with open(mpath, "rb") as f:
        text = f.read()
    return _parse_manifest(path, mpath, text, verify, options)


def _parse_manifest(path: str, mpath: str, text: bytes, verify: bool, options) -> ShardSet:
    remote = is_remote(path)
    if remote:
        mpath = member(path, "manifest.json")
    try:
        m = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataSetError(f"{mpath} is not valid JSON ({e}); it was damaged: re-run prep into "
                           f"a new folder") from None
    if not isinstance(m, dict):
        raise DataSetError(f"{mpath} is not a tubemae manifest (a JSON object is expected)")
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise DataSetError(f"{mpath}: format {m.get('format')!r} v{m.get('version')} is not "
                           f"{FORMAT} v{VERSION}; re-run prep with this version of tubemae")
    missing = [k for k in ("kind", "classes", "shards") if k not in m]
    missing += [f"shards[{i}].{k}" for i, sh in enumerate(m.get("shards") or [])
                for k in ("name", "samples", "bytes", "sha256")
                if not isinstance(sh, dict) or k not in sh]
    if missing:
        raise DataSetError(f"{mpath} lacks {', '.join(missing[:5])}; it was damaged or "
                           f"hand-edited: re-run prep into a new folder")
    where = (lambda name: member(path, name)) if remote else \
        (lambda name: os.path.join(path, name))
    shards = [Shard(url=where(s["name"]), name=s["name"], samples=s["samples"],
                    bytes=s["bytes"], sha256=s["sha256"]) for s in m["shards"]]
    if verify:
        sizes = list_sizes(path, options) if remote else None
        for s in shards:
            if remote:
                if sizes is None:        # a store that cannot list: checked as each streams
                    break
                size = sizes.get(s.name)
            else:
                try:
                    size = os.path.getsize(s.url)
                except OSError:
                    size = None
            if size is None:
                raise DataSetError(f"shard {s.url} listed in {mpath} is missing; re-run prep "
                                   f"into a new folder") from None
            if size != s.bytes:
                raise DataSetError(f"shard {s.url} has {size} bytes, the manifest says "
                                   f"{s.bytes}: it was changed or truncated; re-run prep")
    return ShardSet(root=path, kind=m["kind"], classes=list(m["classes"]), shards=shards,
                    options=m.get("options", {}), split=m.get("split"), io=options)
