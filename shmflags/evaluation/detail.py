"""Evaluation results: ``EvaluationDetail`` (ldclient's API) and the reason dictionaries.

Safe in any process; plain immutable-by-convention values.
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["EvaluationDetail", "error_reason", "BigSegmentsStatus"]


class EvaluationDetail:
    """The result of ``variation_detail``: a value, its variation index and the reason.

    Same API as ``ldclient.evaluation.EvaluationDetail``: ``value``, ``variation_index``,
    ``reason`` (an LD reason dict such as ``{"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId":
    "r"}``), :meth:`is_default_value`, equality by all three.
    """

    __slots__ = ("_value", "_variation_index", "_reason")

    def __init__(self, value: Any, variation_index: Optional[int], reason: dict) -> None:
        # Only stores its arguments: the client's C fast path (native/fast.c) fills these
        # three slots directly instead of calling __init__.
        self._value = value
        self._variation_index = variation_index
        self._reason = reason

    @property
    def value(self) -> Any:
        """The flag's variation, or the caller's default."""
        return self._value

    @property
    def variation_index(self) -> Optional[int]:
        """Index into the flag's variations, or ``None`` when the default was returned."""
        return self._variation_index

    @property
    def reason(self) -> dict:
        """Why this value was chosen (ld-protocol.md §3.2)."""
        return self._reason

    def is_default_value(self) -> bool:
        """``True`` when no variation was selected (the caller's default applies)."""
        return self._variation_index is None

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "variation_index") or not hasattr(other, "reason"):
            return NotImplemented
        return (self.value == other.value  # type: ignore[attr-defined]
                and self.variation_index == other.variation_index  # type: ignore[attr-defined]
                and self.reason == other.reason)  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"(value={self._value!r}, variation_index={self._variation_index!r}, "
                f"reason={self._reason!r})")

    __str__ = __repr__


def error_reason(error_kind: str) -> dict:
    """A fresh ``{"kind": "ERROR", "errorKind": error_kind}``."""
    return {"kind": "ERROR", "errorKind": error_kind}


class BigSegmentsStatus:
    """Values of ``reason["bigSegmentsStatus"]``."""

    HEALTHY = "HEALTHY"
    STALE = "STALE"
    NOT_CONFIGURED = "NOT_CONFIGURED"
    STORE_ERROR = "STORE_ERROR"
