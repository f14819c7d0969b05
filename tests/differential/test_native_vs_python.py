"""Differential tests: the C evaluator against the Python reference and ldclient.

Hypothesis generates flag/segment data sets and contexts (``strategies.py``, shared with
``test_vs_ldclient.py``). For every data set one snapshot is built and opened by
``shmflags._native`` and ``shmflags._pure``; for every context and flag (plus an unknown key)
the whole ``EvalTuple`` must be identical (value and its type, variation index, reason, event
info, prerequisite events), and ``all_flags_state`` must be identical for all eight option
combinations. A sample of data sets is also checked against ldclient itself; a disagreement
with ldclient is saved as ``tests/corpus/found-<hash>.json`` (ldclient's answers as the
expectation) before the test fails, so it becomes a permanent corpus case.

Budget: ``SHMFLAGS_DIFF_EXAMPLES_NATIVE`` evaluations (default 100000; each data set gives
dozens), seed ``SHMFLAGS_DIFF_SEED`` (default 0). A case count below the budget fails the run,
so a strategy that silently generates nothing cannot pass.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import native_module, snapshot_bytes
from differential import strategies as S
from shmflags import _pure
from shmflags.context import Context, coerce

CASES = int(os.environ.get("SHMFLAGS_DIFF_EXAMPLES_NATIVE", "100000"))
SEED = int(os.environ.get("SHMFLAGS_DIFF_SEED", "0"))
OPTIONS = list(itertools.product([False, True], repeat=3))
NOW_MS = 1_700_000_000_000
# A data set yields (flags + 1) evaluations per context plus 8 all_flags_state calls per
# context, each evaluating every flag; about 50 cases on average with these strategies.
PER_EXAMPLE = 40
COUNTER = {"evaluations": 0, "datasets": 0}


def same(a: Any, b: Any) -> bool:
    """Equality that also compares the types of scalars (True vs 1, 1 vs 1.0) recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def compare(flags: Dict[str, Any], segments: Dict[str, Any], contexts: List[Context]) -> None:
    """Assert C and Python agree on every evaluation of one data set."""
    native = native_module()
    raw = snapshot_bytes(flags, segments)
    c, py = native.Snapshot(raw), _pure.Snapshot(raw)
    assert c.flag_keys() == py.flag_keys()
    assert (c.flag_count, c.segment_count, c.generation) == (py.flag_count, py.segment_count, py.generation)
    for ctx in contexts:
        for key in list(flags) + ["missing"]:
            got, want = c.evaluate(key, ctx), py.evaluate(key, ctx)
            assert same(got, want), f"flag {key!r} ctx {ctx!r}:\n C  {got}\n py {want}\n{flags}\n{segments}"
            COUNTER["evaluations"] += 1
        for opts in OPTIONS:
            got_all = c.all_flags_state(ctx, *opts, NOW_MS)
            want_all = py.all_flags_state(ctx, *opts, NOW_MS)
            assert same(got_all, want_all), f"all_flags_state{opts} ctx {ctx!r}:\n C  {got_all}\n py {want_all}"
            COUNTER["evaluations"] += len(flags)
    COUNTER["datasets"] += 1


def _contexts(dicts: List[Dict[str, Any]]) -> List[Context]:
    out = [coerce(d) for d in dicts]
    return [c for c in out if c.valid]


