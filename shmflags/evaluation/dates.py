"""Timestamp values for the ``before``/``after`` operators: numbers are epoch ms, strings RFC 3339.

Safe in any process; pure functions.

Parity note: ldclient parses strings with ``pyrfc3339`` 2.x, which replaces a trailing ``Z`` by
``+00:00`` and hands the rest to :meth:`datetime.datetime.fromisoformat`; a result without a
UTC offset (a date only, a local time) cannot be compared and is rejected. We follow the same
rules so that every string ldclient accepts, and only those, is a valid timestamp. The value is
``(instant - epoch).total_seconds() * 1000.0`` so that the float is bit-identical.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Optional

__all__ = ["parse_time", "is_number"]

_EPOCH = datetime.fromtimestamp(0, timezone.utc)
_TRAILING_Z = re.compile("Z$", re.IGNORECASE)


def is_number(value: Any) -> bool:
    """JSON number test: ``int`` or ``float`` but never ``bool``."""
    return (type(value) is int or type(value) is float
            or (isinstance(value, (int, float)) and not isinstance(value, bool)))


def parse_time(value: Any) -> Optional[float]:
    """Convert a flag or context value to epoch milliseconds.

    :param value: a JSON number (already epoch ms) or an RFC 3339 date-time string
    :returns: milliseconds as a float, or ``None`` when the value is not a timestamp
    :raises OverflowError: for an integer too large for a float (ldclient raises too; the
        client reports ``EXCEPTION``)
    """
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        text = _TRAILING_Z.sub("+00:00", value)
        try:
            parsed = datetime.fromisoformat(text)
            return (parsed - _EPOCH).total_seconds() * 1000.0
        except (ValueError, TypeError, OverflowError):
            return None
    return None
