"""Reading shards: the sha256 check against the manifest, one worker's units read in order
keeping only the planned positions, and a raw tar sample decoded by explicit decoders."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Iterator

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_iterator

from . import shard_cache
from .decode import VIDEO_EXTS, VideoDecodeError
from .manifest import DataSetError, Shard, file_sha256
from .plan import Unit
from .store import RemoteReader, StoreOptions, is_remote

log = logging.getLogger("data.stream")


_VERIFIED: dict = {}  # shard path -> (its file's identity when hashed, whether it matched)


def _identity(path: str):
    """What changes when a file is rewritten or modified in place: its size, modification
    and change times, and inode."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _damaged(shard: Shard, strict: bool, why: str):
    msg = (f"shard {shard.url} does not match the sha256 in its manifest ({why}); repair it "
           f"by running the same prep command with --verify")
    if strict:
        raise DataSetError(msg)
    log.warning("%s; its samples are skipped", msg)


def shard_intact(shard: Shard, strict: bool = False) -> bool:
    """Whether a local shard's bytes have the sha256 its manifest recorded. Hashed the first
    time this process opens it (one read, small next to decoding its videos), and again
    whenever the file has changed since (size, modification or change time, inode): a shard
    rewritten or modified under a running job is caught before it is read again. A damaged
    shard is skipped with a warning, or stops the run under ``data.strict``."""
    if not shard.sha256:
        return True
    if is_remote(shard.url):        # checked while it streams (``open_shard``)
        return _VERIFIED.get(shard.url, (None, True))[1]
    try:
        ident = _identity(shard.url)
    except OSError:
        return True                 # gone: the reader says so, naming the shard
    known = _VERIFIED.get(shard.url)
    if known is None or known[0] != ident:
        why = "damaged after prep" if known is None else "it changed while the job ran"
        known = _VERIFIED[shard.url] = (ident, file_sha256(shard.url) == shard.sha256)
        if not known[1]:
            _damaged(shard, strict, why)
    return known[1]


class ShardReader:
    """Reads the samples of one worker's units, in order, keeping only wanted positions."""

    def __init__(self, shards: list[Shard], units: list[Unit], wanted: np.ndarray,
                 strict: bool = False, options: StoreOptions = StoreOptions()):
        self.shards, self.units, self.strict, self.options = shards, units, strict, options
        self.wanted = np.sort(wanted)
        self.offsets = np.concatenate([[0], np.cumsum([u.count for u in units])]).astype(int)

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        """(stream position, member number in its shard, raw sample)."""
        # each unit's wanted positions are one slice of the sorted array
        bounds = np.searchsorted(self.wanted, self.offsets)
        for ui, unit in enumerate(self.units):
            base = int(self.offsets[ui])
            local = set((self.wanted[bounds[ui]:bounds[ui + 1]] - base).tolist())
            if not local or not shard_intact(self.shards[unit.shard], self.strict):
                continue
            for j, sample in numbered_samples(self.shards[unit.shard].url, unit, local,
                                              self.shards[unit.shard], self.strict,
                                              self.options):
                yield base + j // unit.parts, j, sample


class _Checked:
    """A shard streamed from a store, hashed as it goes (and written to the cache when one is
    set); ``finish`` reads what the tar reader left (the archive's padding) and says whether
    the whole matched the manifest's sha256."""

    def __init__(self, shard: Shard, options: StoreOptions):
        self.shard, self.options = shard, options
        self.inner = RemoteReader(shard.url, options, size=shard.bytes)
        self.sha = hashlib.sha256()
        self.part = self.tee = None
        if options.cache_dir and shard.sha256:
            self.part, self.tee = shard_cache.part_file(options.cache_dir, shard.sha256)

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha.update(data)
        if self.tee is not None:
            self.tee.write(data)
        return data

    def finish(self) -> bool:
        while self.read(1 << 20):
            pass
        ok = not self.shard.sha256 or self.sha.hexdigest() == self.shard.sha256
        if self.tee is not None:
            self.tee.close()
            self.tee = None
            if ok:
                shard_cache.admit(self.options.cache_dir, self.part, self.shard.sha256,
                                  self.options.cache_size)
                self.part = None
        return ok

    def close(self):
        self.inner.close()
        if self.tee is not None:
            self.tee.close()
        if self.part is not None:        # not read whole, or did not match: not cached
            try:
                os.remove(self.part)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_shard(shard: Shard | str, options: StoreOptions = StoreOptions()):
    """A binary stream of a shard: its local file, its cached copy, or the store's object
    (``_Checked``)."""
    if isinstance(shard, str):
        shard = Shard(url=shard, name=os.path.basename(shard), samples=0, bytes=0, sha256="")
    if not is_remote(shard.url):
        return open(shard.url, "rb")
    if options.cache_dir and shard.sha256:
        path = shard_cache.lookup(options.cache_dir, shard.sha256, shard.bytes)
        if path is not None:
            return open(path, "rb")
    if not shard.bytes:
        shard = Shard(shard.url, shard.name, shard.samples, None, shard.sha256)
    return _Checked(shard, options)