@seed(SEED)
@settings(max_examples=max(1, CASES // PER_EXAMPLE), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=S.datasets(), contexts=S.context_lists(3))
def test_native_matches_python_reference(data, contexts):
    flags, segments = data
    compare(flags, segments, _contexts(contexts))


LD_EXAMPLES = int(os.environ.get("SHMFLAGS_DIFF_EXAMPLES_NATIVE_LD", str(max(1, CASES // 60))))


@pytest.fixture(scope="module")
def oracle():
    from differential.oracle import Oracle

    o = Oracle()
    yield o
    o.close()


@seed(SEED + 1)
@settings(max_examples=LD_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=S.datasets(), contexts=S.context_lists(2))
def test_native_matches_ldclient(oracle, data, contexts):
    """The C backend against ldclient itself: value, index, reason and all-flags JSON."""
    from differential.oracle import OracleRejected
    from shmflags.errors import DataError
    from shmflags.model import validate_payload

    flags, segments = data
    try:
        oracle.load(flags, segments)
    except OracleRejected:
        # ldclient refuses the payload; so does our validation (the supervisor never
        # publishes it), and the C evaluator is not asked
        with pytest.raises(DataError):
            validate_payload(flags, segments)
        return
    native = native_module()
    snap = native.Snapshot(snapshot_bytes(flags, segments))
    for raw_ctx in contexts:
        ctx = coerce(raw_ctx)
        if not ctx.valid:
            continue
        for key in list(flags) + ["missing"]:
            value, index, reason, _info, _prereqs = snap.evaluate(key, ctx)
            want = oracle.detail(key, raw_ctx, None)
            got = {"value": value, "variationIndex": index, "reason": reason}
            if reason.get("errorKind") == "EXCEPTION":
                continue     # ldclient also reports EXCEPTION; its value is the default
            if not same(got, want):
                from differential.test_vs_ldclient import _save

                path = _save(flags, segments, contexts, oracle, f"C evaluator, {key}: {got} != {want}")
                assert same(got, want), f"flag {key!r} ctx {raw_ctx!r}: C {got} ldclient {want} (saved {path})"
        for opts in OPTIONS:
            got_all = snap.all_flags_state(ctx, *opts, NOW_MS)
            want_all = oracle.all_flags(raw_ctx, with_reasons=opts[0], client_side_only=opts[1],
                                        details_only_for_tracked_flags=opts[2])
            if opts[2]:
                continue   # ldclient compares debugEventsUntilDate with its own clock
            assert got_all == want_all, f"all_flags_state{opts}: C {got_all} ldclient {want_all}"


def test_case_budget_was_met():
    """Runs after the property test (file order): the budget must really have been spent."""
    if COUNTER["datasets"] == 0:
        pytest.skip("property test not run in this session")
    assert COUNTER["evaluations"] >= CASES * 0.5, COUNTER


# ---------------------------------------------------------------------------- operators
_DIGITS = st.integers(0, 99).map(str)
_date_strings = st.builds(
    lambda y, mo, d, h, mi, s, frac, sep, tz: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{tz}",
    st.integers(0, 10000), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
    st.integers(0, 60), st.integers(0, 60),
    st.sampled_from(["", ".5", ".123", ".123456", ".1234567", ".123456789", "."]),
    st.sampled_from(["T", "t", " ", "x"]),
    st.sampled_from(["Z", "z", "+00:00", "-07:00", "+14:00", "+5", "", "+0530", "Z\n"]))
_semver_strings = st.builds(
    lambda a, b, c, pre, build: f"{a}{b}{c}{pre}{build}",
    st.sampled_from(["0", "1", "2", "01", "10", "v1", ""]),
    st.sampled_from(["", ".0", ".1", ".01", ".10"]),
    st.sampled_from(["", ".0", ".2", ".0.0"]),
    st.sampled_from(["", "-rc", "-rc.1", "-rc.01", "-alpha.beta", "-0", "-1.2.3", "-x-y", "-"]),
    st.sampled_from(["", "+b", "+b.1", "+", "+b..c"]))
_scalars = st.one_of(
    st.text(st.sampled_from(list("aAbB.-_@üß€ \n*^$[]()?+\\d")), max_size=8),
    _date_strings, _semver_strings,
    st.integers(-(2 ** 70), 2 ** 70), st.sampled_from([0, 1, -1, 2 ** 53, 2 ** 53 + 1, 2 ** 63, -(2 ** 63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e300]),
    st.booleans(), st.none())
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3),
                    st.dictionaries(st.sampled_from(["a", "b"]), _scalars, max_size=2))
_OPS = ["in", "startsWith", "endsWith", "contains", "matches", "lessThan", "lessThanOrEqual",
        "greaterThan", "greaterThanOrEqual", "before", "after", "semVerEqual", "semVerLessThan",
        "semVerGreaterThan", "unknown"]
OP_EXAMPLES = int(os.environ.get("SHMFLAGS_DIFF_EXAMPLES_NATIVE_OPS", str(max(1, CASES // 50))))


@seed(SEED + 2)
@settings(max_examples=OP_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(_OPS), values=st.lists(_values, max_size=4), attr=_values,
       negate=st.booleans(), bucket_by=st.sampled_from([None, "attr"]), echo=st.booleans())
def test_operators_match_ldclient(oracle, op, values, attr, negate, bucket_by, echo):
    """One clause (and a rollout bucketed by the same attribute) against ldclient."""
    if echo:
        values = values + [attr]   # near misses and hits, not only unrelated values
    rollout = {"variations": [{"variation": 0, "weight": 30000}, {"variation": 1, "weight": 70000}]}
    if bucket_by:
        rollout["bucketBy"] = bucket_by
    f = {"key": "f", "version": 1, "on": True, "salt": "s", "variations": ["no", "yes"],
         "fallthrough": {"rollout": rollout},
         "rules": [{"id": "r", "variation": 1, "clauses": [
             {"attribute": "attr", "op": op, "values": values, "negate": negate}]}]}
    from differential.oracle import OracleRejected

    try:
        oracle.load({"f": f}, {})
    except OracleRejected:
        return     # e.g. a date value beyond float range: refused by both (compile tests it)
    raw_ctx = {"kind": "user", "key": "k", "attr": attr}
    ctx = coerce(raw_ctx)
    assert ctx.valid
    snap = native_module().Snapshot(snapshot_bytes({"f": f}, {}))
    value, index, reason, _info, _prereqs = snap.evaluate("f", ctx)
    want = oracle.detail("f", raw_ctx, None)
    if want["reason"].get("errorKind") == "EXCEPTION":
        assert reason.get("errorKind") == "EXCEPTION"
        return
    assert same({"value": value, "variationIndex": index, "reason": reason}, want), (op, values, attr)
