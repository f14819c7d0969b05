"""Data source and big segment status as a worker sees them, with ldclient's class shapes.

Safe in any worker. The status of a shared-memory client comes from the control block the
supervisor writes (state, last error, heartbeat); listeners are called from the client's
watcher thread (see :mod:`shmflags.client.tracker`), which starts only when a listener is
added, in the process that adds it.
"""
from __future__ import annotations

import logging
import threading
import time
from enum import Enum
from typing import Any, Callable, List, Optional

log = logging.getLogger(__name__)


class DataSourceState(Enum):
    """Where the data source is in its life (ld-protocol §10.1)."""

    INITIALIZING = "initializing"
    VALID = "valid"
    INTERRUPTED = "interrupted"
    OFF = "off"


class DataSourceErrorKind(Enum):
    """What kind of error the data source last met."""

    UNKNOWN = "unknown"
    NETWORK_ERROR = "network_error"
    ERROR_RESPONSE = "error_response"
    INVALID_DATA = "invalid_data"
    STORE_ERROR = "store_error"


class DataSourceErrorInfo:
    """The data source's last error.

    :param kind: a :class:`DataSourceErrorKind`.
    :param status_code: the HTTP status for ``ERROR_RESPONSE``, else 0.
    :param time: when it happened (seconds since the epoch).
    :param message: a description, if any.
    """

    def __init__(self, kind: DataSourceErrorKind, status_code: int, time: float,
                 message: Optional[str]) -> None:
        self.__kind = kind
        self.__status_code = status_code
        self.__time = time
        self.__message = message

    @property
    def kind(self) -> DataSourceErrorKind:
        """The error kind."""
        return self.__kind

    @property
    def status_code(self) -> int:
        """The HTTP status code, or 0."""
        return self.__status_code

    @property
    def time(self) -> float:
        """When the error happened (epoch seconds)."""
        return self.__time

    @property
    def message(self) -> Optional[str]:
        """A description of the error."""
        return self.__message

    @classmethod
    def from_dict(cls, error: Any) -> Optional["DataSourceErrorInfo"]:
        """Build from ``{"kind", "statusCode", "message", "time"}`` (the sink's error dict);
        ``None`` for anything that is not a dict."""
        if not isinstance(error, dict):
            return None
        kind_text = str(error.get("kind") or "UNKNOWN").lower()
        kind = next((k for k in DataSourceErrorKind if k.value == kind_text),
                    DataSourceErrorKind.UNKNOWN)
        when = error.get("time")
        when = float(when) if isinstance(when, (int, float)) else 0.0
        if when > 1e11:  # milliseconds
            when /= 1000.0
        code = error.get("statusCode")
        return cls(kind, int(code) if isinstance(code, int) else 0, when, error.get("message"))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DataSourceErrorInfo) and self.kind == other.kind
                and self.status_code == other.status_code and self.time == other.time
                and self.message == other.message)

    def __repr__(self) -> str:
        return (f"DataSourceErrorInfo({self.kind.name}, status_code={self.status_code}, "
                f"message={self.message!r})")


class DataSourceStatus:
    """A snapshot of the data source's state.

    :param state: a :class:`DataSourceState`.
    :param state_since: when the state began (epoch seconds).
    :param last_error: the last error, or ``None``.
    """

    def __init__(self, state: DataSourceState, state_since: float,
                 last_error: Optional[DataSourceErrorInfo]) -> None:
        self.__state = state
        self.__since = state_since
        self.__error = last_error

    @property
    def state(self) -> DataSourceState:
        """The current state."""
        return self.__state

    @property
    def since(self) -> float:
        """When the state began (epoch seconds)."""
        return self.__since

    @property
    def error(self) -> Optional[DataSourceErrorInfo]:
        """The last error, if any."""
        return self.__error

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DataSourceStatus) and self.state == other.state
                and self.since == other.since and self.error == other.error)

    def __repr__(self) -> str:
        return f"DataSourceStatus({self.state.name}, since={self.since:.3f}, error={self.error!r})"


def state_from_text(text: Any) -> DataSourceState:
    """``"VALID"`` / ``"valid"`` / ... → :class:`DataSourceState` (unknown → INITIALIZING)."""
    lowered = str(text or "").lower()
    return next((s for s in DataSourceState if s.value == lowered), DataSourceState.INITIALIZING)


