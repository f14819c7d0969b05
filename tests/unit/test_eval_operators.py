"""Clause operators, one table per operator: type rules and edges of ld-protocol.md §3.6 / §11."""
from __future__ import annotations

import pytest

from shmflags.evaluation.operators import OPERATORS, OP_UNKNOWN, match_value, op_code, prepare


def matches(op: str, clause_values, value) -> bool:
    code = op_code(op)
    return match_value(code, prepare(code, clause_values), value)


@pytest.mark.parametrize("clause, value, expected", [
    (["a"], "a", True), (["a"], "A", False), ([1], 1.0, True), ([1.0], 1, True),
    ([True], 1, False), ([1], True, False), ([False], 0, False), ([0], False, False),
    ([True], True, True), ([-0.0], 0, True), ([2 ** 53], 2 ** 53 + 1, False),
    ([float(2 ** 53)], 2 ** 53, True), ([{"a": [1]}], {"a": [1]}, True), ([[1, 2]], [1, 2], True),
    ([{"a": 1}], {"a": 2}, False), (["1"], 1, False), ([None], None, False), ([], "a", False),
    ([float("nan")], float("nan"), False), (["straße"], "STRASSE", False), (["ü"], "ü", True),
])
def test_in(clause, value, expected):
    assert matches("in", clause, value) is expected


@pytest.mark.parametrize("op, clause, value, expected", [
    ("startsWith", ["ab"], "abc", True), ("startsWith", [""], "abc", True), ("startsWith", ["AB"], "abc", False),
    ("startsWith", ["1"], 12, False), ("startsWith", [1], "12", False),
    ("endsWith", ["bc"], "abc", True), ("endsWith", [""], "", True), ("endsWith", ["c"], ["abc"], False),
    ("contains", ["b"], "abc", True), ("contains", [""], "x", True), ("contains", ["B"], "abc", False),
    ("contains", ["ß"], "straße", True), ("contains", [True], "True", False),
])
def test_string_operators(op, clause, value, expected):
    assert matches(op, clause, value) is expected


@pytest.mark.parametrize("op, clause, value, expected", [
    ("lessThan", [10], 9.99, True), ("lessThan", [10], 10, False), ("lessThanOrEqual", [10], 10.0, True),
    ("greaterThan", [10], 10.5, True), ("greaterThan", [10], 10, False), ("greaterThanOrEqual", [10], 10, True),
    ("lessThan", [10], True, False), ("greaterThan", [True], 5, False), ("lessThan", ["10"], 5, False),
    ("lessThan", [10], "5", False), ("greaterThan", [2 ** 53], 2 ** 53 + 1, False),
    ("lessThan", ["x", 10], 5, True), ("greaterThan", [-0.0], 0.0, False),
])
def test_numeric_operators(op, clause, value, expected):
    assert matches(op, clause, value) is expected


def test_numeric_overflow_escapes_like_ldclient():
    with pytest.raises(OverflowError):
        matches("lessThan", [1], 10 ** 400)
    with pytest.raises(OverflowError):
        matches("lessThan", [10 ** 400], 1)
    assert matches("lessThan", [5, 10 ** 400], 1) is True  # matched before reaching it
    assert matches("lessThan", [10 ** 400], "x") is False  # not a number: never compared


@pytest.mark.parametrize("op, clause, value, expected", [
    ("before", [1000], 999, True), ("before", [1000], 1000, False), ("after", [1000], 1000, False),
    ("after", ["1970-01-01T00:00:01Z"], 1001, True), ("before", ["1970-01-01T00:00:01Z"], "1970-01-01T00:00:00.999Z", True),
    ("after", ["1970-01-01"], 10 ** 12, False), ("before", [1000], True, False), ("before", [True], 0, False),
    ("before", ["1000"], 0, False), ("after", [0], "1970-01-01T00:00:00.001+00:00", True),
])
def test_date_operators(op, clause, value, expected):
    assert matches(op, clause, value) is expected


@pytest.mark.parametrize("op, clause, value, expected", [
    ("semVerEqual", ["2.0.0"], "2", True), ("semVerEqual", ["2-rc"], "2.0.0-rc", True),
    ("semVerEqual", ["2.0.0"], "2.0.0+build", True), ("semVerEqual", ["2.0.0"], "v2.0.0", False),
    ("semVerLessThan", ["2.0.0"], "2.0.0-rc.1", True), ("semVerGreaterThan", ["2.0.0-rc.2"], "2.0.0-rc.10", True),
    ("semVerLessThan", ["2.0.0"], 1, False), ("semVerEqual", [2], "2", False), ("semVerEqual", ["2.0.0"], "02.0.0", False),
])
def test_semver_operators(op, clause, value, expected):
    assert matches(op, clause, value) is expected


@pytest.mark.parametrize("clause, value, expected", [
    (["b"], "abc", True), (["^b"], "abc", False), (["(?=a)a"], "a", True), (["["], "[", False),
    (["\\d"], "a1", True), (["A"], "abc", False), ([1], "1", False), (["a"], 1, False), (["x", "c$"], "abc", True),
])
def test_matches(clause, value, expected):
    assert matches("matches", clause, value) is expected


def test_regexes_compile_once_per_clause():
    code = op_code("matches")
    values = prepare(code, ["a+", "["])
    first = values.regexes()
    assert first[1] is None and first[0].pattern == "a+"
    assert values.regexes() is first


def test_unknown_operator_never_matches():
    assert op_code("resembles") == OP_UNKNOWN and op_code(5) == OP_UNKNOWN
    assert matches("resembles", ["a"], "a") is False


def test_operator_table_is_complete():
    assert set(OPERATORS) == {"in", "startsWith", "endsWith", "contains", "matches", "lessThan",
                              "lessThanOrEqual", "greaterThan", "greaterThanOrEqual", "before",
                              "after", "semVerEqual", "semVerLessThan", "semVerGreaterThan",
                              "segmentMatch"}
    assert len(set(OPERATORS.values())) == len(OPERATORS) and OP_UNKNOWN not in OPERATORS.values()
