"""Writing small files so that a crash never leaves a half-written one under the final name."""
from __future__ import annotations

import os


def write_text_atomic(path: str, text: str):
    """Write ``text`` to ``path + '.tmp'``, flush it to disk, then rename it over ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def umask_mode(path: str):
    """Give ``path`` the mode a plain ``open()`` would have (0666 less the umask): some writers
    (safetensors) create files readable by their owner only."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


class FolderInUse(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """``folder/.lock`` held for the life of this process: a second command on the same folder
    is refused with a message naming the first (pid, host, command). It is a POSIX record lock
    (``lockf``): the kernel releases it when the process ends, kill -9 included, and forked
    children (loader workers) do not inherit it, so a refusal names a live holder."""

    def __init__(self, folder: str):
        import fcntl
        import socket
        import sys
        self.file = open(os.path.join(folder, ".lock"), "a+")
        try:
            fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise FolderInUse(f"{folder} is in use by {holder}") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} "
                        f"({' '.join(sys.argv)[:200]})\n")
        self.file.flush()

    def release(self):
        if self.file is not None:
            self.file.close()
            self.file = None
