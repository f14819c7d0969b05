"""ldclient as a test oracle: one ``LDClient`` whose data is replaced for each case.

Test-only (imports ldclient). Used by the differential tests and by
``scripts/record_corpus.py``. No network: the client's data source is a stub that hands us
its feature store; events and diagnostics are off.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional

from ldclient.client import LDClient
from ldclient.config import BigSegmentsConfig, Config
from ldclient.context import Context as LDContext
from ldclient.impl.events.types import EventFactory
from ldclient.interfaces import UpdateProcessor
from ldclient.versioned_data_kind import FEATURES, SEGMENTS

__all__ = ["Oracle", "OracleRejected"]


class OracleRejected(Exception):
    """ldclient refused to store the data set (a flag or segment failed its validation)."""


class _StubSource(UpdateProcessor):
    def __init__(self, store: Any, ready: threading.Event) -> None:
        self.store = store
        self._ready = ready

    def start(self) -> None:
        self._ready.set()

    def stop(self) -> None:
        pass

    def initialized(self) -> bool:
        return True

    def is_alive(self) -> bool:
        return True


def _event_tuple(e: Any) -> tuple:
    return (None if e.prereq_of is None else e.prereq_of.key, e.key, e.variation, e.value, e.reason,
            e.track_events, e.sampling_ratio, e.exclude_from_summaries,
            e.flag.debug_events_until_date, e.flag.version)


class Oracle:
    """An ``LDClient`` with replaceable in-memory data.

    >>> oracle = Oracle(); oracle.load({"f": {...}}, {}); oracle.client.variation_detail(...)
    """

    def __init__(self, big_segments: Any = None) -> None:
        """:param big_segments: optional ``ldclient`` Big Segment store (membership cache off)."""
        holder: Dict[str, _StubSource] = {}

        def factory(config: Config, store: Any, ready: threading.Event) -> _StubSource:
            holder["source"] = _StubSource(store, ready)
            return holder["source"]

        logging.getLogger("ldclient").setLevel(logging.CRITICAL)
        logging.getLogger("ldclient.flag").setLevel(logging.CRITICAL)
        big = None
        if big_segments is not None:
            big = BigSegmentsConfig(store=big_segments, context_cache_size=1, context_cache_time=0)
        config = Config("sdk-differential-test", update_processor_class=factory,
                        send_events=False, diagnostic_opt_out=True, big_segments=big)
        self.client = LDClient(config, start_wait=0)
        self._source = holder["source"]

    def load(self, flags: Dict[str, Any], segments: Dict[str, Any]) -> None:
        """Replace all data, like a stream ``put``.

        :raises OracleRejected: when ldclient's store refuses the data
        """
        try:
            self._source.store.init({FEATURES: flags, SEGMENTS: segments})
        except Exception as exc:  # noqa: BLE001 - any refusal counts
            raise OracleRejected(repr(exc)) from exc

    def detail(self, key: str, context: Dict[str, Any], default: Any) -> Dict[str, Any]:
        """``variation_detail`` as JSON-shaped ``{"value", "variationIndex", "reason"}``."""
        d = self.client.variation_detail(key, LDContext.from_dict(context), default)
        return {"value": d.value, "variationIndex": d.variation_index, "reason": d.reason}

    def all_flags(self, context: Dict[str, Any], **options: bool) -> Dict[str, Any]:
        """``all_flags_state(...).to_json_dict()``."""
        return self.client.all_flags_state(LDContext.from_dict(context), **options).to_json_dict()

    def events(self, key: str, context: Dict[str, Any]) -> Optional[List[tuple]]:
        """The evaluation events ldclient would send for ``variation(key, context)``.

        Runs ldclient's evaluator directly (no event processor). Each event is
        ``(prereq_of, key, variation, value, reason_or_None, track_events, sampling_ratio,
        exclude_from_summaries, debug_events_until_date, version)``; prerequisite events first,
        the flag's own event last (its value and variation omitted: the caller's default is
        substituted there). ``None`` when the flag does not exist; ``[]`` plus nothing else when
        evaluation raised (ldclient then reports ``EXCEPTION``).
        """
        flag = self._source.store.get(FEATURES, key, lambda x: x)
        if flag is None:
            return None
        ctx = LDContext.from_dict(context)
        factory = EventFactory(False)
        try:
            result = self.client._evaluator.evaluate(flag, ctx, factory)
        except Exception:  # noqa: BLE001 - ldclient's EXCEPTION path
            return []
        out = [_event_tuple(e) for e in (result.events or [])]
        top = factory.new_eval_event(flag, ctx, result.detail, None)
        out.append(_event_tuple(top)[:2] + (None, None) + _event_tuple(top)[4:])
        return out

    def close(self) -> None:
        """Close the client."""
        self.client.close()