def numbered_samples(url: str, unit: Unit, local: set, shard: Shard | None = None,
                     strict: bool = False, options: StoreOptions = StoreOptions(),
                     to_end: bool = True) -> Iterator[tuple[int, dict]]:
    """(member number j in the shard, raw sample) for the unit's samples in ``local``.

    With ``shard``: a local file is looked at again when the read ends (one changed meanwhile,
    which moves its change time, is hashed again and a mismatch reported and the shard
    skipped from then on); a shard streamed from a store is hashed as it streams, and a
    mismatch at its end is reported, naming the URL, and the shard skipped from then on (under
    ``data.strict`` both stop the run). A store that fails for longer than the patience stops
    the run (``StoreError``). ``to_end=False`` stops reading after the last wanted sample
    (a look at a few samples; no sha256 check then)."""
    counter = {"key": None, "j": -1}
    numbers: dict = {}

    def select(fname: str) -> bool:
        key = fname.split(".", 1)[0]
        if key != counter["key"]:
            counter["key"], counter["j"] = key, counter["j"] + 1
            numbers[key] = counter["j"]
        j = counter["j"]
        return j % unit.parts == unit.part and (j // unit.parts) in local

    remote = is_remote(url)
    check = shard is not None and bool(shard.sha256) and not remote
    try:
        before = _identity(url) if check else None
        with open_shard(shard if shard is not None else url, options) as stream:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream, select_files=select))
            left = len(local)
            for sample in group_by_keys(files):
                yield numbers.pop(sample["__key__"]), sample
                for k in [k for k, v in numbers.items() if v < counter["j"] - 1]:
                    del numbers[k]
                left -= 1
                if not to_end and left <= 0:
                    return
            if isinstance(stream, _Checked) and not stream.finish():
                _VERIFIED[url] = (None, False)
                _damaged(shard, strict, "found while it streamed; the samples already read "
                                        "from it were used")
        if before is not None and _identity(url) != before:
            ok = file_sha256(url) == shard.sha256
            _VERIFIED[url] = (_identity(url), ok)
            if not ok:
                _damaged(shard, strict, "it changed while it was being read")
    except DataSetError:
        raise
    except Exception as e:  # a truncated or unreadable shard: keep what was read
        log.warning("shard %s is damaged (%s); its remaining samples are skipped", url, e)


def leading_samples(shard_set, limit: int) -> Iterator[dict]:
    """The first ``limit`` raw samples of a shard set, in shard order (a look at a set, not a
    training stream: no shuffle, no hash check)."""
    from .plan import plan_units
    left = limit
    for s, unit in zip(shard_set.shards, plan_units([s.samples for s in shard_set.shards], 1)):
        if left <= 0:
            return
        for _, raw in numbered_samples(s.url, unit, set(range(min(unit.count, left))),
                                       options=shard_set.io or StoreOptions(), to_end=False):
            left -= 1
            yield raw


def sample_metadata(shard_set) -> Iterator[tuple[str, dict]]:
    """(sample key, its json) for every sample of a local shard set, reading the tar headers
    and the json members only (the payloads are seeked over), for preflight checks before a
    run."""
    import tarfile
    for shard in shard_set.shards:
        if is_remote(shard.url):
            continue
        try:
            with tarfile.open(shard.url, "r:") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        key = member.name.rsplit(".", 1)[0]
                        yield key, json.loads(tar.extractfile(member).read())
        except (OSError, tarfile.TarError, ValueError):
            continue        # a damaged shard: the readers warn and skip it


def decode_sample(raw: dict) -> tuple[str, object, int]:
    """Raw tar sample -> ('video', bytes, label) or ('volume', ndarray, label).

    Only explicit decoders: video bytes, npy (no pickle), json, cls.
    """
    label = int(raw["cls"]) if "cls" in raw else int(json.loads(raw["json"])["label"])
    if "npy" in raw:
        return "volume", np.load(io.BytesIO(raw["npy"]), allow_pickle=False), label
    for ext in VIDEO_EXTS:
        if ext in raw:
            return "video", raw[ext], label
    raise VideoDecodeError(f"sample {raw.get('__key__')} holds no video or npy payload")
