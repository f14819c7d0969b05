"""Bucketing for rollouts, experiments and weighted segment rules (ld-protocol.md §3.7).

Safe in any process; pure functions.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

from shmflags.evaluation.attrref import AttrRef

__all__ = ["bucket", "attribute_value", "MalformedFlag", "bucketable"]

_SCALE = float(0xFFFFFFFFFFFFFFF)


class MalformedFlag(Exception):
    """Raised inside the evaluator for a structural error; the result is ``MALFORMED_FLAG``."""


def attribute_value(attrs: Dict[str, Any], ref: AttrRef) -> Any:
    """Look ``ref`` up in one individual context's attributes (``None`` when absent).

    Later path components index into JSON objects only, never arrays.

    :raises MalformedFlag: for an invalid reference
    """
    if ref.error is not None:
        raise MalformedFlag(f"invalid attribute reference {ref.raw!r}: {ref.error}")
    comps = ref.components
    value = attrs.get(comps[0])
    for comp in comps[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(comp)
    return value


def bucketable(value: Any) -> bool:
    """Strings and integers (not bools) can be bucketed; anything else lands in bucket 0."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def bucket(seed: Optional[int], eval_map: Dict[str, Dict[str, Any]], context_kind: Optional[str],
           key: str, salt: str, bucket_by: Optional[AttrRef]) -> float:
    """The context's bucket in [0, 1), or -1 when the context has no context of that kind.

    :param seed: experiment seed (replaces ``key.salt`` as hash prefix) or ``None``
    :param eval_map: ``context._eval_map()``
    :param context_kind: the rollout's kind (``None`` ⇒ ``user``)
    :param key: flag or segment key; :param salt: its salt
    :param bucket_by: attribute to hash, ``None`` for the context key
    :raises MalformedFlag: when ``bucket_by`` is an invalid reference
    """
    attrs = eval_map.get(context_kind or "user")
    if attrs is None:
        return -1
    value = attrs["key"] if bucket_by is None else attribute_value(attrs, bucket_by)
    if value is None or not bucketable(value):
        return 0.0
    prefix = str(seed) if seed is not None else "%s.%s" % (key, salt)
    digest = hashlib.sha1(("%s.%s" % (prefix, value)).encode("utf-8")).hexdigest()
    return int(digest[:15], 16) / _SCALE
