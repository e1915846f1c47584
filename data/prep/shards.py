"""Writing one shard set: numbered WebDataset tars, manifest.json, failures.jsonl.

Shards are written as ``NAME.tmp`` and renamed (or uploaded: ``folder.py``) when complete; each completed shard is appended
to ``.progress.jsonl`` together with the inputs it consumed and the failures among them. After an
interruption the writer reopens the folder, drops anything not in the journal and reports where
to continue, so a resumed prep ends with the same shards as an uninterrupted one. The manifest is
written last: its presence means the set is complete.
"""
from __future__ import annotations

import hashlib
import json
import os

import webdataset as wds

from ..manifest import FORMAT, VERSION
from .folder import open_folder

JOURNAL = ".progress.jsonl"


class _HashingFile:
    """A write-only file that counts and hashes what passes through it."""

    def __init__(self, path: str):
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.failed = False

    def write(self, b) -> int:
        if self.failed:   # the shard is discarded: later writes (the tar stream flushing when
            return len(b)  # it is collected) must not raise a second time
        self.sha.update(b)
        self.size += len(b)
        try:
            return self.f.write(b)
        except OSError:
            self.failed = True
            self.f.close()
            raise

    def flush(self):
        if not self.failed:
            self.f.flush()

    def close(self):
        if self.failed:
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class ShardSetWriter:
    """Append samples in input order; shards roll over at ``max_samples`` or ``max_bytes``.

    ``options`` (what prep ran with) is stored in the journal and the manifest; reopening a
    folder written with different options is refused, since the shards would not match.
    """

    def __init__(self, out_dir, kind: str, classes: list, options: dict,
                 max_samples: int = 1000, max_bytes: int = 1 << 30, split: str | None = None):
        self.folder = open_folder(out_dir) if isinstance(out_dir, str) else out_dir
        self.out_dir = self.folder.shown
        self.kind, self.classes, self.options, self.split = kind, list(classes), options, split
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[dict] = []
        self.failures: list[dict] = []
        self.next_input = 0
        self._pending_failures: list[dict] = []
        self._file = self._tar = None
        self._count = 0
        self._load_journal()

    # -- resume -------------------------------------------------------------------------
    def _header(self) -> dict:
        return {"header": True, "kind": self.kind, "classes": self.classes,
                "options": self.options, "max_samples": self.max_samples,
                "max_bytes": self.max_bytes}

    def _load_journal(self):
        records = []
        lines = (self.folder.read_text(JOURNAL) or "").splitlines(keepends=True)
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by the interruption: everything after it is redone
        if records and records[0] != self._header():
            raise FileExistsError(
                f"{self.out_dir} holds an unfinished prep with other options or classes; "
                f"re-run with the same arguments, or choose a new --out")
        if not records:
            self.folder.write_text(JOURNAL, json.dumps(self._header()) + "\n")
        good = []
        for r in records[1:]:
            if "name" in r and self.folder.size(r["name"]) != r["bytes"]:
                break
            good.append(r)
        if records and len(good) != len(lines) - 1:  # drop a torn line, and the tail with no shard behind it
            self.folder.write_text(JOURNAL, "".join(json.dumps(r) + "\n"
                                                    for r in [records[0]] + good))
        for r in good:
            if "name" in r:
                self.shards.append({k: r[k] for k in ("name", "samples", "bytes", "sha256")})
            self.failures.extend(r["failures"])
            self.next_input = r["inputs_end"]
        keep = {s["name"] for s in self.shards}
        for name in self.folder.names():
            if (name.endswith(".tar") or name.endswith(".tar.tmp")) and name not in keep:
                self.folder.remove(name)
        self.folder.clear_tmp()

    # -- writing ------------------------------------------------------------------------
    def _shard_name(self, i: int) -> str:
        return f"shard-{i:06d}.tar"

    def _open(self):
        name = self._shard_name(len(self.shards))
        self._file = _HashingFile(self.folder.local(name) + ".tmp")
        # Fixed mtime and owner: the same samples always give the same bytes.
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0, user="tubemae",
                                  group="tubemae")
        self._name, self._count = name, 0

    def _journal(self, record: dict):
        self.folder.append_line(JOURNAL, json.dumps(record) + "\n")

    def _finish(self, inputs_end: int):
        self._tar.close()  # closes the tar stream and the hashing file
        self._file.close()
        self.folder.publish(self._name, self.folder.local(self._name) + ".tmp")
        entry = {"name": self._name, "samples": self._count, "bytes": self._file.size,
                 "sha256": self._file.sha.hexdigest()}
        self._journal({**entry, "inputs_end": inputs_end, "failures": self._pending_failures})
        self.shards.append(entry)
        self.failures.extend(self._pending_failures)
        self._pending_failures = []
        self._tar = self._file = None

    def add(self, input_index: int, sample: dict):
        """Write one sample ({'__key__': str, ext: bytes, ...}) made from input ``input_index``."""
        assert input_index >= self.next_input, "inputs must be added in order"
        if self._tar is not None and (self._count >= self.max_samples or
                                      self._file.size >= self.max_bytes):
            self._finish(inputs_end=input_index)
        if self._tar is None:
            self._open()
        self._tar.write(sample)
        self._count += 1
        self.next_input = input_index + 1

    def fail(self, input_index: int, source: str, reason: str):
        """Record an input that could not be used; the run goes on."""
        self._pending_failures.append({"index": input_index, "source": source, "reason": reason})
        self.next_input = input_index + 1

    def close(self) -> dict:
        """Finish the last shard, write failures.jsonl and manifest.json; return the manifest."""
        if self._tar is not None:
            self._finish(inputs_end=self.next_input)
        elif self._pending_failures:
            self._journal({"inputs_end": self.next_input, "failures": self._pending_failures})
            self.failures.extend(self._pending_failures)
            self._pending_failures = []
        self.folder.write_text("failures.jsonl",
                               "".join(json.dumps(f) + "\n" for f in self.failures))
        manifest = {
            "format": FORMAT, "version": VERSION, "kind": self.kind, "split": self.split,
            "classes": self.classes, "options": self.options,
            "num_samples": sum(s["samples"] for s in self.shards),
            "num_bytes": sum(s["bytes"] for s in self.shards),
            "num_failures": len(self.failures), "shards": self.shards,
        }
        self.folder.write_text("manifest.json", json.dumps(manifest, indent=1) + "\n")
        return manifest


def encode_sample(key: str, payload_ext: str, payload: bytes, meta: dict) -> dict:
    """The on-disk sample: payload bytes, json metadata, cls label (explicit bytes, no pickle)."""
    return {"__key__": key, payload_ext: payload,
            "json": json.dumps(meta, sort_keys=True).encode(),
            "cls": str(int(meta["label"])).encode()}


def safe_key(index: int, stem: str) -> str:
    """A WebDataset key: unique by input index, readable, without dots or slashes."""
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:80]
    return f"{index:08d}_{clean}" if clean else f"{index:08d}"
