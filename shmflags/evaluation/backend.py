"""``ModelBackend``: the backend contract of docs/internals.md over model objects.

Safe in any process. The in-process client uses it over a dict of parsed flags; the pure-Python
snapshot reader wraps it over records decoded from shared memory. It holds no state besides the
three callables it is given and an :class:`~shmflags.evaluation.evaluator.Evaluator`.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from shmflags.evaluation.detail import error_reason
from shmflags.evaluation.evaluator import BigSegmentsProvider, EvalResult, Evaluator
from shmflags.model import Flag, Segment

__all__ = ["ModelBackend", "EvalTuple", "is_experiment", "flag_info", "copy_value",
           "BIT_TRACK_EVENTS", "BIT_EXPERIMENT", "BIT_EXCLUDE_FROM_SUMMARIES"]

log = logging.getLogger(__name__)

EvalTuple = Tuple[Any, Optional[int], dict, Optional[tuple], tuple]

BIT_TRACK_EVENTS = 1
BIT_EXPERIMENT = 2
BIT_EXCLUDE_FROM_SUMMARIES = 4

_NOT_FOUND: EvalTuple = (None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}, None, ())


def copy_value(value: Any) -> Any:
    """A deep copy of a JSON value's containers (scalars are shared: they are immutable)."""
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    return value


def is_experiment(flag: Flag, reason: dict) -> bool:
    """Does this result need the reason in events (ld-protocol.md §6.3)?"""
    if reason.get("inExperiment"):
        return True
    kind = reason.get("kind")
    if kind == "RULE_MATCH":
        index = reason.get("ruleIndex")
        return isinstance(index, int) and 0 <= index < len(flag.rules) and flag.rules[index].track_events
    if kind == "FALLTHROUGH":
        return flag.track_events_fallthrough
    return False


def flag_info(flag: Flag, reason: dict) -> tuple:
    """The ``info`` member of an EvalTuple: ``(version, bits, debugEventsUntilDate, samplingRatio)``."""
    bits = 0
    if flag.track_events:
        bits |= BIT_TRACK_EVENTS
    if is_experiment(flag, reason):
        bits |= BIT_EXPERIMENT
    if flag.exclude_from_summaries:
        bits |= BIT_EXCLUDE_FROM_SUMMARIES
    return (flag.version, bits, flag.debug_events_until_date, flag.sampling_ratio)


