"""systemd's sd_notify protocol over ``$NOTIFY_SOCKET``, in plain Python.

Runs in the supervisor only. Messages (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``,
``STOPPING=1``) are datagrams on the Unix socket systemd names in ``NOTIFY_SOCKET``; a leading
``@`` means the abstract namespace. Without ``NOTIFY_SOCKET`` every call does nothing, so the
supervisor runs the same under systemd, in a container or in a terminal.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when not started by systemd with ``Type=notify``.

    :param address: the ``NOTIFY_SOCKET`` value, or ``None`` for a no-op notifier.
    :param watchdog_usec: ``WATCHDOG_USEC``; when set, :attr:`watchdog_interval` is half of it.
    """

    def __init__(self, address: Optional[str], watchdog_usec: Optional[int] = None) -> None:
        self.address = address
        self.watchdog_interval: Optional[float] = (
            watchdog_usec / 2e6 if watchdog_usec else None)
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> "Notifier":
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is only armed for this process: ``WATCHDOG_PID`` must be absent or ours.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: Optional[int] = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"])
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one message (``KEY=value`` lines); returns whether it was sent."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), addr)
            return True
        except OSError as exc:
            if not self._warned:  # once: systemd gone or socket misconfigured
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        """``READY=1`` (plus ``STATUS=`` and ``MAINPID=``): start-up is complete."""
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify("\n".join(lines))

    def status(self, text: str) -> bool:
        """``STATUS=``: a one-line description shown by ``systemctl status``."""
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` when systemd armed a watchdog for us."""
        if self.watchdog_interval is None:
            return False
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """``RELOADING=1``: a SIGHUP reload started; send :meth:`ready` when it is done."""
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
