"""Data sources of the supervisor and the choice among them (docs/internals.md, source contract).

Runs in the supervisor only. Each source feeds a :class:`SourceSink` (the store) from its own
daemon thread. :func:`create_source` picks one from the configuration, in this order:
``data_file`` → file; ``use_ldd`` → Redis (daemon mode); ``offline`` → offline;
``stream`` → streaming; otherwise polling. Network sources are imported only when chosen.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Optional, Protocol

from shmflags.config import Config

#: source name -> "module:Class" (modules relative to this package)
SOURCES: Dict[str, str] = {
    "file": "file:FileSource",
    "redis": "redis_source:RedisSource",
    "offline": "offline:OfflineSource",
    "streaming": "streaming:StreamingSource",
    "polling": "polling:PollingSource",
}


class SourceSink(Protocol):
    """What sources write to (implemented by :class:`shmflags.supervisor.store.Store`)."""

    def init(self, flags: Dict[str, Dict[str, Any]], segments: Dict[str, Dict[str, Any]]) -> None:
        """Replace all data, like a stream ``put``."""

    def upsert(self, kind: str, item: Dict[str, Any]) -> None:
        """Insert or replace one item (``kind`` ``"flags"`` or ``"segments"``) if newer."""

    def delete(self, kind: str, key: str, version: int) -> None:
        """Store a tombstone if ``version`` is newer."""

    def set_status(self, state: str, error: Optional[Dict[str, Any]] = None) -> None:
        """Report ``VALID``, ``INTERRUPTED`` or ``OFF``, with an LD error-info dict."""


class Source(Protocol):
    """A data source: starts its own daemon thread, stops within about a second."""

    name: str

    def start(self) -> None:
        """Begin feeding the sink; never blocks."""

    def stop(self) -> None:
        """Stop and return within about a second."""


def source_name(config: Config) -> str:
    """The name of the source this configuration selects."""
    if config.data_file:
        return "file"
    if config.use_ldd:
        return "redis"
    if config.offline:
        return "offline"
    return "streaming" if config.stream else "polling"


def create_source(config: Config, sink: SourceSink) -> Source:
    """Instantiate the source :func:`source_name` selects.

    :raises ImportError: when the chosen source's module is not available.
    """
    module_name, cls_name = SOURCES[source_name(config)].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    source: Source = getattr(module, cls_name)(config, sink)
    return source
