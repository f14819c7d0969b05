"""Analytics events: the worker-side recorder and the supervisor-side event service.

Importing this package starts nothing and imports neither side: :class:`EventRecorder`
(workers, :mod:`shmflags.events.recorder`) and :class:`EventService` (supervisor,
:mod:`shmflags.events.service`, which pulls in the HTTP client) are loaded on first access.
The datagram schema between them is in :mod:`shmflags.events.datagram` and ``docs/events.md``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["EventRecorder", "EventService"]


def __getattr__(name: str) -> Any:
    if name == "EventRecorder":
        from shmflags.events.recorder import EventRecorder

        return EventRecorder
    if name == "EventService":
        from shmflags.events.service import EventService

        return EventService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
