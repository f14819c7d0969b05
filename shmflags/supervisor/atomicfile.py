"""Replace a file atomically: write a temporary file beside it, then rename it over the old one.

Runs in the supervisor only (last-known-good file, event counters file). Readers see the old
content or the new one, never a mix; a crash leaves at worst a stray temporary file.
"""
from __future__ import annotations

import os
import tempfile


def replace(path: str, data: bytes, *, mode: int = 0o640, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    :param mode: permission bits of the new file (set explicitly, whatever the umask).
    :param durable: fsync the file before the rename and the directory after it, so the new
        content survives a power loss; skip for advisory files rewritten often.
    :raises OSError: when the directory is not writable or the disk is full (the old file is
        left untouched and the temporary file removed).
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".shmflags.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
