"""Bind the supervisor's event datagram socket and validate everything that arrives on it.

Runs in the supervisor (its receive thread). The socket is created under a temporary name,
given ``socket_mode`` explicitly (whatever the umask) and renamed into place, replacing a
stale socket left by a previous supervisor. Every datagram is checked by
:func:`shmflags.events.datagram.decode`; junk is counted in :attr:`DatagramReceiver.invalid`
and dropped. The receiver never raises out of its loop and never writes to the socket.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from typing import Any, Callable, Dict, Optional

from shmflags.errors import EventsError
from shmflags.events.datagram import MAX_DATAGRAM, DatagramError, decode

__all__ = ["DatagramReceiver"]

log = logging.getLogger(__name__)

_POLL = 0.25  # seconds between checks of the stop flag while idle
_RCVBUF = 4 * 1024 * 1024


class DatagramReceiver:
    """The listening end of the event socket.

    :param path: socket path (``Config.socket_path``)
    :param mode: file mode of the socket (``Config.socket_mode``)
    :param handler: called with each valid datagram map, in the receive thread
    """

    def __init__(self, path: str, mode: int, handler: Callable[[Dict[str, Any]], None]) -> None:
        self.path = path
        self.mode = mode
        self._handler = handler
        self._sock: Optional[socket.socket] = None
        self._inode: Optional[int] = None
        self._buf = bytearray(MAX_DATAGRAM + 1)
        self._lock = threading.Lock()  # one reader at a time (loop vs. drain)
        self.received = 0
        self.invalid = 0
        self.last_invalid: Optional[str] = None

    def bind(self) -> None:
        """Create the socket at :attr:`path` with :attr:`mode`.

        :raises EventsError: the path exists and is not a socket, or binding fails
        """
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISSOCK(st.st_mode):
            raise EventsError(f"{self.path} exists and is not a socket; not replacing it")
        # Short temporary name: socket paths are limited to 107 bytes.
        tmp = os.path.join(directory, f".sf{os.getpid()}.tmp")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(tmp)
            os.chmod(tmp, self.mode)
            os.rename(tmp, self.path)  # atomically replaces a stale socket
        except OSError as exc:
            sock.close()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise EventsError(f"cannot bind the event socket {self.path}: {exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        except OSError:
            pass
        sock.settimeout(_POLL)
        self._sock = sock
        self._inode = os.lstat(self.path).st_ino

    def _handle(self, n: int) -> None:
        if n > MAX_DATAGRAM:
            self.invalid += 1
            self.last_invalid = "datagram larger than 64 KiB"
            return
        try:
            datagram = decode(memoryview(self._buf)[:n])
        except DatagramError as exc:
            self.invalid += 1
            self.last_invalid = str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - junk must never stop the receiver
            self.invalid += 1
            self.last_invalid = f"{type(exc).__name__}: {exc}"
            log.exception("unexpected error validating an event datagram")
            return
        self.received += 1
        try:
            self._handler(datagram)
        except Exception:  # noqa: BLE001 - the receiver must survive a processing bug
            log.exception("processing an event datagram failed")

    def receive_once(self) -> bool:
        """Wait up to 0.25 s for one datagram and process it; ``False`` if none came."""
        sock = self._sock
        if sock is None:
            return False
        with self._lock:
            try:
                n = sock.recv_into(self._buf)
            except (socket.timeout, BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                log.warning("event socket receive failed: %s", exc)
                return False
            self._handle(n)
            return True

    def drain(self) -> int:
        """Process every datagram already queued, without waiting; return how many."""
        sock = self._sock
        if sock is None:
            return 0
        count = 0
        with self._lock:
            while True:
                try:
                    n = sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    return count
                except OSError as exc:
                    log.warning("event socket receive failed: %s", exc)
                    return count
                self._handle(n)
                count += 1

    def serve(self, stop: threading.Event) -> None:
        """Receive until ``stop`` is set (the body of the receive thread)."""
        while not stop.is_set():
            self.receive_once()

    def close(self) -> None:
        """Close the socket and remove its file if it is still ours."""
        sock = self._sock
        self._sock = None
        if sock is None:
            return
        with self._lock:
            sock.close()
        try:
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
