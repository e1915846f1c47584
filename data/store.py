"""Shard sets in object storage: ``s3://bucket/prefix``, ``https://host/path``, ``http://``,
and ``pipe:COMMAND`` (a command that writes one object to its stdout, ``{}`` standing for the
object's name inside the set) for any other store.

Reads stream: a shard is never copied whole before its first sample is used. A connection that
is reset, times out or answers 5xx is reopened where it broke (an HTTP range; a store that
ignores ranges, or a pipe, is read again from the start and the bytes already had are
skipped), so a reader sees exactly the bytes it would have seen without the fault. A store
that keeps failing for ``patience`` seconds, or that answers "missing" or "denied", ends in
one ``StoreError`` naming the URL and the fix.

S3 goes through boto3: the endpoint comes from ``AWS_ENDPOINT_URL`` (MinIO, Ceph, R2), the
credentials from the standard AWS chain (environment, profile, instance role). Nothing here
prints, logs or stores a credential; a URL carrying a password is refused (``check_url``).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shlex
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .errors import DataSetError

log = logging.getLogger("data.store")

SCHEMES = ("s3://", "http://", "https://", "pipe:")
CHUNK = 1 << 20
RETRIES = {"reopened": 0}          # counted per process (tests and the bench read it)


class StoreError(DataSetError):
    """An object store failed for longer than the patience, or refused (missing, denied)."""


class NotFound(StoreError):
    """The object is not in the store."""


@dataclass(frozen=True)
class StoreOptions:
    """How shards are read from a store (``data.store_patience``, ``data.cache_dir``,
    ``data.cache_size``)."""
    patience: float = 120.0          # seconds of failing reads in a row before the run stops
    cache_dir: str | None = None     # keep streamed shards here, so later epochs read disk
    cache_size: int = 100 * 10**9    # bytes the cache may hold (least recently used go first)

    @property
    def timeout(self) -> float:
        """One request's connect and read time-out: a hung store is retried within the
        patience, never waited on past it."""
        return max(1.0, min(30.0, self.patience / 3))


def is_remote(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEMES)


def check_url(url: str, what: str = "data.shards") -> str:
    """``url`` when it is one this module reads; a ValueError in one line otherwise (a password
    in the URL would end up in config.yaml and the logs)."""
    if url.startswith("pipe:"):
        if "{}" not in url:
            raise ValueError(f"{what}={url}: a pipe: set names its objects with {{}}, e.g. "
                             f"pipe:gsutil cat gs://bucket/sets/k400/{{}}")
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None or any(k.lower().startswith(("x-amz-", "signature", "sig"))
                                         for k, _ in urllib.parse.parse_qsl(parts.query)):
        raise ValueError(f"{what}: the URL carries a credential, which would be saved in the "
                         f"run's config.yaml and logs; give the plain URL and put the "
                         f"credential in ~/.netrc (http) or the AWS chain (s3)")
    if url.startswith("s3://") and not parts.netloc:
        raise ValueError(f"{what}={url}: name a bucket, e.g. s3://my-bucket/sets/k400")
    return url


def child(base: str, name: str) -> str:
    """The folder or object ``name`` inside the set folder ``base`` (a path or a URL)."""
    if base.startswith("pipe:"):
        return base.replace("{}", f"{name}/{{}}", 1)
    if is_remote(base):
        return base.rstrip("/") + "/" + name
    return os.path.join(base, name)


def member(base: str, name: str) -> str:
    """The object ``name`` inside ``base``: for a pipe, the command that writes it."""
    if base.startswith("pipe:"):
        return base.replace("{}", shlex.quote(name), 1)
    return child(base, name)


def same_place(a: str, b: str) -> bool:
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def parse_bytes(text: str) -> int:
    """'1G', '500MB', '2.5e8' -> bytes (decimal units)."""
    t = text.strip().upper().rstrip("B")
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(float(t))


# -- clients --------------------------------------------------------------------------------
_CLIENTS: dict = {}
_LOCK = threading.Lock()


def s3_client(timeout: float = 30.0):
    """This process's boto3 S3 client (one per process: clients do not survive a fork). Its own
    retries are off: the callers here retry, and resume a broken read where it stopped."""
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    key = (os.getpid(), timeout, custom)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StoreError("s3:// sets need boto3: pip install boto3 (launch/setup.sh "
                                 "installs it)") from None
            session = boto3.session.Session()
            config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout,
                            read_timeout=timeout, max_pool_connections=32,
                            s3={"addressing_style": "path"} if custom else None)
            client = _CLIENTS[key] = session.client(
                "s3", region_name=session.region_name or "us-east-1", config=config)
    return client


def split_s3(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc, parts.path.lstrip("/")


def _netrc_auth(url: str) -> str | None:
    import base64
    import netrc
    try:
        found = netrc.netrc().authenticators(urllib.parse.urlsplit(url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    if not found:
        return None
    token = base64.b64encode(f"{found[0]}:{found[2]}".encode()).decode()
    return f"Basic {token}"


# -- errors ---------------------------------------------------------------------------------
class _Cut(ConnectionError):
    """A response that ended before its length: the connection was cut."""


class _PipeBody:
    """A command's stdout read with a time-out: a command that hangs is a failed read (retried
    within the patience), never a reader blocked for good."""

    def __init__(self, proc: subprocess.Popen, timeout: float):
        self.proc, self.fd, self.timeout = proc, proc.stdout.fileno(), timeout

    def read(self, n: int) -> bytes:
        import select
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"the command wrote nothing for {self.timeout:.0f} s")
        return os.read(self.fd, n)

    def close(self):
        self.proc.stdout.close()


def _cause(e: BaseException) -> BaseException:
    """The error behind boto3's transfer wrapper (S3UploadFailedError says only its text)."""
    while type(e).__name__ == "S3UploadFailedError" and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__
    return e