class _Listeners:
    """A copy-on-write list of callbacks; each is called in turn, and one that raises is
    logged without stopping the others."""

    def __init__(self) -> None:
        self._items: List[Callable[[Any], None]] = []
        self._lock = threading.Lock()

    def add(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if fn not in self._items:
                self._items = self._items + [fn]

    def remove(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            self._items = [f for f in self._items if f != fn]

    def __bool__(self) -> bool:
        return bool(self._items)

    def notify(self, value: Any) -> None:
        for fn in self._items:
            try:
                fn(value)
            except Exception as exc:  # a listener must not kill the watcher thread
                log.error("listener %r raised: %r", fn, exc)

    def after_fork(self) -> None:
        self._lock = threading.Lock()


class DataSourceStatusProvider:
    """``client.data_source_status_provider``: the current status and change listeners.

    :param get_status: returns the current :class:`DataSourceStatus` (cheap; no I/O).
    :param ensure_watching: starts the client's watcher thread in this process if needed.
    """

    def __init__(self, get_status: Callable[[], DataSourceStatus],
                 ensure_watching: Callable[[], None]) -> None:
        self._get_status = get_status
        self._ensure_watching = ensure_watching
        self._listeners = _Listeners()
        self._last: Optional[DataSourceStatus] = None

    @property
    def status(self) -> DataSourceStatus:
        """The data source status now (INTERRUPTED when the supervisor's heartbeat is stale)."""
        return self._get_status()

    def add_listener(self, listener: Callable[[DataSourceStatus], None]) -> None:
        """Call ``listener(status)`` on every change of state or error (from a daemon thread
        of this process; in a forked child it is restarted there)."""
        if self._last is None:
            self._last = self._get_status()
        self._listeners.add(listener)
        self._ensure_watching()

    def remove_listener(self, listener: Callable[[DataSourceStatus], None]) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        self._listeners.remove(listener)

    def has_listeners(self) -> bool:
        """Whether anyone listens (the watcher uses this to decide whether to poll)."""
        return bool(self._listeners)

    def poll(self) -> None:
        """Compare the status with the last one seen and notify on a change (watcher thread)."""
        if not self._listeners:
            return
        status = self._get_status()
        last = self._last
        self._last = status
        if last is None or (status.state, status.error) != (last.state, last.error):
            self._listeners.notify(status)

    def after_fork(self) -> None:
        self._listeners.after_fork()


class BigSegmentStoreStatus:
    """Whether the big segment store can be queried and whether its data is stale.

    :param available: the store answers queries.
    :param stale: the store answers but has not been updated within ``stale_after``.
    """

    def __init__(self, available: bool, stale: bool) -> None:
        self.__available = available
        self.__stale = stale

    @property
    def available(self) -> bool:
        """True when membership queries can be answered."""
        return self.__available

    @property
    def stale(self) -> bool:
        """True when the store's data may be out of date."""
        return self.__stale

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BigSegmentStoreStatus) and self.available == other.available
                and self.stale == other.stale)

    def __repr__(self) -> str:
        return f"BigSegmentStoreStatus(available={self.available}, stale={self.stale})"


class BigSegmentStoreStatusProvider:
    """``client.big_segment_store_status_provider``.

    shmflags workers do not query a big segment store themselves; until that exists the
    status is what ldclient reports without a configured store: not available, not stale.
    Listeners are accepted and never called, as in ldclient without a store.
    """

    def __init__(self) -> None:
        self._listeners = _Listeners()

    @property
    def status(self) -> BigSegmentStoreStatus:
        """Always ``BigSegmentStoreStatus(available=False, stale=False)`` for now."""
        return BigSegmentStoreStatus(False, False)

    def add_listener(self, listener: Callable[[BigSegmentStoreStatus], None]) -> None:
        """Register a listener for status changes."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[BigSegmentStoreStatus], None]) -> None:
        """Unregister a listener; unknown listeners are ignored."""
        self._listeners.remove(listener)


class DataStoreStatus:
    """Whether the data store is available and whether it may be stale (ldclient's shape).

    :param available: the store can be read.
    :param stale: the store may be missing recent updates.
    """

    def __init__(self, available: bool, stale: bool) -> None:
        self.__available = available
        self.__stale = stale

    @property
    def available(self) -> bool:
        """True when the store can be read."""
        return self.__available

    @property
    def stale(self) -> bool:
        """True when the store may be missing recent updates."""
        return self.__stale

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DataStoreStatus) and self.available == other.available
                and self.stale == other.stale)


class DataStoreStatusProvider:
    """``client.data_store_status_provider``: a worker's store is the mapped snapshot, which
    cannot fail the way a database can, so it is always available and never monitored (what
    ldclient reports for its in-memory store)."""

    def __init__(self) -> None:
        self._listeners = _Listeners()

    @property
    def status(self) -> DataStoreStatus:
        """Always ``DataStoreStatus(available=True, stale=False)``."""
        return DataStoreStatus(True, False)

    def is_monitoring_enabled(self) -> bool:
        """False: there is nothing to monitor."""
        return False

    def add_listener(self, listener: Callable[[DataStoreStatus], None]) -> None:
        """Accepted; never called."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[DataStoreStatus], None]) -> None:
        """Unregister a listener; unknown listeners are ignored."""
        self._listeners.remove(listener)


def initializing_status(since: Optional[float] = None) -> DataSourceStatus:
    """INITIALIZING with no error, since ``since`` (default now)."""
    return DataSourceStatus(DataSourceState.INITIALIZING, time.time() if since is None else since,
                            None)


__all__ = ["BigSegmentStoreStatus", "BigSegmentStoreStatusProvider", "DataSourceErrorInfo",
           "DataSourceErrorKind", "DataSourceState", "DataSourceStatus",
           "DataSourceStatusProvider", "DataStoreStatus", "DataStoreStatusProvider",
           "initializing_status", "state_from_text"]
