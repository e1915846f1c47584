"""Where prep writes one shard set: a local folder, or a prefix in S3 (``--out s3://...``).

Both take the same steps from the writer: a shard is written to a local temporary file and
*published* when finished (renamed into place; or uploaded, then the local copy deleted), then
its journal line is added (the journal is uploaded again after each shard), and
``manifest.json`` is written last, so a set without it is never taken as complete, and an
interrupted prep continues from what the journal lists, on this machine or another.
"""
from __future__ import annotations

import hashlib
import os

from .. import store
from ..atomic import write_text_atomic
from ..manifest import file_sha256


def staging_for(url: str) -> str:
    """The local folder that holds the shard being written to ``url`` and a copy of its
    journal (``--staging``, or under the cache)."""
    base = os.environ.get("TUBEMAE_STAGING") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tubemae",
        "prep-staging")
    return os.path.join(base, hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16])


def check_out(out: str) -> str:
    """``out`` when prep can write there (a local folder or s3://), else a one-line error."""
    if store.is_remote(out) and not out.startswith("s3://"):
        raise ValueError(f"--out {out}: prep writes to a local folder or to s3:// (an "
                         f"S3-compatible store through AWS_ENDPOINT_URL); for another store, "
                         f"prep locally and copy the folder")
    return store.check_url(out, "--out") if store.is_remote(out) else out


def open_folder(out: str):
    if store.is_remote(check_out(out)):
        return StoreFolder(out)
    return LocalFolder(out)


class LocalFolder:
    def __init__(self, path: str):
        self.path = self.shown = path
        os.makedirs(path, exist_ok=True)

    def url(self, name: str) -> str:
        return os.path.join(self.path, name)

    def local(self, name: str) -> str:
        """Where a file is written before it is published."""
        return os.path.join(self.path, name)

    def size(self, name: str) -> int | None:
        try:
            return os.path.getsize(self.url(name))
        except OSError:
            return None

    def read_text(self, name: str) -> str | None:
        try:
            with open(self.url(name)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str):
        write_text_atomic(self.url(name), text)

    def append_line(self, name: str, line: str):
        with open(self.url(name), "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def publish(self, name: str, tmp: str):
        os.replace(tmp, self.url(name))

    def remove(self, name: str):
        os.remove(self.url(name))

    def names(self) -> list[str]:
        return os.listdir(self.path)

    def clear_tmp(self):
        pass          # the ``.tmp`` files are among ``names``

    def sha256(self, name: str) -> str:
        return file_sha256(self.url(name))


class StoreFolder:
    """A prefix in S3. Listed once when opened (what the journal lists is checked against it);
    the journal's local copy in the staging folder is appended to and uploaded whole."""

    def __init__(self, url: str):
        self.path = self.shown = url.rstrip("/")
        self.staging = staging_for(self.path)
        os.makedirs(self.staging, exist_ok=True)
        self.sizes = store.list_sizes(self.path)
        self._texts: dict = {}      # what this process wrote, by name

    def url(self, name: str) -> str:
        return store.member(self.path, name)

    def local(self, name: str) -> str:
        return os.path.join(self.staging, name)

    def size(self, name: str) -> int | None:
        return self.sizes.get(name)

    def read_text(self, name: str) -> str | None:
        data = store.read_if_there(self.url(name)) if name in self.sizes else None
        return None if data is None else data.decode()

    def write_text(self, name: str, text: str):
        data = text.encode()
        store.put_bytes(self.url(name), data)
        self.sizes[name] = len(data)
        self._texts[name] = text

    def append_line(self, name: str, line: str):
        if name not in self._texts:
            self._texts[name] = self.read_text(name) or ""
        self.write_text(name, self._texts[name] + line)

    def publish(self, name: str, tmp: str):
        size = os.path.getsize(tmp)
        store.put_file(self.url(name), tmp)
        os.remove(tmp)
        self.sizes[name] = size

    def remove(self, name: str):
        store.delete(self.url(name))
        self.sizes.pop(name, None)

    def names(self) -> list[str]:
        return [n for n in self.sizes if "/" not in n]

    def clear_tmp(self):
        for name in os.listdir(self.staging):
            if name.endswith(".tmp"):
                os.remove(os.path.join(self.staging, name))

    def sha256(self, name: str) -> str:
        return store.stream_sha256(self.url(name), size=self.sizes.get(name))[0]
