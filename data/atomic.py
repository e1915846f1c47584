"""Writing outputs so that a crash or a full disk never leaves a half-written one under the
final name, nor a stray temporary file beside it."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil

# errno values that mean "this place cannot take the output": the user frees space or writes
# elsewhere, so they end a command in one line (``OutputError``), never a traceback.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.EIO, errno.ENOTDIR, errno.EISDIR}
# those of them that can only come from writing, wherever they are raised
FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


class OutputError(OSError):
    """An output could not be written (full disk, read-only, no permission): its message names
    the file, the reason and the fix; nothing half-written is left behind."""

    def __str__(self):
        return self.args[0] if self.args else "could not write an output"


def disk_errno(e: BaseException, codes=DISK_ERRORS) -> int | None:
    """The errno of a disk error in ``codes``, from an OSError or from a writer that wraps it
    in its own exception ("... (os error 28)", as safetensors does); else None."""
    import re
    if isinstance(e, OutputError):
        return None
    code = e.errno if isinstance(e, OSError) else None
    if code is None and isinstance(e, Exception):
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    return code if code in codes else None


def output_error(e: BaseException, path: str) -> OutputError:
    where = getattr(e, "filename", None) or path
    code = disk_errno(e)
    reason = os.strerror(code) if code else (getattr(e, "strerror", None) or e)
    return OutputError(f"could not write {where} ({reason}); free some space or write "
                       f"elsewhere (nothing half-written was left)")


@contextlib.contextmanager
def atomic_path(path: str):
    """A temporary path beside ``path`` (its folder created) for a writer to fill; renamed over
    ``path`` when the block ends cleanly, removed when it does not. A disk error (``DISK_ERRORS``)
    becomes ``OutputError`` naming ``path``."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if disk_errno(e):
            raise output_error(e, path) from None
        raise


def write_text_atomic(path: str, text: str):
    """Write ``text`` to ``path + '.tmp'``, flush it to disk, then rename it over ``path``
    (its folder created; on a failure the temporary file is removed: see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def output_folder(path: str):
    """``path`` made for a block that writes files into it: when the block fails, a folder
    this call created is removed again, so a failed command leaves no empty or partial folder
    (a folder that existed before keeps what it had; its files are replaced atomically)."""
    existed = os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
        yield path
    except BaseException as e:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        if disk_errno(e):
            raise output_error(e, path) from None
        raise


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
