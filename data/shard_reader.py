"""Reading shards: the sha256 check against the manifest, one worker's units read in order
keeping only the planned positions, and a raw tar sample decoded by explicit decoders."""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Iterator

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .decode import VIDEO_EXTS, VideoDecodeError
from .manifest import DataSetError, Shard, file_sha256
from .plan import Unit

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
    if not shard.sha256 or "://" in shard.url:
        return True
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
                 strict: bool = False):
        self.shards, self.units, self.strict = shards, units, strict
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
                                              self.shards[unit.shard], self.strict):
                yield base + j // unit.parts, j, sample


def numbered_samples(url: str, unit: Unit, local: set, shard: Shard | None = None,
                     strict: bool = False) -> Iterator[tuple[int, dict]]:
    """(member number j in the shard, raw sample) for the unit's samples in ``local``. With
    ``shard`` (a local one with a sha256), its file is looked at again when the read ends:
    one changed meanwhile (any write moves its change time) is hashed again, and a mismatch is
    reported and the shard skipped from then on."""
    counter = {"key": None, "j": -1}
    numbers: dict = {}

    def select(fname: str) -> bool:
        key = fname.split(".", 1)[0]
        if key != counter["key"]:
            counter["key"], counter["j"] = key, counter["j"] + 1
            numbers[key] = counter["j"]
        j = counter["j"]
        return j % unit.parts == unit.part and (j // unit.parts) in local

    check = shard is not None and bool(shard.sha256) and "://" not in url
    try:
        before = _identity(url) if check else None
        with wds.gopen(url, "rb") as stream:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream, select_files=select))
            for sample in group_by_keys(files):
                yield numbers.pop(sample["__key__"]), sample
                for k in [k for k, v in numbers.items() if v < counter["j"] - 1]:
                    del numbers[k]
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
        for _, raw in numbered_samples(s.url, unit, set(range(min(unit.count, left)))):
            left -= 1
            yield raw


def sample_metadata(shard_set) -> Iterator[tuple[str, dict]]:
    """(sample key, its json) for every sample of a local shard set, reading the tar headers
    and the json members only (the payloads are seeked over), for preflight checks before a
    run."""
    import tarfile
    for shard in shard_set.shards:
        if "://" in shard.url:
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
