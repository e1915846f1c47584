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