class ModelBackend:
    """Evaluate over model objects supplied by callables.

    :param get_flag: key → :class:`~shmflags.model.Flag` or ``None``; deleted flags count as missing
    :param get_segment: key → :class:`~shmflags.model.Segment` or ``None``
    :param flag_keys: → every flag key (any order; deleted ones are skipped)
    :param big_segments: optional :class:`BigSegmentsProvider`
    """

    def __init__(self, get_flag: Callable[[str], Optional[Flag]],
                 get_segment: Callable[[str], Optional[Segment]],
                 flag_keys: Callable[[], Iterable[str]],
                 big_segments: Optional[BigSegmentsProvider] = None) -> None:
        self._get_flag_raw = get_flag
        self._get_segment_raw = get_segment
        self._flag_keys = flag_keys
        self.evaluator = Evaluator(self._get_flag, self._get_segment, big_segments)

    @classmethod
    def from_dicts(cls, flags: Dict[str, Flag], segments: Dict[str, Segment],
                   big_segments: Optional[BigSegmentsProvider] = None) -> "ModelBackend":
        """A backend over two dicts of parsed objects, keyed as in the LD payload."""
        return cls(flags.get, segments.get, flags.keys, big_segments)

    def _get_flag(self, key: Any) -> Optional[Flag]:
        flag = self._get_flag_raw(key)
        if flag is None or flag.deleted:
            return None
        return flag

    def _get_segment(self, key: Any) -> Optional[Segment]:
        segment = self._get_segment_raw(key)
        if segment is None or segment.deleted:
            return None
        return segment

    # -- backend contract ------------------------------------------------------------------

    def evaluate(self, key: str, context: Any) -> EvalTuple:
        """Evaluate flag ``key`` for a valid context → ``(value, index, reason, info, prereqs)``.

        An unexpected error inside the evaluation gives reason ``EXCEPTION`` (with ``info``),
        as ldclient reports it; it is logged, never raised.
        """
        flag = self._get_flag(key)
        if flag is None:
            return (None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}, None, ())
        try:
            res = self.evaluator.evaluate(flag, context)
        except Exception as exc:  # noqa: BLE001 - evaluation must never raise to the caller
            log.error('Unexpected error while evaluating feature flag "%s": %r', key, exc)
            reason = error_reason("EXCEPTION")
            return (None, None, reason, flag_info(flag, reason), ())
        value = res.value
        if isinstance(value, (dict, list)):
            value = copy_value(value)
        prereqs: tuple = ()
        if res.prereqs:
            prereqs = tuple(
                (p.prereq_of.key, p.flag.key, p.value, p.variation_index, p.reason,
                 flag_info(p.flag, p.reason))
                for p in res.prereqs)
        return (value, res.variation_index, res.reason, flag_info(flag, res.reason), prereqs)

    def evaluate_result(self, key: str, context: Any) -> Optional[EvalResult]:
        """The full :class:`EvalResult` for ``key`` (``None`` when the flag is missing).

        :raises Exception: unexpected evaluation errors (unlike :meth:`evaluate`)
        """
        flag = self._get_flag(key)
        return None if flag is None else self.evaluator.evaluate(flag, context)

    def all_flags_state(self, context: Any, with_reasons: bool = False,
                        client_side_only: bool = False,
                        details_only_for_tracked_flags: bool = False,
                        now_ms: int = 0) -> dict:
        """ldclient's ``FeatureFlagsState.to_json_dict()`` for a valid context (no events)."""
        out: Dict[str, Any] = {}
        meta: Dict[str, Any] = {}
        for key in sorted(self._flag_keys()):
            flag = self._get_flag(key)
            if flag is None or (client_side_only and not flag.client_side):
                continue
            try:
                res = self.evaluator.evaluate(flag, context)
                value, index, reason, prerequisites = (
                    res.value, res.variation_index, res.reason, res.prerequisites)
            except Exception as exc:  # noqa: BLE001
                log.error('Error evaluating flag "%s" in all_flags_state: %r', key, exc)
                value, index, reason, prerequisites = None, None, error_reason("EXCEPTION"), []
            experiment = is_experiment(flag, reason)
            track_events = flag.track_events or experiment
            entry: Dict[str, Any] = {}
            omit_details = False
            if details_only_for_tracked_flags and not track_events and not experiment:
                debug = flag.debug_events_until_date
                if not (debug is not None and debug > now_ms):
                    omit_details = True
            if (with_reasons or experiment) and not omit_details:
                entry["reason"] = reason
            if not omit_details:
                entry["version"] = flag.version
            if prerequisites:
                entry["prerequisites"] = list(prerequisites)
            if index is not None:
                entry["variation"] = index
            if track_events:
                entry["trackEvents"] = True
            if experiment:
                entry["trackReason"] = True
            if flag.debug_events_until_date is not None:
                entry["debugEventsUntilDate"] = flag.debug_events_until_date
            out[flag.key] = copy_value(value)
            meta[flag.key] = entry
        out["$flagsState"] = meta
        out["$valid"] = True
        return out

    def flag_keys(self) -> List[str]:
        """Every (non-deleted) flag key, sorted."""
        return sorted(k for k in self._flag_keys() if self._get_flag(k) is not None)

    def raw_flag(self, key: str) -> Optional[dict]:
        """The flag's LD JSON as stored, or ``None``."""
        flag = self._get_flag(key)
        return None if flag is None else flag.raw

    def raw_segment(self, key: str) -> Optional[dict]:
        """The segment's LD JSON as stored, or ``None``."""
        segment = self._get_segment(key)
        return None if segment is None else segment.raw
