"""The worker → supervisor event datagram: schema, limits, encoding and validation.

Safe in any process: pure functions, no sockets, no state. Workers encode with :func:`encode`;
the supervisor decodes untrusted bytes with :func:`decode`, which either returns a datagram
that satisfies every rule below or raises :class:`DatagramError`. The schema is described for
humans in ``docs/events.md``; this module is its single source of truth.

A datagram is one msgpack map (schema version :data:`VERSION`)::

    {"v": 1, "pid": int, "seq": int,
     "dropped": int,                                   # optional, full events lost by the worker
     "summary": [start_ms, end_ms, [flag, ...]],       # optional
     "contexts": [[context, first_ms, count, index], ...],   # optional
     "events": [event, ...]}                           # optional

    flag    = [key, default, [kind, ...], [[variation|nil, version|nil, value, count], ...]]
    context = the context's LD JSON (``Context.to_dict()``), unredacted
    index   = false when this worker sent an identify/migration_op for the context first
    event   = LD output-shaped map with an unredacted ``context``; kinds ``feature``,
              ``debug`` (plus ``debugUntil``), ``custom``, ``identify``, ``migration_op``
"""
from __future__ import annotations

from typing import Any, Dict, List

import msgpack

__all__ = [
    "VERSION", "MAX_DATAGRAM", "MAX_DEPTH", "MAX_ITEMS", "DatagramError", "encode", "decode",
    "validate", "check_event", "check_context_entry", "sighting_fields_ok", "check_summary_flag",
    "EVENT_KINDS",
]

VERSION = 1
"""Schema version carried in every datagram as ``"v"``."""

MAX_DATAGRAM = 64 * 1024
"""Largest datagram, in bytes, that workers send and the supervisor accepts."""

MAX_DEPTH = 32
"""Deepest nesting of JSON values (context attributes, flag values, custom data)."""

MAX_ITEMS = 16384
"""Most flags, counters, contexts or events in one datagram."""

MAX_INT = 2 ** 63 - 1
_INF = float("inf")
_MIN_INT = -(2 ** 63)

EVENT_KINDS = frozenset(["feature", "debug", "custom", "identify", "migration_op"])

_TOP_KEYS = frozenset(["v", "pid", "seq", "dropped", "summary", "contexts", "events"])
_EVAL_KEYS = frozenset(["kind", "creationDate", "key", "value", "default", "version",
                        "variation", "reason", "prereqOf", "context", "debugUntil"])
_CUSTOM_KEYS = frozenset(["kind", "creationDate", "key", "context", "data", "metricValue"])
_IDENTIFY_KEYS = frozenset(["kind", "creationDate", "context"])
_MIGRATION_KEYS = frozenset(["kind", "creationDate", "operation", "context", "evaluation",
                             "samplingRatio", "measurements"])


class DatagramError(ValueError):
    """Bytes that are not a valid event datagram; the message says which rule failed."""


def encode(datagram: Dict[str, Any]) -> bytes:
    """Serialise a datagram map to msgpack bytes.

    :param datagram: a map following the schema above
    :returns: the bytes to send (the caller checks :data:`MAX_DATAGRAM`)
    :raises TypeError: a value msgpack cannot encode (e.g. an arbitrary object)
    :raises OverflowError: an integer outside 64 bits
    """
    return msgpack.packb(datagram, use_bin_type=True)


def decode(data: bytes) -> Dict[str, Any]:
    """Parse and validate untrusted datagram bytes.

    :param data: one received datagram
    :returns: the datagram map, guaranteed to follow the schema
    :raises DatagramError: oversized, not msgpack, or breaking any schema rule
    """
    if len(data) > MAX_DATAGRAM:
        raise DatagramError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                              timestamp=0)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise DatagramError(f"not msgpack: {type(exc).__name__}") from None
    try:
        validate(obj)
    except DatagramError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # a rule written too trustingly
        raise DatagramError(f"malformed datagram: {type(exc).__name__}") from None
    return obj