def _status(e) -> int | None:
    if isinstance(e, urllib.error.HTTPError):
        return e.code
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def transient(e: BaseException) -> bool:
    """Whether retrying may help: a reset or refused connection, a time-out, a response cut
    short, 5xx, 429 or 408. Missing, denied and malformed requests are not."""
    e = _cause(e)
    status = _status(e)
    if status is not None:
        return status >= 500 or status in (408, 429)
    try:
        import botocore.exceptions as be
        if isinstance(e, (be.NoCredentialsError, be.PartialCredentialsError,
                          be.ParamValidationError, be.NoRegionError)):
            return False
        if isinstance(e, be.BotoCoreError):
            return True
    except ImportError:
        pass
    try:
        import urllib3.exceptions
        if isinstance(e, urllib3.exceptions.HTTPError):
            return True
    except ImportError:
        pass
    return isinstance(e, (ConnectionError, TimeoutError, http.client.HTTPException,
                          urllib.error.URLError, OSError))


def refusal(url: str, e: BaseException) -> StoreError:
    """One line for an answer that retrying would not change."""
    e = _cause(e)
    status = _status(e)
    code = ""
    if isinstance(getattr(e, "response", None), dict):
        code = e.response.get("Error", {}).get("Code", "")
    name = type(e).__name__
    if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
        return NotFound(f"{url} is not in the store ({code or status}); check the URL, or "
                        f"finish the set with the prep command that writes it")
    if status in (401, 403) or name in ("NoCredentialsError", "PartialCredentialsError"):
        return StoreError(f"{url}: access denied ({code or status or name}); give credentials "
                          f"through the AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          f"AWS_PROFILE, or an instance role) or ~/.netrc for http")
    return StoreError(f"{url}: the store refused the request ({code or status or name}: "
                      f"{str(e)[:200]})")


def _gave_up(url: str, patience: float, e: BaseException) -> StoreError:
    return StoreError(f"{url}: the store failed for {patience:.0f} s ({type(e).__name__}: "
                      f"{str(e)[:160]}); check the store and the network (AWS_ENDPOINT_URL for "
                      f"S3), then run the same command again (a run continues from its last "
                      f"checkpoint, a prep from its last shard), or raise data.store_patience")


