"""Turn validated worker datagrams into LaunchDarkly's output events for one flush window.

Runs in the supervisor. Merges summaries (:mod:`shmflags.events.summarizer`), owns the
context de-duplication LRU so that index events are produced once per host exactly when
ldclient would produce them (ld-protocol §6.4), applies the debug cut-off against the last
server ``Date`` (§6.5), redacts contexts (:mod:`shmflags.events.formatter`) and enforces
``events_max_pending``. Thread-safe: the receive thread adds, the flush thread takes.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from shmflags.context import Context
from shmflags.events.formatter import ContextFormatter
from shmflags.events.summarizer import Summarizer

__all__ = ["EventProcessor", "ContextKeys"]

log = logging.getLogger(__name__)


class ContextKeys:
    """LRU set of fully-qualified context keys (ldclient's ``SimpleLRUCache`` semantics).

    :param capacity: most keys kept; the least recently put one is evicted
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._keys: "OrderedDict[str, None]" = OrderedDict()

    def put(self, key: str) -> bool:
        """Insert or refresh ``key``; return ``True`` if it was already present."""
        keys = self._keys
        if key in keys:
            keys.move_to_end(key)
            return True
        if len(keys) >= self.capacity:
            keys.popitem(last=False)
        keys[key] = None
        return False

    def clear(self) -> None:
        """Forget every key (every ``context_keys_flush_interval``)."""
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)


class EventProcessor:
    """Accumulates output events and the summary between flushes.

    :param config: reads ``events_max_pending``, ``context_keys_capacity``,
        ``all_attributes_private``, ``private_attributes``, ``omit_anonymous_contexts``
    """

    def __init__(self, config: Any) -> None:
        self._capacity = int(config.events_max_pending)
        self._formatter = ContextFormatter(config.all_attributes_private,
                                           config.private_attributes)
        self._omit_anonymous = bool(config.omit_anonymous_contexts)
        self._keys = ContextKeys(config.context_keys_capacity)
        self._lock = threading.Lock()
        self._events: List[Dict[str, Any]] = []
        self._summary = Summarizer()
        self._overflowing = False
        self.last_known_past_time = 0
        # Running totals (status counters); diagnostics report the growth between events.
        self.dropped = 0          # events lost here or reported lost by workers
        self.worker_dropped = 0   # the part reported by workers
        self.deduplicated = 0     # context LRU hits (deduplicatedUsers)
        self.rejected = 0         # items with an invalid context
        self._reported = (0, 0)   # (dropped, deduplicated) at the last diagnostic event

    # -- input -----------------------------------------------------------------------------

    def add(self, datagram: Dict[str, Any]) -> None:
        """Process one validated datagram (see :mod:`shmflags.events.datagram`).

        :param datagram: the result of :func:`shmflags.events.datagram.decode`
        """
        with self._lock:
            dropped = datagram.get("dropped", 0)
            if dropped:
                self.dropped += dropped
                self.worker_dropped += dropped
            summary = datagram.get("summary")
            if summary is not None:
                self._summary.merge(summary[0], summary[1], summary[2])
            for context, first, count, index in datagram.get("contexts", ()):
                self._sighting(context, first, count, index)
            for event in datagram.get("events", ()):
                self._event(event)

    def _context(self, props: Dict[str, Any]) -> Optional[Context]:
        ctx = Context.from_dict(props)
        if not ctx.valid:
            self.rejected += 1
            return None
        return ctx

    def _sighting(self, props: Dict[str, Any], first: int, count: int, index: bool) -> None:
        ctx = self._context(props)
        if ctx is None:
            return
        if self._omit_anonymous:
            ctx = ctx.without_anonymous_contexts()
            if not ctx.valid:
                return
        if self._keys.put(ctx.fully_qualified_key):
            self.deduplicated += count
            return
        if count > 1:
            self.deduplicated += count - 1
        if index:
            self._append({"kind": "index", "creationDate": first,
                          "context": self._formatter.format(ctx, False)})

    def _event(self, event: Dict[str, Any]) -> None:
        ctx = self._context(event["context"])
        if ctx is None:
            return
        kind = event["kind"]
        out = dict(event)
        if kind == "feature":
            out["context"] = self._formatter.format(ctx, True)
        elif kind == "debug":
            if out.pop("debugUntil") <= self.last_known_past_time:
                return
            out["context"] = self._formatter.format(ctx, False)
        elif kind == "identify":
            if self._omit_anonymous:
                ctx = ctx.without_anonymous_contexts()
                if not ctx.valid:
                    return
            out["context"] = self._formatter.format(ctx, False)
        else:  # custom, migration_op
            out["context"] = self._formatter.format(ctx, True)
        self._append(out)

    def _append(self, event: Dict[str, Any]) -> None:
        if len(self._events) >= self._capacity:
            self.dropped += 1
            if not self._overflowing:
                log.warning("Exceeded event queue capacity (events_max_pending=%d); "
                            "events are being dropped", self._capacity)
                self._overflowing = True
            return
        self._overflowing = False
        self._events.append(event)

    # -- control ---------------------------------------------------------------------------

    def set_server_time(self, ms: int) -> None:
        """Record the last ``Date`` returned by the events service (debug cut-off)."""
        self.last_known_past_time = ms

    def clear_context_keys(self) -> None:
        """Forget the de-duplication keys (every ``context_keys_flush_interval``)."""
        with self._lock:
            self._keys.clear()

    def take(self) -> Tuple[List[Dict[str, Any]], int]:
        """Remove and return the window's output payload.

        :returns: ``(payload, n_events)``: the events followed by the ``summary`` event when
            anything was counted (an empty list when there is nothing to send), and the
            number of events excluding the summary (diagnostics' ``eventsInLastBatch``)
        """
        with self._lock:
            events = self._events
            self._events = []
            payload = list(events)
            if not self._summary.empty():
                payload.append(self._summary.event())
            self._summary.clear()
            return payload, len(events)

    def take_diagnostic_counts(self) -> Tuple[int, int]:
        """``(droppedEvents, deduplicatedUsers)`` since the previous call (diagnostic events).

        The attributes :attr:`dropped` and :attr:`deduplicated` keep growing (status counters).
        """
        with self._lock:
            last_dropped, last_dedup = self._reported
            self._reported = (self.dropped, self.deduplicated)
            return self.dropped - last_dropped, self.deduplicated - last_dedup