def _fail(message: str) -> None:
    raise DatagramError(message)


def _check_json(value: Any, depth: int) -> None:
    """Accept JSON-compatible values only (no bytes, ext types, huge ints, deep nesting)."""
    t = type(value)
    if value is None or t is bool or t is str:
        return
    if t is float:
        if value != value or value in (_INF, -_INF):
            _fail("NaN or infinite number")
        return
    if t is int:
        if not _MIN_INT <= value <= MAX_INT:
            _fail("integer out of range")
        return
    if depth >= MAX_DEPTH:
        _fail(f"value nested deeper than {MAX_DEPTH}")
    if t is list:
        for item in value:
            _check_json(item, depth + 1)
        return
    if t is dict:
        for k, item in value.items():
            if type(k) is not str:
                _fail("map key is not a string")
            _check_json(item, depth + 1)
        return
    _fail(f"{t.__name__} is not a JSON value")


def _is_int(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and minimum <= value <= MAX_INT


def _check_str(value: Any, what: str, allow_empty: bool = False) -> None:
    if type(value) is not str or (not value and not allow_empty):
        _fail(f"{what} must be a non-empty string")


def _check_list(value: Any, what: str) -> List[Any]:
    if type(value) is not list:
        _fail(f"{what} must be an array")
    if len(value) > MAX_ITEMS:
        _fail(f"{what} has more than {MAX_ITEMS} items")
    return value


def _check_context(value: Any) -> None:
    if type(value) is not dict or not value:
        _fail("context must be a non-empty map")
    _check_json(value, 1)


def check_context(value: Any) -> None:
    """Check an event's ``context`` value as :func:`check_event` does.

    :raises DatagramError: naming the rule that fails
    """
    _check_context(value)


def _check_reason(value: Any) -> None:
    if type(value) is not dict or type(value.get("kind")) is not str:
        _fail("reason must be a map with a string kind")
    _check_json(value, 1)


def _optional_int(event: Dict[str, Any], name: str, minimum: int = 0) -> None:
    if name in event and not _is_int(event[name], minimum):
        _fail(f"{name} must be an integer >= {minimum}")


def check_event(event: Any, context_checked: bool = False) -> None:
    """Check one event map (workers call this before sending, the supervisor on receipt).

    :param context_checked: the worker already checked this event's ``context`` object with
        :func:`check_context` (it packs one context dict for many events); the supervisor
        never passes it
    :raises DatagramError: naming the rule that fails
    """
    if type(event) is not dict:
        _fail("event must be a map")
    kind = event.get("kind")
    if type(kind) is not str or kind not in EVENT_KINDS:
        _fail(f"unknown event kind {kind!r}")
    if not _is_int(event.get("creationDate")):
        _fail("creationDate must be a non-negative integer")
    if "context" not in event:
        _fail("event has no context")
    if not context_checked:
        _check_context(event["context"])
    if kind in ("feature", "debug"):
        allowed = _EVAL_KEYS
        _check_str(event.get("key"), "key")
        if "value" not in event or "default" not in event:
            _fail("evaluation event needs value and default")
        _check_json(event["value"], 0)
        _check_json(event["default"], 0)
        _optional_int(event, "version", _MIN_INT)
        _optional_int(event, "variation")
        if "reason" in event:
            _check_reason(event["reason"])
        if "prereqOf" in event:
            _check_str(event["prereqOf"], "prereqOf")
        if kind == "debug":
            if not _is_int(event.get("debugUntil")):
                _fail("debug event needs an integer debugUntil")
        elif "debugUntil" in event:
            _fail("debugUntil only belongs to debug events")
    elif kind == "custom":
        allowed = _CUSTOM_KEYS
        _check_str(event.get("key"), "key")
        if "data" in event:
            _check_json(event["data"], 0)
        if "metricValue" in event:
            metric = event["metricValue"]
            if type(metric) not in (int, float):
                _fail("metricValue must be a number")
            _check_json(metric, 0)
    elif kind == "identify":
        allowed = _IDENTIFY_KEYS
    else:
        allowed = _MIGRATION_KEYS
        _check_str(event.get("operation"), "operation")
        evaluation = event.get("evaluation")
        if type(evaluation) is not dict:
            _fail("migration_op needs an evaluation map")
        _check_str(evaluation.get("key"), "evaluation.key")
        _check_json(evaluation, 0)
        _optional_int(event, "samplingRatio", _MIN_INT)
        if "measurements" in event:
            _check_json(_check_list(event["measurements"], "measurements"), 0)
    for name in event:
        if name not in allowed:
            _fail(f"unexpected field {name!r} in {kind} event")


def _check_summary(summary: Any) -> None:
    if type(summary) is not list or len(summary) != 3:
        _fail("summary must be [start, end, flags]")
    start, end, flags = summary
    if not _is_int(start) or not _is_int(end) or end < start:
        _fail("summary dates must be integers with start <= end")
    for flag in _check_list(flags, "summary flags"):
        check_summary_flag(flag)


def check_summary_flag(flag: Any) -> None:
    """Check one ``[key, default, kinds, counters]`` summary item.

    :raises DatagramError: naming the rule that fails
    """
    if type(flag) is not list or len(flag) != 4:
        _fail("summary flag must be [key, default, kinds, counters]")
    key, default, kinds, counters = flag
    _check_str(key, "flag key")
    _check_json(default, 0)
    for kind in _check_list(kinds, "contextKinds"):
        _check_str(kind, "context kind")
    if not counters:
        _fail("summary flag without counters")
    for counter in _check_list(counters, "counters"):
        if type(counter) is not list or len(counter) != 4:
            _fail("counter must be [variation, version, value, count]")
        variation, version, value, count = counter
        if variation is not None and not _is_int(variation):
            _fail("counter variation must be nil or a non-negative integer")
        if version is not None and not _is_int(version, _MIN_INT):
            _fail("counter version must be nil or an integer")
        _check_json(value, 0)
        if not _is_int(count, 1):
            _fail("counter count must be a positive integer")


def sighting_fields_ok(first: Any, count: Any, index: Any) -> bool:
    """Whether a sighting's ``first_ms``, ``count`` and ``index`` follow the schema (the
    rules :func:`check_context_entry` applies besides the context's)."""
    return _is_int(first) and _is_int(count) and type(index) is bool


def check_context_entry(entry: Any) -> None:
    """Check one ``[context, first_ms, count, index]`` sighting.

    :raises DatagramError: naming the rule that fails
    """
    if type(entry) is not list or len(entry) != 4:
        _fail("context entry must be [context, first_ms, count, index]")
    context, first, count, index = entry
    _check_context(context)
    if not sighting_fields_ok(first, count, index):
        _fail("context entry has a bad timestamp, count or index flag")


def _check_contexts(contexts: Any) -> None:
    for entry in _check_list(contexts, "contexts"):
        check_context_entry(entry)


def validate(obj: Any) -> None:
    """Check a decoded datagram against the schema.

    :param obj: the result of unpacking one datagram
    :raises DatagramError: naming the first rule that fails
    """
    if type(obj) is not dict:
        _fail("datagram must be a map")
    for name in obj:
        if name not in _TOP_KEYS:
            _fail(f"unexpected top-level field {name!r}")
    if obj.get("v") != VERSION or type(obj.get("v")) is not int:
        _fail(f"schema version must be {VERSION}")
    if not _is_int(obj.get("pid"), 1) or not _is_int(obj.get("seq")):
        _fail("pid and seq must be integers")
    if "dropped" in obj and not _is_int(obj["dropped"]):
        _fail("dropped must be a non-negative integer")
    if "summary" in obj:
        _check_summary(obj["summary"])
    if "contexts" in obj:
        _check_contexts(obj["contexts"])
    if "events" in obj:
        for event in _check_list(obj["events"], "events"):
            check_event(event)