class _Backoff:
    """Exponential back-off between retries, giving up once ``patience`` seconds have passed
    since the start of the first failed attempt in a row (any progress starts the count
    again). With each request's time-out at most a third of the patience, a store that does
    not answer at all is given up on within 4/3 of the patience."""

    def __init__(self, url: str, patience: float):
        self.url, self.patience = url, patience
        self.since, self.delay, self.warned = None, 0.1, False
        self.attempt = time.monotonic()

    def start(self):
        """Call before each attempt: a failure is counted from when its attempt began."""
        self.attempt = time.monotonic()

    def failed(self, e: BaseException):
        if not transient(e):
            raise refusal(self.url, e) from None
        now = time.monotonic()
        if self.since is None:
            self.since, self.delay = self.attempt, 0.1
        left = self.patience - (now - self.since)
        if left <= 0:
            raise _gave_up(self.url, self.patience, e) from None
        RETRIES["reopened"] += 1
        if now - self.since > min(10.0, self.patience / 4) and not self.warned:
            self.warned = True         # a store that keeps failing is said once per read
            log.warning("%s: the store has failed for %.0f s (%s); retrying for up to %.0f s "
                        "more (data.store_patience)", self.url, now - self.since,
                        type(e).__name__, left)
        else:
            log.info("%s: %s (%s); retrying", self.url, type(e).__name__, str(e)[:120])
        time.sleep(min(self.delay, left))
        self.delay = min(self.delay * 2, 8.0)

    def ok(self):
        self.since = None


def retrying(url: str, patience: float, fn):
    """``fn()``, retried with back-off while it fails in a way that retrying may fix."""
    backoff = _Backoff(url, patience)
    while True:
        backoff.start()
        try:
            return fn()
        except StoreError:
            raise
        except Exception as e:
            backoff.failed(e)


# -- reading --------------------------------------------------------------------------------
class RemoteReader:
    """A read-only stream of one object that survives faults: each broken read is reopened at
    the byte where it stopped. ``size`` (when known, from the manifest) also catches a response
    that ends early without an error."""

    def __init__(self, url: str, options: StoreOptions = StoreOptions(), size: int | None = None):
        self.url, self.options = url, options
        self.pos, self.total = 0, size
        self.body = self.proc = None
        self.backoff = _Backoff(url, options.patience)
        self._err = None

    # one response at ``self.pos``
    def _open(self):
        if self.url.startswith("s3://"):
            bucket, key = split_s3(self.url)
            extra = {"Range": f"bytes={self.pos}-"} if self.pos else {}
            r = s3_client(self.options.timeout).get_object(Bucket=bucket, Key=key, **extra)
            total = r.get("ContentRange", "").rpartition("/")[2]
            self.total = int(total) if total.isdigit() else self.pos + int(r["ContentLength"])
            self.body = r["Body"]
        elif self.url.startswith("pipe:"):
            if self._err is not None:
                self._err.close()
            self._err = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(self.url[5:], shell=True, stdout=subprocess.PIPE,
                                         stderr=self._err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
            self.body = _PipeBody(self.proc, self.options.timeout)
            self._skip(self.pos)
        else:
            headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
            auth = _netrc_auth(self.url)
            if auth:
                headers["Authorization"] = auth
            r = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                       timeout=self.options.timeout)
            self.body = r
            if r.status == 206:
                total = (r.headers.get("Content-Range") or "").rpartition("/")[2]
                start = (r.headers.get("Content-Range") or "").partition(" ")[2].partition("-")[0]
                if start != str(self.pos):
                    raise _Cut(f"asked for byte {self.pos}, got the range {start}-")
                if total.isdigit():
                    self.total = int(total)
            else:     # a server that ignores ranges sends it all: skip what was read
                length = r.headers.get("Content-Length")
                if length and length.isdigit():
                    self.total = int(length)
                self._skip(self.pos)

    def _skip(self, n: int):
        while n > 0:
            got = self.body.read(min(n, CHUNK))
            if not got:
                raise _Cut(f"the stream ended at byte {self.pos - n} of the {self.pos} already "
                           f"read")
            n -= len(got)

    def _close(self):
        body, proc, self.body, self.proc = self.body, self.proc, None, None
        with contextlib.suppress(Exception):
            if body is not None:
                body.close()
        if proc is not None:
            _kill_group(proc)

    def _ended(self):
        """At the end of a response: whether the object is whole (else raise to reopen)."""
        if self.proc is not None:
            try:
                code = self.proc.wait(self.options.timeout)
            except subprocess.TimeoutExpired:
                raise _Cut("the command closed its output but did not exit") from None
            if code != 0:
                self._err.seek(0)
                tail = self._err.read()[-300:].decode(errors="replace").strip()
                raise _Cut(f"the command exited with {code}: {tail}")
        if self.total is not None and self.pos < self.total:
            raise _Cut(f"the answer ended at byte {self.pos} of {self.total}")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = []
            while chunk := self.read(CHUNK):
                out.append(chunk)
            return b"".join(out)
        while True:
            if self.total is not None and self.pos >= self.total and self.body is None:
                return b""
            self.backoff.start()
            try:
                if self.body is None:
                    self._open()
                data = self.body.read(n)
                if not data:
                    self._ended()
                    self._close()
                    self.total = self.pos if self.total is None else self.total
                    return b""
            except StoreError:
                self._close()
                raise
            except Exception as e:
                self._close()
                self.backoff.failed(e)
                continue
            self.backoff.ok()
            self.pos += len(data)
            return data

    def close(self):
        self._close()
        if self._err is not None:
            self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _kill_group(proc: subprocess.Popen):
    """End a pipe's command and whatever it started (its own session)."""
    import signal
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(5)


