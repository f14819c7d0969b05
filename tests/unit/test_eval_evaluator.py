"""The evaluator and ModelBackend: reasons, error kinds, prerequisite records, EvalTuple info."""
from __future__ import annotations

from typing import Any, Dict

import pytest

from shmflags import Context
from shmflags.evaluation import Evaluator
from shmflags.evaluation.backend import (BIT_EXCLUDE_FROM_SUMMARIES, BIT_EXPERIMENT,
                                         BIT_TRACK_EVENTS, ModelBackend)
from shmflags.model import parse_flag, parse_segment


def flag(key: str, **kw: Any) -> Dict[str, Any]:
    base = {"key": key, "version": 1, "on": True, "variations": ["a", "b", "c"], "offVariation": 0,
            "fallthrough": {"variation": 1}}
    base.update(kw)
    return base


def backend(*flags: Dict[str, Any], segments=()) -> ModelBackend:
    return ModelBackend.from_dicts({f["key"]: parse_flag(f) for f in flags},
                                   {s["key"]: parse_segment(s) for s in segments})


USER = Context.create("u")


def test_reason_kinds():
    b = backend(flag("off", on=False), flag("fall"), flag("target", targets=[{"values": ["u"], "variation": 2}]),
                flag("rule", rules=[{"id": "r", "variation": 2, "clauses": []}]),
                flag("pre", prerequisites=[{"key": "off", "variation": 1}]))
    assert b.evaluate("off", USER)[:3] == ("a", 0, {"kind": "OFF"})
    assert b.evaluate("fall", USER)[:3] == ("b", 1, {"kind": "FALLTHROUGH"})
    assert b.evaluate("target", USER)[:3] == ("c", 2, {"kind": "TARGET_MATCH"})
    assert b.evaluate("rule", USER)[:3] == ("c", 2, {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "r"})
    assert b.evaluate("pre", USER)[:3] == ("a", 0, {"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "off"})
    assert b.evaluate("nope", USER) == (None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}, None, ())


def test_rule_without_id_reports_null_like_ldclient():
    b = backend(flag("f", rules=[{"variation": 0, "clauses": []}]))
    assert b.evaluate("f", USER)[2] == {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": None}


def test_null_off_variation_is_off_not_error():
    value, index, reason, info, _ = backend(flag("f", on=False, offVariation=None)).evaluate("f", USER)
    assert (value, index, reason) == (None, None, {"kind": "OFF"})
    assert info == (1, 0, None, None)


def test_prerequisite_records_and_events():
    b = backend(flag("top", prerequisites=[{"key": "mid", "variation": 1}, {"key": "leaf2", "variation": 1}]),
                flag("mid", prerequisites=[{"key": "leaf", "variation": 1}], trackEvents=True),
                flag("leaf"), flag("leaf2", version=7))
    value, index, reason, info, prereqs = b.evaluate("top", USER)
    assert (value, index, reason) == ("b", 1, {"kind": "FALLTHROUGH"})
    # nested prerequisite first, each with its immediate parent as prereqOf
    assert [(p[0], p[1], p[3]) for p in prereqs] == [("mid", "leaf", 1), ("top", "mid", 1), ("top", "leaf2", 1)]
    assert prereqs[1][5][1] & BIT_TRACK_EVENTS and prereqs[2][5][0] == 7
    res = b.evaluate_result("top", USER)
    assert res.prerequisites == ["mid", "leaf2"]
    assert [p.prereq_of.key for p in res.prereqs] == ["mid", "top", "top"]


def test_missing_prerequisite_is_recorded_without_event():
    b = backend(flag("top", prerequisites=[{"key": "gone", "variation": 0}]))
    assert b.evaluate("top", USER)[2:] == ({"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "gone"}, (1, 0, None, None), ())
    assert b.evaluate_result("top", USER).prerequisites == ["gone"]


@pytest.mark.parametrize("prereq, expected", [
    (flag("p", fallthrough={"variation": 9}), {"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "p"}),
    (flag("p", fallthrough={"rollout": {"variations": []}}), {"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "p"}),
    (flag("p", rules=[{"id": "r", "variation": 1, "clauses": [{"contextKind": "user", "attribute": "//", "op": "in", "values": []}]}]),
     {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}),
    (flag("p", prerequisites=[{"key": "top", "variation": 1}]), {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}),
])
def test_errors_inside_prerequisites(prereq, expected):
    b = backend(flag("top", prerequisites=[{"key": "p", "variation": 1}]), prereq)
    assert b.evaluate("top", USER)[2] == expected


def test_info_bits():
    b = backend(flag("t", trackEvents=True, excludeFromSummaries=True, debugEventsUntilDate=5, samplingRatio=3),
                flag("ft", trackEventsFallthrough=True),
                flag("rt", rules=[{"id": "r", "variation": 0, "trackEvents": True, "clauses": []}]),
                flag("exp", fallthrough={"rollout": {"kind": "experiment", "variations": [{"variation": 0, "weight": 100000}]}}))
    assert b.evaluate("t", USER)[3] == (1, BIT_TRACK_EVENTS | BIT_EXCLUDE_FROM_SUMMARIES, 5, 3)
    assert b.evaluate("ft", USER)[3][1] == BIT_EXPERIMENT
    assert b.evaluate("rt", USER)[3][1] == BIT_EXPERIMENT
    value, index, reason, info, _ = b.evaluate("exp", USER)
    assert reason == {"kind": "FALLTHROUGH", "inExperiment": True} and info[1] == BIT_EXPERIMENT


def test_container_values_are_fresh_copies():
    b = backend(flag("f", variations=[{"a": [1]}, [1, {"b": 2}]], fallthrough={"variation": 0}))
    first = b.evaluate("f", USER)[0]
    first["a"].append(2)
    assert b.evaluate("f", USER)[0] == {"a": [1]}


def test_unexpected_error_is_exception_reason_not_raised():
    b = backend(flag("f", rules=[{"id": "r", "variation": 0, "clauses": [
        {"contextKind": "user", "attribute": "n", "op": "lessThan", "values": [1]}]}]))
    ctx = Context.builder("u").set("n", 10 ** 400).build()
    value, index, reason, info, prereqs = b.evaluate("f", ctx)
    assert (value, index, reason, prereqs) == (None, None, {"kind": "ERROR", "errorKind": "EXCEPTION"}, ())
    assert info[0] == 1
    state = b.all_flags_state(ctx, True, False, False, 0)
    assert state["$flagsState"]["f"] == {"reason": {"kind": "ERROR", "errorKind": "EXCEPTION"}, "version": 1}


def test_segment_cycle_is_malformed_and_segments_nest():
    segs = [{"key": "a", "version": 1, "rules": [{"clauses": [{"attribute": "", "op": "segmentMatch", "values": ["b"]}]}]},
            {"key": "b", "version": 1, "rules": [{"clauses": [{"attribute": "", "op": "segmentMatch", "values": ["a"]}]}]},
            {"key": "outer", "version": 1, "rules": [{"clauses": [{"attribute": "", "op": "segmentMatch", "values": ["inner"]}]}]},
            {"key": "inner", "version": 1, "included": ["u"]}]
    seg_rule = lambda key: [{"id": "r", "variation": 2, "clauses": [{"attribute": "", "op": "segmentMatch", "values": [key]}]}]
    b = backend(flag("cyc", rules=seg_rule("a")), flag("nest", rules=seg_rule("outer")), segments=segs)
    assert b.evaluate("cyc", USER)[2] == {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}
    assert b.evaluate("nest", USER)[1] == 2


def test_evaluator_contract_directly():
    flags = {"f": parse_flag(flag("f"))}
    ev = Evaluator(flags.get, {}.get)
    result = ev.evaluate(flags["f"], USER)
    assert result.detail.value == "b" and result.detail.variation_index == 1
    assert result.prereqs == [] and result.big_segments_status is None


def test_flag_keys_and_raw_items():
    raw = flag("f")
    b = backend(raw, flag("g", deleted=True), segments=[{"key": "s", "version": 2}])
    assert b.flag_keys() == ["f"]
    assert b.raw_flag("f") is raw and b.raw_flag("g") is None
    assert b.raw_segment("s") == {"key": "s", "version": 2} and b.raw_segment("x") is None
