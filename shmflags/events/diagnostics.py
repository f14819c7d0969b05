"""Build the ``diagnostic-init`` and periodic ``diagnostic`` events (ld-protocol §6.7).

Runs in the supervisor. The shapes are ldclient's; the SDK is reported as ``shmflags`` with
its version (and the configured wrapper, if any), the counters come from the supervisor's
event processor (drops include those that workers reported) and from the streaming source
(``streamInits``).
"""
from __future__ import annotations

import platform
import threading
import time
import uuid
from typing import Any, Dict, List

import shmflags

__all__ = ["Diagnostics"]

_DEFAULT_BASE_URI = "https://app.launchdarkly.com"
_DEFAULT_EVENTS_URI = "https://events.launchdarkly.com"
_DEFAULT_STREAM_URI = "https://stream.launchdarkly.com"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: Any) -> Any:
    """Seconds to milliseconds, an int when whole (ldclient multiplies floats by 1000)."""
    value = float(seconds) * 1000
    return int(value) if value == int(value) else value


def _os_name() -> str:
    name = platform.system()
    return "MacOS" if name == "Darwin" else name


class Diagnostics:
    """Diagnostic id, counters since the last periodic event, and the event bodies.

    :param config: the supervisor's :class:`~shmflags.config.Config`
    """

    def __init__(self, config: Any) -> None:
        self._config = config
        key = getattr(config, "sdk_key", "") or ""
        self.id = {"diagnosticId": str(uuid.uuid4()), "sdkKeySuffix": key[-6:] if key else ""}
        self.data_since = _now_ms()
        self._lock = threading.Lock()
        self._events_in_last_batch = 0
        self._stream_inits: List[Dict[str, Any]] = []

    def record_events_in_batch(self, n: int) -> None:
        """Remember the size of the latest flush (``eventsInLastBatch``)."""
        with self._lock:
            self._events_in_last_batch = n

    def record_stream_init(self, timestamp: int, duration_ms: int, failed: bool) -> None:
        """Remember one stream connection attempt (``streamInits``)."""
        with self._lock:
            self._stream_inits.append({"timestamp": timestamp, "durationMillis": duration_ms,
                                       "failed": failed})

    def init_event(self) -> Dict[str, Any]:
        """The ``diagnostic-init`` event, sent once when the service starts."""
        c = self._config
        store = "Redis" if getattr(c, "redis_url", None) else "memory"
        sdk: Dict[str, Any] = {"name": "shmflags", "version": shmflags.__version__}
        if getattr(c, "wrapper_name", None):
            sdk["wrapperName"] = c.wrapper_name
            if getattr(c, "wrapper_version", None):
                sdk["wrapperVersion"] = c.wrapper_version
        return {
            "kind": "diagnostic-init",
            "creationDate": self.data_since,
            "id": self.id,
            "configuration": {
                "customBaseURI": c.base_uri != _DEFAULT_BASE_URI,
                "customEventsURI": c.events_uri != _DEFAULT_EVENTS_URI,
                "customStreamURI": c.stream_uri != _DEFAULT_STREAM_URI,
                "eventsCapacity": c.events_max_pending,
                "connectTimeoutMillis": _ms(c.http_connect_timeout),
                "socketTimeoutMillis": _ms(c.http_read_timeout),
                "eventsFlushIntervalMillis": _ms(c.flush_interval),
                "usingProxy": bool(getattr(c, "proxy_url", None)),
                "streamingDisabled": not c.stream,
                "usingRelayDaemon": bool(c.use_ldd),
                "allAttributesPrivate": bool(c.all_attributes_private),
                "pollingIntervalMillis": _ms(c.poll_interval),
                "userKeysCapacity": c.context_keys_capacity,
                "userKeysFlushIntervalMillis": _ms(c.context_keys_flush_interval),
                "diagnosticRecordingIntervalMillis": _ms(c.diagnostic_recording_interval),
                "dataStoreType": store,
            },
            "sdk": sdk,
            "platform": {
                "name": "python",
                "osArch": platform.machine(),
                "osName": _os_name(),
                "osVersion": platform.release(),
                "pythonVersion": platform.python_version(),
                "pythonImplementation": platform.python_implementation(),
            },
        }

    def periodic_event(self, dropped: int, deduplicated: int) -> Dict[str, Any]:
        """The periodic ``diagnostic`` event; resets the counters it reports.

        :param dropped: events dropped since the last one (supervisor queue and workers)
        :param deduplicated: context de-duplication hits since the last one
        """
        with self._lock:
            batch, inits = self._events_in_last_batch, self._stream_inits
            self._events_in_last_batch = 0
            self._stream_inits = []
        now = _now_ms()
        event = {"kind": "diagnostic", "creationDate": now, "id": self.id,
                 "dataSinceDate": self.data_since, "droppedEvents": dropped,
                 "deduplicatedUsers": deduplicated, "eventsInLastBatch": batch,
                 "streamInits": inits}
        self.data_since = now
        return event
