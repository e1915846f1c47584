"""Shared fixtures: every test makes its own data (real encoded videos, MedMNIST-format npz)."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from data.decode import encode_video
from data.prep.cli import main as prep_main


def moving_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 frames with a moving bright square and a frame-number bar, so every
    frame differs from its neighbours."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    out = np.repeat(base[None], n, axis=0)
    for t in range(n):
        y, x = (3 * t) % (h - 8), (5 * t) % (w - 8)
        out[t, y:y + 8, x:x + 8] = 230
        out[t, -4:, : (t * 7) % w] = 200
    return out


def write_video(path: str, n: int = 40, codec: str = "h264", h: int = 48, w: int = 64,
                seed: int = 0, fps: float = 25.0) -> str:
    container = os.path.splitext(path)[1][1:]
    data = encode_video(moving_frames(n, h, w, seed), fps=fps, codec=codec, container=container,
                        crf=10)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> str:
    """A small synthetic set (train/val/test), several shards per split."""
    out = str(tmp_path_factory.mktemp("synthetic") / "set")
    rc = prep_main(["synthetic", "--out", out, "--count", "64", "--num-classes", "4",
                    "--size", "32", "--frames", "24", "--shard-samples", "8",
                    "--workers", "0"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def keyframe_set(tmp_path_factory):
    """Eight 40-frame videos transcoded at prep with a keyframe every 4 frames."""
    root = tmp_path_factory.mktemp("keyframes")
    for c in range(2):
        (root / "videos" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            write_video(str(root / "videos" / f"class{c}" / f"v{i}.mp4"), n=40, seed=4 * c + i)
    out = str(root / "set")
    assert prep_main(["videos", str(root / "videos"), "--out", out, "--transcode", "--gop", "4",
                      "--workers", "0"]) == 0
    return out


def make_medmnist_npz(path: str, n=(6, 3, 4), side: int = 28, classes: int = 11,
                      seed: int = 0) -> dict:
    """An npz with the official keys and layout: (N, D, H, W) uint8 images, (N, 1) labels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, side, side, side), np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (count, 1)).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


@contextlib.contextmanager
def tmpfs(path, options: str = "size=1m"):
    """A real tmpfs mounted on ``path`` (mounting needs root; skips the test elsewhere):
    writes there fail as the kernel really fails them (full, read-only), not as a test fakes."""
    import subprocess
    path.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MB filesystem: a full disk, for real."""
    with tmpfs(tmp_path / "small") as mnt:
        yield mnt


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a stopped process counts as alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def moto():
    """moto's S3 server on loopback, for the tests of one module."""
    from tests.storage import MotoServer
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3(moto, monkeypatch):
    """The AWS environment of a test against ``moto`` (credentials from the environment)."""
    from tests.storage import s3_env
    for k, v in s3_env(moto.endpoint).items():
        monkeypatch.setenv(k, v)
    return moto
