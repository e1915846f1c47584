"""A local cache of shards streamed from a store (``data.cache_dir``, ``data.cache_size``).

A cached shard is named by the sha256 its manifest records, so two sets holding the same shard
share one file and a shard rewritten under the same name is never confused with the old one.
A shard enters the cache only after it streamed whole and matched its sha256; a cached file is
hashed again the first time each process uses it (and whenever it changed since), and one that
no longer matches is deleted and streamed again. The least recently used shards are evicted when
the cache holds more than its size.
"""
from __future__ import annotations

import contextlib
import logging
import os

from .manifest import file_sha256

log = logging.getLogger("data.store")

_CHECKED: dict = {}    # cached file -> its identity when it was hashed and found intact


def cached_path(cache_dir: str, sha256: str) -> str:
    return os.path.join(cache_dir, f"{sha256}.tar")


def _identity(path: str):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def lookup(cache_dir: str, sha256: str, size: int) -> str | None:
    """The cached file of this shard when it is there and intact, else None (a damaged one is
    deleted, so the shard is streamed and cached again)."""
    path = cached_path(cache_dir, sha256)
    try:
        ident = _identity(path)
    except OSError:
        return None
    if _CHECKED.get(path) != ident:
        if ident[0] != size or file_sha256(path) != sha256:
            log.warning("cached shard %s is damaged; it is fetched again", path)
            with contextlib.suppress(OSError):
                os.remove(path)
            _CHECKED.pop(path, None)
            return None
    with contextlib.suppress(OSError):
        os.utime(path)               # most recently used (the file's times: shared by workers)
    _CHECKED[path] = _identity(path)
    return path


def part_file(cache_dir: str, sha256: str):
    """A file to stream a shard into, beside its final name (unique per process and thread)."""
    import threading
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f".{sha256}.{os.getpid()}.{threading.get_ident()}.part")
    return path, open(path, "wb")


def admit(cache_dir: str, part: str, sha256: str, limit: int):
    """Move a streamed and checked shard into the cache, then evict the least recently used
    shards beyond ``limit`` bytes (never the one just added)."""
    final = cached_path(cache_dir, sha256)
    os.replace(part, final)
    _CHECKED[final] = _identity(final)
    evict(cache_dir, limit, keep=final)


def evict(cache_dir: str, limit: int, keep: str | None = None):
    entries = []
    for name in os.listdir(cache_dir):
        if not name.endswith(".tar"):
            continue
        path = os.path.join(cache_dir, name)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            entries.append((st.st_mtime_ns, st.st_size, path))
    total = sum(e[1] for e in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if path == keep:
            continue
        with contextlib.suppress(OSError):       # another worker may have evicted it first
            os.remove(path)
            _CHECKED.pop(path, None)
        total -= size
