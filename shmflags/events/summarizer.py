"""Merge the summary counters that workers send into one ``summary`` event per flush window.

Runs in the supervisor. Workers count evaluations per flag and per (variation, version);
this class adds their datagrams together and renders ldclient's ``summary`` event
(ld-protocol §6.2): ``default`` is the first one seen for the flag in the window,
``contextKinds`` the union of kinds, and each counter's ``value`` the first one seen.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

__all__ = ["Summarizer"]

_CounterKey = Tuple[Optional[int], Optional[int]]


class _Flag:
    __slots__ = ("default", "kinds", "counters")

    def __init__(self, default: Any) -> None:
        self.default = default
        self.kinds: Dict[str, None] = {}  # ordered set
        self.counters: Dict[_CounterKey, List[Any]] = {}  # key -> [count, value]


class Summarizer:
    """Summary state of one flush window. Not thread-safe (the processor holds a lock)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Start a new window."""
        self.start = 0
        self.end = 0
        self._flags: Dict[str, _Flag] = {}
        self.evaluations = 0

    def empty(self) -> bool:
        """True when nothing was counted in this window."""
        return not self._flags

    def merge(self, start: int, end: int, flags: List[list]) -> None:
        """Add one worker datagram's summary.

        :param start: the worker window's first evaluation time (ms)
        :param end: its last evaluation time (ms)
        :param flags: validated ``[key, default, kinds, counters]`` items
        """
        if not flags:
            return
        if self.start == 0 or start < self.start:
            self.start = start
        if end > self.end:
            self.end = end
        for key, default, kinds, counters in flags:
            flag = self._flags.get(key)
            if flag is None:
                flag = self._flags[key] = _Flag(default)
            for kind in kinds:
                flag.kinds[kind] = None
            for variation, version, value, count in counters:
                ck = (variation, version)
                counter = flag.counters.get(ck)
                if counter is None:
                    flag.counters[ck] = [count, value]
                else:
                    counter[0] += count
                self.evaluations += count

    def event(self) -> Dict[str, Any]:
        """The ``summary`` event for this window (call only when not :meth:`empty`)."""
        features: Dict[str, Any] = {}
        for key, flag in self._flags.items():
            counters = []
            for (variation, version), (count, value) in flag.counters.items():
                counter: Dict[str, Any] = {"count": count, "value": value}
                if variation is not None:
                    counter["variation"] = variation
                if version is None:
                    counter["unknown"] = True
                else:
                    counter["version"] = version
                counters.append(counter)
            features[key] = {"default": flag.default, "contextKinds": list(flag.kinds),
                             "counters": counters}
        return {"kind": "summary", "startDate": self.start, "endDate": self.end,
                "features": features}
