"""A k-shot copy of a prepared set: ``k`` training samples per class, the same val and test.

    python -m data.prep subset shards/organ28 --per-class 16 --seed 0 --out shards/organ28_k16

The k samples of each class are a seeded draw from the source's train split (the same seed gives
the same samples; k=16 with seed s holds the samples of k=4 with seed s, so budgets nest).
val/ and test/ are links to the source's folders (for a source in a store, to one local copy of
them beside the subset). The train shards are rewritten (samples
unchanged, bytes copied), with the usual manifest and resume, so every reader treats the copy
like any prepared set.
"""
from __future__ import annotations

import os
import sys
import tarfile
from collections import defaultdict

import numpy as np

from ..manifest import SPLITS, DataSetError, has_splits, load_shard_set
from ..shard_reader import open_shard
from ..store import StoreOptions, child, is_remote, read_bytes, read_if_there
from ..store import member as member_of
from .runner import write_shard_set


def mirror_split(src: str, dest: str):
    """A local copy of the split folder ``src`` of a set in a store (its shards, checked
    against their sha256, then failures.jsonl and manifest.json last); kept when it is
    already whole."""
    import hashlib
    import json
    from ..atomic import write_text_atomic
    if os.path.isfile(os.path.join(dest, "manifest.json")):
        return dest
    os.makedirs(dest, exist_ok=True)
    ss = load_shard_set(src)
    for shard in ss.shards:
        path = os.path.join(dest, shard.name)
        if os.path.isfile(path) and os.path.getsize(path) == shard.bytes:
            continue
        h = hashlib.sha256()
        with open_shard(shard) as f, open(path + ".tmp", "wb") as out:
            while block := f.read(1 << 20):
                h.update(block)
                out.write(block)
        if h.hexdigest() != shard.sha256:
            os.remove(path + ".tmp")
            raise DataSetError(f"shard {shard.url} does not match the sha256 in its manifest; "
                               f"repair the set in the store (prep with --verify)")
        os.replace(path + ".tmp", path)
    manifest = read_bytes(member_of(ss.root, "manifest.json")).decode()
    json.loads(manifest)
    failures = (read_if_there(member_of(ss.root, "failures.jsonl")) or b"").decode()
    write_text_atomic(os.path.join(dest, "failures.jsonl"), failures)
    write_text_atomic(os.path.join(dest, "manifest.json"), manifest)
    return dest


def read_samples(shard_set) -> list[dict]:
    """Every sample of a shard set as the dict the shard writer takes (bytes per extension);
    a set in a store is streamed."""
    out = []
    for shard in shard_set.shards:
        current: dict = {}
        with open_shard(shard, shard_set.io or StoreOptions()) as f, \
                tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if current and current["__key__"] != key:
                    out.append(current)
                    current = {}
                current["__key__"] = key
                current[ext] = tar.extractfile(member).read()
        if current:
            out.append(current)
    return out


def choose(labels: list[int], per_class: int, seed: int) -> list[int]:
    """Indices of ``per_class`` samples of each class, a seeded draw; in the source's order.
    A class with fewer samples gives all it has. Nested: the first k of a class's seeded order,
    so a smaller k's samples are inside a larger k's."""
    by_class = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    keep = []
    for y in sorted(by_class):
        idx = by_class[y]
        order = np.random.default_rng([seed, y]).permutation(len(idx))
        keep += [idx[j] for j in order[:per_class]]
    return sorted(keep)


def make_subset(src: str, out: str, per_class: int, seed: int = 0) -> dict:
    if not has_splits(src):
        raise DataSetError(f"{src} has no train/val/test splits to subsample")
    if per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {per_class}")
    train = load_shard_set(src, "train")
    samples = read_samples(train)
    labels = [int(s["cls"]) for s in samples]
    keep = choose(labels, per_class, seed)
    short = {train.classes[y]: n for y, n in enumerate(np.bincount(
        [labels[i] for i in keep], minlength=train.num_classes)) if n < per_class}
    if short:
        print(f"subset: classes with fewer than {per_class} training samples keep all they "
              f"have: {short}", file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    for split in SPLITS[1:]:
        link = os.path.join(out, split)
        if not os.path.lexists(link):
            if is_remote(src):   # one local copy of a store's val and test, beside the subsets
                import hashlib
                tag = hashlib.sha256(src.encode()).hexdigest()[:12]
                target = mirror_split(child(src, split), os.path.join(
                    os.path.dirname(os.path.abspath(out)), f".source-{tag}", split))
            else:
                target = os.path.abspath(os.path.join(src, split))
            os.symlink(target, link)
    options = {"source": src if is_remote(src) else os.path.abspath(src),
               "per_class": per_class, "seed": seed,
               "source_options": train.options}
    chosen = [samples[i] for i in keep]
    return write_shard_set(os.path.join(out, "train"), train.kind, train.classes, options,
                           list(range(len(chosen))),
                           lambda i: {"ok": True, "sample": chosen[i]},
                           source_of=lambda i: chosen[i]["__key__"], workers=0,
                           max_samples=1000, max_bytes=1 << 30, split="train")
