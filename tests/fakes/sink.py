"""A SourceSink that records every call, for source tests.

Test-only. Thread-safe; :meth:`RecordingSink.wait_for` blocks until a predicate over the
recorded calls holds.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple


class RecordingSink:
    """Records ``init``/``upsert``/``delete``/``set_status`` calls in :attr:`calls`."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []
        self.environment_ids: List[str] = []
        self._cond = threading.Condition()
        #: set to an exception instance to make the next data call raise it (once)
        self.fail_next: Optional[BaseException] = None

    def _add(self, call: Tuple[Any, ...], data: bool = True) -> None:
        with self._cond:
            if data and self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            self.calls.append(call)
            self._cond.notify_all()

    def init(self, flags: Dict[str, Dict[str, Any]], segments: Dict[str, Dict[str, Any]]) -> None:
        self._add(("init", flags, segments))

    def upsert(self, kind: str, item: Dict[str, Any]) -> None:
        self._add(("upsert", kind, item))

    def delete(self, kind: str, key: str, version: int) -> None:
        self._add(("delete", kind, key, version))

    def set_status(self, state: str, error: Optional[Dict[str, Any]] = None) -> None:
        self._add(("status", state, error), data=False)

    def set_environment_id(self, env_id: str) -> None:
        """Optional sink method (``X-LD-EnvID``); recorded in :attr:`environment_ids`."""
        with self._cond:
            self.environment_ids.append(env_id)

    # -- queries ---------------------------------------------------------------------------

    def of(self, name: str) -> List[Tuple[Any, ...]]:
        with self._cond:
            return [c for c in self.calls if c[0] == name]

    def statuses(self) -> List[Tuple[str, Optional[Dict[str, Any]]]]:
        return [(c[1], c[2]) for c in self.of("status")]

    def data_calls(self) -> List[Tuple[Any, ...]]:
        with self._cond:
            return [c for c in self.calls if c[0] != "status"]

    def wait_for(self, predicate: Callable[["RecordingSink"], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))

    def wait_count(self, name: str, n: int, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda s: len([c for c in s.calls if c[0] == name]) >= n, timeout)
