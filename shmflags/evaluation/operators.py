"""Clause operators: their codes, the per-clause pre-parsed values, and the match functions.

Safe in any process; pure functions over immutable data (a clause's regexes are compiled at
most once, on first use, and cached on the clause).

Type rules (ld-protocol.md §3.6, as ldclient): a type mismatch is a non-match, never an error.
``in`` is JSON equality with Python's ``==`` except that a boolean never equals a number; the
string operators need two strings; the numeric operators two numbers (bools are not numbers);
dates and versions must parse on both sides; ``matches`` is an unanchored ``re.search``.
An unknown operator matches nothing. The one error that can escape is ``OverflowError`` for
an integer too large for a float in a numeric or date comparison, which ldclient lets escape
too (the client then answers ``EXCEPTION``).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Tuple

from shmflags.evaluation.dates import is_number, parse_time
from shmflags.evaluation.semver import compare as semver_compare
from shmflags.evaluation.semver import parse_semver
from shmflags.snapshot.ops import OP_CODES, OP_SEGMENT_MATCH, OP_UNKNOWN, op_code

__all__ = ["OPERATORS", "OP_UNKNOWN", "OP_SEGMENT_MATCH", "ClauseValues", "prepare", "match_value",
           "op_code"]

# Operator codes come from the one table, ``shmflags.snapshot.ops`` (shared with the compiled
# records and the C evaluator); only local aliases are defined here.
OP_IN = OP_CODES["in"]
OP_STARTS_WITH = OP_CODES["startsWith"]
OP_ENDS_WITH = OP_CODES["endsWith"]
OP_CONTAINS = OP_CODES["contains"]
OP_MATCHES = OP_CODES["matches"]
OP_LESS_THAN = OP_CODES["lessThan"]
OP_LESS_THAN_OR_EQUAL = OP_CODES["lessThanOrEqual"]
OP_GREATER_THAN = OP_CODES["greaterThan"]
OP_GREATER_THAN_OR_EQUAL = OP_CODES["greaterThanOrEqual"]
OP_BEFORE = OP_CODES["before"]
OP_AFTER = OP_CODES["after"]
OP_SEMVER_EQUAL = OP_CODES["semVerEqual"]
OP_SEMVER_LESS_THAN = OP_CODES["semVerLessThan"]
OP_SEMVER_GREATER_THAN = OP_CODES["semVerGreaterThan"]

#: LaunchDarkly operator name → operator code (an alias of ``shmflags.snapshot.ops.OP_CODES``).
OPERATORS: Dict[str, int] = OP_CODES

_STRING_OPS = frozenset((OP_STARTS_WITH, OP_ENDS_WITH, OP_CONTAINS, OP_MATCHES))
_NUMERIC_OPS = frozenset((OP_LESS_THAN, OP_LESS_THAN_OR_EQUAL, OP_GREATER_THAN,
                          OP_GREATER_THAN_OR_EQUAL))
_DATE_OPS = frozenset((OP_BEFORE, OP_AFTER))
_SEMVER_OPS = frozenset((OP_SEMVER_EQUAL, OP_SEMVER_LESS_THAN, OP_SEMVER_GREATER_THAN))

_OVERFLOW = object()  # a clause number float() cannot represent; raises when compared
_NOT_COMPILED = object()


class ClauseValues:
    """A clause's values, pre-parsed once for its operator.

    :ivar raw: the values as written
    :ivar strs: (``in``) set of string values; (string ops, ``matches``) tuple of strings
    :ivar nums: (``in``) set of numbers without NaN; (numeric ops) tuple of floats in order
    :ivar bools: (``in``) set of booleans
    :ivar others: (``in``) objects and arrays, compared with ``==``
    :ivar parsed: (dates, versions) pre-parsed values, ``None`` where invalid
    """

    __slots__ = ("raw", "strs", "nums", "bools", "others", "parsed", "_regexes")

    def __init__(self, raw: List[Any]) -> None:
        self.raw = raw
        self.strs: Any = ()
        self.nums: Any = ()
        self.bools: Any = ()
        self.others: Tuple[Any, ...] = ()
        self.parsed: Tuple[Any, ...] = ()
        self._regexes: Any = _NOT_COMPILED

    def regexes(self) -> Tuple[Any, ...]:
        """Compiled patterns for ``matches`` (``None`` for invalid ones), compiled on first use."""
        compiled = self._regexes
        if compiled is _NOT_COMPILED:
            out = []
            for value in self.strs:
                try:
                    out.append(re.compile(value))
                except Exception:  # noqa: BLE001 - any failure means "never matches", as ldclient
                    out.append(None)
            compiled = self._regexes = tuple(out)
        return compiled


def _to_float(value: Any) -> Any:
    try:
        return float(value)
    except OverflowError:
        return _OVERFLOW


def prepare(op: int, values: List[Any]) -> ClauseValues:
    """Pre-parse ``values`` for operator ``op`` (called once per clause, at model parse time).

    :raises OverflowError: for a date clause value that is an integer too large for a float
        (ldclient rejects such data; the model turns it into a malformed flag)
    """
    cv = ClauseValues(values)
    if op == OP_IN:
        strs, nums, bools, others = set(), set(), set(), []
        for v in values:
            if isinstance(v, bool):
                bools.add(v)
            elif isinstance(v, str):
                strs.add(v)
            elif is_number(v):
                if not (isinstance(v, float) and math.isnan(v)):
                    nums.add(v)
            elif v is not None:
                others.append(v)  # objects and arrays: deep ``==`` like ldclient
        cv.strs, cv.nums, cv.bools, cv.others = frozenset(strs), frozenset(nums), frozenset(bools), tuple(others)
    elif op in _STRING_OPS:
        cv.strs = tuple(v for v in values if isinstance(v, str))
    elif op in _NUMERIC_OPS:
        cv.nums = tuple(_to_float(v) for v in values if is_number(v))
    elif op in _DATE_OPS:
        cv.parsed = tuple(t for t in (parse_time(v) for v in values) if t is not None)
    elif op in _SEMVER_OPS:
        cv.parsed = tuple(s for s in (parse_semver(v) for v in values) if s is not None)
    return cv


def _match_in(cv: ClauseValues, u: Any) -> bool:
    if isinstance(u, bool):
        return u in cv.bools
    if isinstance(u, str):
        return u in cv.strs
    if is_number(u):
        return u in cv.nums
    for c in cv.others:
        if u == c:
            return True
    return False


def _match_starts_with(cv: ClauseValues, u: Any) -> bool:
    if isinstance(u, str):
        for c in cv.strs:
            if u.startswith(c):
                return True
    return False


def _match_ends_with(cv: ClauseValues, u: Any) -> bool:
    if isinstance(u, str):
        for c in cv.strs:
            if u.endswith(c):
                return True
    return False


def _match_contains(cv: ClauseValues, u: Any) -> bool:
    if isinstance(u, str):
        for c in cv.strs:
            if c in u:
                return True
    return False


def _match_matches(cv: ClauseValues, u: Any) -> bool:
    if isinstance(u, str) and cv.strs:
        for rx in cv.regexes():
            if rx is not None and rx.search(u) is not None:
                return True
    return False


def _numeric(cv: ClauseValues, u: Any, op: int) -> bool:
    if not cv.nums or not is_number(u):
        return False
    x = float(u)  # OverflowError escapes, as in ldclient
    for c in cv.nums:
        if c is _OVERFLOW:
            raise OverflowError("int too large to convert to float")
        if op == OP_LESS_THAN:
            if x < c:
                return True
        elif op == OP_LESS_THAN_OR_EQUAL:
            if x <= c:
                return True
        elif op == OP_GREATER_THAN:
            if x > c:
                return True
        elif x >= c:
            return True
    return False


def _dates(cv: ClauseValues, u: Any, op: int) -> bool:
    if not cv.parsed:
        return False
    t = parse_time(u)
    if t is None:
        return False
    if op == OP_BEFORE:
        for c in cv.parsed:
            if t < c:
                return True
    else:
        for c in cv.parsed:
            if t > c:
                return True
    return False


def _semvers(cv: ClauseValues, u: Any, op: int) -> bool:
    if not cv.parsed:
        return False
    v = parse_semver(u)
    if v is None:
        return False
    for c in cv.parsed:
        r = semver_compare(v, c)
        if (r == 0 and op == OP_SEMVER_EQUAL) or (r < 0 and op == OP_SEMVER_LESS_THAN) \
                or (r > 0 and op == OP_SEMVER_GREATER_THAN):
            return True
    return False


def match_value(op: int, cv: ClauseValues, u: Any) -> bool:
    """Does the single context value ``u`` (not an array) match any of the clause's values?

    :param op: operator code (not ``OP_SEGMENT_MATCH``)
    :param cv: the clause's pre-parsed values
    :param u: one attribute value, or one element of an array attribute
    """
    if op == OP_IN:
        return _match_in(cv, u)
    if op == OP_STARTS_WITH:
        return _match_starts_with(cv, u)
    if op == OP_ENDS_WITH:
        return _match_ends_with(cv, u)
    if op == OP_CONTAINS:
        return _match_contains(cv, u)
    if op == OP_MATCHES:
        return _match_matches(cv, u)
    if op in _NUMERIC_OPS:
        return _numeric(cv, u, op)
    if op in _DATE_OPS:
        return _dates(cv, u, op)
    if op in _SEMVER_OPS:
        return _semvers(cv, u, op)
    return False

