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

FORMAT = "tubemae-shards"
VERSION = 1
SPLITS = ("train", "val", "test")


def file_sha256(path: str) -> str:
    """The sha256 of a file, read in 1 MB blocks (what the manifest records per shard)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DataSetError(ValueError):
    """A prepared data set is missing, incomplete or does not match what was asked for."""


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

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def has_splits(path: str) -> bool:
    return not os.path.isfile(os.path.join(path, "manifest.json")) and any(
        os.path.isfile(os.path.join(path, s, "manifest.json")) for s in SPLITS)


def load_shard_set(path: str, split: str | None = None, verify: bool = True) -> ShardSet:
    """Open a prepared folder. With splits present, ``split`` picks one (default: train).

    Raises DataSetError naming the folder and the prep command when it is not a prepared set.
    """
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
        partial = os.path.isfile(os.path.join(path, ".progress.jsonl"))
        hint = ("prep was interrupted: re-run the same prep command to finish it" if partial else
                "prepare it with `python -m data.prep ...`")
        raise DataSetError(f"{path} is not a prepared shard set (no manifest.json); {hint}")
    try:
        with open(mpath) as f:
            m = json.load(f)
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
    shards = [Shard(url=os.path.join(path, s["name"]), name=s["name"], samples=s["samples"],
                    bytes=s["bytes"], sha256=s["sha256"]) for s in m["shards"]]
    if verify:
        for s in shards:
            try:
                size = os.path.getsize(s.url)
            except OSError:
                raise DataSetError(f"shard {s.url} listed in {mpath} is missing; re-run prep "
                                   f"into a new folder") from None
            if size != s.bytes:
                raise DataSetError(f"shard {s.url} has {size} bytes, the manifest says "
                                   f"{s.bytes}: it was changed or truncated; re-run prep")
    return ShardSet(root=path, kind=m["kind"], classes=list(m["classes"]), shards=shards,
                    options=m.get("options", {}), split=m.get("split"))
