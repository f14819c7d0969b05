"""The namespace lock: one supervisor per namespace, taken over at once after a ``kill -9``.

Runs in the supervisor only. The lock is an ``flock`` on ``<state_dir>/<name>.lock``; the kernel
drops it when its holder dies however it dies, so a restarted supervisor takes the namespace
over without any stale-lock heuristics. The file also records the holder's pid, for messages.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import Optional

from shmflags.errors import ShmflagsError


class NamespaceLocked(ShmflagsError):
    """Another live supervisor holds this namespace."""

    def __init__(self, name: str, path: str, pid: Optional[int]) -> None:
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"namespace {name!r} is held by {holder} (lock {path})")


class NamespaceLock:
    """An exclusive lock on one namespace.

    :param state_dir: directory of the lock file (must exist).
    :param name: the namespace.
    """

    def __init__(self, state_dir: str, name: str) -> None:
        self.name = name
        self.path = os.path.join(state_dir, f"{name}.lock")
        self._fd: Optional[int] = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, retrying for up to ``wait`` seconds (an old supervisor may be exiting).

        :raises NamespaceLocked: when another process still holds it.
        :raises OSError: when the lock file cannot be opened.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise NamespaceLocked(self.name, self.path, pid) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; it is reused by the next supervisor)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