def read_bytes(url: str, options: StoreOptions = StoreOptions()) -> bytes:
    """A whole (small) object: a manifest, a journal. NotFound when it is not there."""
    if url.startswith("pipe:"):    # a command that fails on a name is taken as "not there"
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=options.patience)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise StoreError(f"{url} did not finish in {options.patience:.0f} s "
                             f"(data.store_patience); check the command and its store") from None
        if proc.returncode != 0:
            raise NotFound(f"{url} failed with exit status {proc.returncode}: "
                           f"{err[-300:].decode(errors='replace').strip()}")
        return out
    with RemoteReader(url, options) as r:
        return r.read()


def read_if_there(url: str, options: StoreOptions = StoreOptions()) -> bytes | None:
    """``read_bytes``, or None when the object is not in the store."""
    try:
        return read_bytes(url, options)
    except NotFound:
        return None


def list_sizes(url: str, options: StoreOptions = StoreOptions()) -> dict | None:
    """{name under the folder ``url``: bytes} of an s3:// folder (None for a store that cannot
    list: http, pipe)."""
    if not url.startswith("s3://"):
        return None
    bucket, prefix = split_s3(url.rstrip("/") + "/")

    def listing():
        out = {}
        pages = s3_client(options.timeout).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix):]] = obj["Size"]
        return out
    return retrying(url, options.patience, listing)


# -- writing (s3 only) ----------------------------------------------------------------------
def put_file(url: str, path: str, options: StoreOptions = StoreOptions()):
    bucket, key = split_s3(url)
    retrying(url, options.patience,
             lambda: s3_client(options.timeout).upload_file(path, bucket, key))


def put_bytes(url: str, data: bytes, options: StoreOptions = StoreOptions()):
    bucket, key = split_s3(url)
    retrying(url, options.patience,
             lambda: s3_client(options.timeout).put_object(Bucket=bucket, Key=key, Body=data))


def delete(url: str, options: StoreOptions = StoreOptions()):
    bucket, key = split_s3(url)
    retrying(url, options.patience,
             lambda: s3_client(options.timeout).delete_object(Bucket=bucket, Key=key))


def stream_sha256(url: str, options: StoreOptions = StoreOptions(),
                  size: int | None = None) -> tuple[str, int]:
    """(sha256, bytes) of an object, streamed."""
    h, n = hashlib.sha256(), 0
    with RemoteReader(url, options, size) as r:
        while block := r.read(CHUNK):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n
