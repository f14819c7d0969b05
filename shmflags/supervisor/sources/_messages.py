"""Parsing and validation of LaunchDarkly data payloads (stream events and poll bodies).

Runs in the supervisor only (streaming and polling sources). Only the shape the store relies
on is checked here: a put needs ``flags`` and ``segments`` objects whose items are objects
with a string ``key`` equal to their map key and an integer ``version``; a patch needs a
string ``path`` and such an item; a delete needs a ``path`` and an integer ``version``. Each
item's contents are then checked by the model (``validate_flag`` / ``validate_segment``), which
refuses exactly what ldclient's store refuses (a JSON type where its parser checks one).
Anything else raises :class:`InvalidData`, and nothing invalid ever reaches the sink.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

from shmflags.errors import DataError
from shmflags.model import validate_flag, validate_segment

__all__ = ["InvalidData", "parse_put", "parse_patch", "parse_delete", "parse_all_data", "parse_path"]

KINDS = ("flags", "segments")

Items = Dict[str, Dict[str, Any]]


class InvalidData(DataError):
    """A payload that is not JSON or does not have LaunchDarkly's shape."""


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidData(f"malformed JSON: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_item(kind: str, key: str, item: Any) -> Dict[str, Any]:
    """Check one item of ``kind`` stored under ``key``: an object with that key, an integer
    version, and contents the model accepts.

    :raises InvalidData: naming the item and what is wrong with it.
    """
    if not isinstance(item, dict):
        raise InvalidData(f"{kind} item {key!r} is not an object")
    if item.get("key") != key:
        raise InvalidData(f"{kind} item {key!r} has key {item.get('key')!r}")
    if not _is_int(item.get("version")):
        raise InvalidData(f"{kind} item {key!r} has no integer version")
    try:   # what ldclient's store would refuse (DESIGN §9: never publish unvalidated data)
        (validate_flag if kind == "flags" else validate_segment)(item)
    except DataError as exc:
        raise InvalidData(str(exc)) from None
    return item


def _check_items(data: Dict[str, Any]) -> Tuple[Items, Items]:
    out = []
    for kind in KINDS:
        items = data.get(kind)
        if not isinstance(items, dict):
            raise InvalidData(f"{kind!r} is missing or not an object")
        for key, item in items.items():
            check_item(kind, key, item)
        out.append(items)
    return out[0], out[1]


def parse_all_data(text: str) -> Tuple[Items, Items]:
    """A poll body ``{"flags": {...}, "segments": {...}}`` → ``(flags, segments)``."""
    doc = _json(text)
    if not isinstance(doc, dict):
        raise InvalidData("poll body is not an object")
    return _check_items(doc)


def parse_put(text: str) -> Tuple[Items, Items]:
    """A ``put`` event's data ``{"path": "/", "data": {flags, segments}}`` → ``(flags, segments)``.

    ``path`` is ignored (the test harness omits it), as ldclient does.
    """
    doc = _json(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise InvalidData("put event without a 'data' object")
    return _check_items(doc["data"])


def parse_path(path: Any) -> Optional[Tuple[str, str]]:
    """``"/flags/k"`` → ``("flags", "k")``; an unknown prefix or empty key → ``None``."""
    if not isinstance(path, str):
        raise InvalidData("event without a string 'path'")
    for kind in KINDS:
        prefix = f"/{kind}/"
        if path.startswith(prefix) and len(path) > len(prefix):
            return kind, path[len(prefix):]
    return None


def parse_patch(text: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """A ``patch`` event → ``(kind, item)``, or ``None`` for a path of an unknown kind."""
    doc = _json(text)
    if not isinstance(doc, dict):
        raise InvalidData("patch event is not an object")
    target = parse_path(doc.get("path"))
    if target is None:
        return None
    kind, key = target
    return kind, check_item(kind, key, doc.get("data"))


def parse_delete(text: str) -> Optional[Tuple[str, str, int]]:
    """A ``delete`` event → ``(kind, key, version)``, or ``None`` for an unknown kind."""
    doc = _json(text)
    if not isinstance(doc, dict):
        raise InvalidData("delete event is not an object")
    target = parse_path(doc.get("path"))
    if target is None:
        return None
    if not _is_int(doc.get("version")):
        raise InvalidData("delete event without an integer version")
    return target[0], target[1], int(doc["version"])
