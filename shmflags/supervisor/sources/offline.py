"""The offline source: no network, no data of its own.

Runs in the supervisor only. With ``offline = true`` the supervisor serves whatever the
last-known-good file held (published before any source starts) and nothing else; the state is
``OFF`` because no source will ever deliver data. Events are not sent in offline mode
(``send_events`` defaults to false there).
"""
from __future__ import annotations

import logging

from shmflags.config import Config
from shmflags.supervisor.sources import SourceSink

log = logging.getLogger(__name__)


class OfflineSource:
    """A source that only reports itself ``OFF``."""

    name = "offline"

    def __init__(self, config: Config, sink: SourceSink) -> None:
        self._sink = sink

    def start(self) -> None:
        """Mark the data source ``OFF``; cached data, if any, keeps being served."""
        log.info("offline mode: no data source; serving the last-known-good data if any")
        self._sink.set_status("OFF")

    def stop(self) -> None:
        """Nothing to stop."""
