"""Object stores on loopback for the tests: moto's S3 server, Python's http.server, and a proxy
that cuts, refuses, stalls or answers 503 on cue. Each is started by the test (or fixture) that
uses it and stopped by it."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

SECRET = "tubemae-test-secret-0d5c2e7f9b"     # a key no file or log of a run may contain
KEY_ID = "AKIATUBEMAETEST0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0):
    end = time.time() + timeout
    while time.time() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def s3_env(endpoint: str, **extra) -> dict:
    """The AWS settings of a test: the credentials come from the environment (the standard
    chain), none from a file."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", **extra}


class MotoServer:
    """moto's standalone S3 server on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def client(self):
        import boto3
        return boto3.session.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                     region_name="us-east-1").client(
            "s3", endpoint_url=self.endpoint)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, folder: str, url: str):
        """Every file under ``folder`` to the s3:// prefix ``url``."""
        bucket, _, prefix = url[5:].partition("/")
        c = self.client()
        for root, _, files in os.walk(folder, followlinks=True):
            for name in files:
                if name == ".lock":
                    continue
                path = os.path.join(root, name)
                c.upload_file(path, bucket, f"{prefix}/{os.path.relpath(path, folder)}")

    def keys(self, url: str) -> list:
        """The keys under the s3:// prefix ``url`` (a listing, no object read)."""
        bucket, _, prefix = url[5:].partition("/")
        c, out = self.client(), []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=prefix + "/"):
            out += [obj["Key"][len(prefix) + 1:] for obj in page.get("Contents", [])]
        return out

    def objects(self, url: str) -> dict:
        """{key under the prefix: bytes} of every object under ``url``."""
        bucket, _, prefix = url[5:].partition("/")
        c, out = self.client(), {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix) + 1:]] = c.get_object(
                    Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Ranges(_Quiet):
    """Answers ``Range: bytes=N-`` with 206 (as nginx and object stores do)."""

    def do_GET(self):
        want = self.headers.get("Range", "")
        path = self.translate_path(self.path)
        if not want.startswith("bytes=") or not os.path.isfile(path):
            return super().do_GET()
        start = int(want[6:].split("-")[0])
        size = os.path.getsize(path)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            shutil.copyfileobj(f, self.wfile)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass            # a client (or the proxy) that hung up mid-answer: expected here


class HttpServer:
    """Python's http.server serving ``folder``; without ``ranges`` it ignores Range headers (a
    broken read is then read again and the bytes already had skipped)."""

    def __init__(self, folder: str, ranges: bool = False):
        handler = functools.partial(_Ranges if ranges else _Quiet, directory=folder)
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class FaultyProxy:
    """A TCP proxy to 127.0.0.1:``target`` that misbehaves on a seeded schedule, counting what
    it did: ``cut`` connections closed mid-answer (after a random number of bytes), ``refused``
    ones closed before any byte, ``errors`` answered 503 without asking the server, and
    ``stalled`` ones held silent. ``down`` (set by the test) refuses everything."""

    def __init__(self, target: int, seed: int = 0, cut: float = 0.0, cut_bytes=(2000, 40000),
                 error: float = 0.0, stall: float = 0.0, refuse: float = 0.0):
        self.target, self.rng = target, random.Random(seed)
        self.p = {"cut": cut, "error": error, "stall": stall, "refuse": refuse}
        self.cut_bytes = cut_bytes
        self.counts = {"cut": 0, "error": 0, "stall": 0, "refuse": 0, "connections": 0}
        self.down = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.open: list = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _draw(self) -> tuple[str, int]:
        with self.lock:
            self.counts["connections"] += 1
            r = self.rng.random()
            limit = self.rng.randint(*self.cut_bytes)
            for what in ("refuse", "error", "stall", "cut"):
                if r < self.p[what]:
                    return what, limit
                r -= self.p[what]
            return "pass", limit

    def _accept(self):
        while self.running:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _count(self, what):
        with self.lock:
            self.counts[what] += 1

    def _serve(self, client: socket.socket):
        what, limit = ("refuse", 0) if self.down else self._draw()
        try:
            if what == "refuse":
                self._count("refuse")
                return
            if what == "stall":
                self._count("stall")
                client.recv(65536)
                while self.running and not self.down:
                    time.sleep(0.05)
                return
            if what == "error":
                self._count("error")
                client.recv(65536)
                body = b"<Error><Code>ServiceUnavailable</Code></Error>"
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: " +
                               str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, None),
                             daemon=True).start()
            self._pump(upstream, client, limit if what == "cut" else None)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def _pump(self, src: socket.socket, dst: socket.socket, limit):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data or self.down:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[:limit - sent])
                    self._count("cut")
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self):
        self.running = False
        self.down = True
        self.sock.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.close()
