"""Exceptions shared by every part of shmflags (both evaluator backends import these).

Safe in any process. The tree::

    ShmflagsError
     ├── ConfigError                 a setting is missing or invalid (names the setting)
     ├── SnapshotError
     │    ├── SnapshotUnavailable    no snapshot published yet / namespace absent
     │    ├── SnapshotFormatError    magic, format word, size or checksum mismatch
     │    └── SnapshotBusy           control block kept changing while being read
     ├── DataError                   LaunchDarkly JSON that fails validation
     └── EventsError                 the event socket or delivery failed

``SupervisorHalt`` derives from ``BaseException`` (like gunicorn's ``HaltServer``): it is the
supervisor's "stop now" signal and must not be swallowed by ``except Exception``.

``variation*`` never raises any of these: evaluation errors become an ``ERROR`` reason.
"""
from __future__ import annotations


class ShmflagsError(Exception):
    """Root of every exception raised by shmflags."""


class ConfigError(ShmflagsError, ValueError):
    """A configuration value is invalid. The message names the setting."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class SnapshotError(ShmflagsError):
    """Something is wrong with a shared-memory snapshot."""


class SnapshotUnavailable(SnapshotError):
    """No snapshot has been published in this namespace (yet)."""


class SnapshotFormatError(SnapshotError):
    """The snapshot bytes are not a valid snapshot of this build's format."""


class SnapshotBusy(SnapshotError):
    """The control block changed on every bounded retry of a consistent read."""


class DataError(ShmflagsError, ValueError):
    """LaunchDarkly flag or segment JSON that does not validate."""


class EventsError(ShmflagsError):
    """The event path (socket or delivery) failed."""


class SupervisorHalt(BaseException):
    """Raised inside the supervisor to stop its main loop with an exit status."""

    def __init__(self, reason: str, exit_status: int = 0) -> None:
        self.reason = reason
        self.exit_status = exit_status
        super().__init__(reason)
