"""Clause operator codes: the one table of LaunchDarkly operator names (any process).

Compiled records store an operator as a small integer code; both evaluators dispatch on the
code, so an operator name is spelled only here. ``native/record.h`` repeats the numbers as
``SF_OP_*`` and ``tests/unit/test_parity.py`` checks that the two agree.
"""
from __future__ import annotations

from typing import Dict

__all__ = ["OP_CODES", "OP_NAMES", "OP_UNKNOWN", "OP_SEGMENT_MATCH", "op_code"]

#: Code of an operator this version does not know: the clause never matches (then negated).
OP_UNKNOWN = 0

#: Operator name → code. Codes are part of the compiled-record format: never renumber.
OP_CODES: Dict[str, int] = {
    "in": 1,
    "endsWith": 2,
    "startsWith": 3,
    "matches": 4,
    "contains": 5,
    "lessThan": 6,
    "lessThanOrEqual": 7,
    "greaterThan": 8,
    "greaterThanOrEqual": 9,
    "before": 10,
    "after": 11,
    "semVerEqual": 12,
    "semVerLessThan": 13,
    "semVerGreaterThan": 14,
    "segmentMatch": 15,
}

OP_SEGMENT_MATCH = OP_CODES["segmentMatch"]

#: Code → operator name (the inverse of :data:`OP_CODES`).
OP_NAMES: Dict[int, str] = {code: name for name, code in OP_CODES.items()}


def op_code(name: object) -> int:
    """Return the code of operator ``name``, or :data:`OP_UNKNOWN`.

    :param name: the ``op`` field of a clause (any JSON value).
    :returns: an integer code.
    """
    if type(name) is not str:
        return OP_UNKNOWN
    return OP_CODES.get(name, OP_UNKNOWN)
