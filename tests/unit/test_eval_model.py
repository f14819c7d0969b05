"""The flag model: parsing never raises; data ldclient refuses gives MALFORMED_FLAG here."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from differential.oracle import Oracle, OracleRejected  # noqa: E402

from shmflags import Client  # noqa: E402
from shmflags.errors import DataError  # noqa: E402
from shmflags.model import (parse_flag, parse_segment, validate_flag,  # noqa: E402
                            validate_payload, validate_segment)

GOOD_FLAG = {"key": "f", "version": 1, "on": True, "variations": [False, True], "offVariation": 0,
             "fallthrough": {"variation": 1}, "salt": "s",
             "prerequisites": [{"key": "p", "variation": 0}],
             "targets": [{"values": ["a"], "variation": 0}],
             "contextTargets": [{"contextKind": "org", "values": ["o"], "variation": 0}],
             "rules": [{"id": "r", "variation": 0, "trackEvents": False,
                        "clauses": [{"contextKind": "user", "attribute": "a", "op": "in", "values": [1], "negate": False}]},
                       {"id": "r2", "rollout": {"variations": [{"variation": 0, "weight": 1, "untracked": False}],
                                                "bucketBy": "a", "contextKind": "user", "seed": 1, "kind": "experiment"},
                        "clauses": []}],
             "trackEvents": False, "trackEventsFallthrough": False, "debugEventsUntilDate": 1,
             "excludeFromSummaries": False, "samplingRatio": 1, "migration": {"checkRatio": 1}}
GOOD_SEGMENT = {"key": "s", "version": 1, "included": ["a"], "excluded": ["b"], "salt": "x",
                "includedContexts": [{"contextKind": "org", "values": ["o"]}], "excludedContexts": [],
                "rules": [{"clauses": [], "weight": 1, "bucketBy": "a", "rolloutContextKind": "user"}],
                "unbounded": False, "unboundedContextKind": "user", "generation": 1}

# (path, bad value) — each must be refused by ldclient and by us; None deletes the property.
FLAG_BREAKS = [
    (("version",), "1"), (("version",), None), (("key",), None), (("key",), 5), (("on",), "yes"),
    (("variations",), {}), (("offVariation",), 1.0), (("offVariation",), "0"), (("fallthrough",), []),
    (("fallthrough", "variation"), "1"), (("fallthrough", "rollout"), "r"), (("prerequisites",), {}),
    (("prerequisites",), ["p"]), (("prerequisites", 0, "key"), None), (("prerequisites", 0, "variation"), None),
    (("targets", 0, "values"), None), (("targets", 0, "values"), [1]), (("targets", 0, "variation"), None),
    (("contextTargets", 0, "contextKind"), 1), (("rules", 0, "clauses"), None), (("rules", 0, "id"), 3),
    (("rules", 0, "clauses", 0, "attribute"), None), (("rules", 0, "clauses", 0, "op"), None),
    (("rules", 0, "clauses", 0, "values"), None), (("rules", 0, "clauses", 0, "values"), "x"),
    (("rules", 0, "clauses", 0, "negate"), 0), (("rules", 0, "clauses", 0, "contextKind"), 2),
    (("rules", 0, "trackEvents"), "no"), (("rules", 1, "rollout", "variations"), None),
    (("rules", 1, "rollout", "variations", 0, "weight"), None), (("rules", 1, "rollout", "variations", 0, "weight"), 0.5),
    (("rules", 1, "rollout", "seed"), "1"), (("rules", 1, "rollout", "bucketBy"), 1), (("rules", 1, "rollout", "kind"), 1),
    (("rules", 1, "rollout", "variations", 0, "untracked"), 1), (("salt",), 1), (("trackEvents",), 1),
    (("trackEventsFallthrough",), "x"), (("debugEventsUntilDate",), "x"), (("excludeFromSummaries",), 1),
    (("samplingRatio",), 0.5), (("migration",), 1), (("migration", "checkRatio"), "1"), (("deleted",), "x"),
    (("rules", 0, "clauses", 0), {"attribute": "a", "op": "before", "values": [10 ** 400]}),
]
SEGMENT_BREAKS = [
    (("version",), None), (("key",), None), (("included",), "a"), (("excluded",), [1]),
    (("includedContexts", 0, "values"), None), (("includedContexts", 0, "contextKind"), 5),
    (("rules", 0, "clauses"), None), (("rules", 0, "weight"), 0.5), (("rules", 0, "bucketBy"), 1),
    (("rules", 0, "rolloutContextKind"), 1), (("salt",), 1), (("unbounded",), 1),
    (("unboundedContextKind",), 1), (("generation",), "1"),
]


def _broken(base, path, value):
    item = copy.deepcopy(base)
    target = item
    for part in path[:-1]:
        target = target[part]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return item


@pytest.fixture(scope="module")
def oracle():
    o = Oracle()
    yield o
    o.close()


def test_good_data_is_accepted_by_both(oracle):
    oracle.load({"f": GOOD_FLAG}, {"s": GOOD_SEGMENT})
    assert validate_flag(GOOD_FLAG).error is None
    assert validate_segment(GOOD_SEGMENT).error is None


@pytest.mark.parametrize("path, value", FLAG_BREAKS, ids=lambda x: repr(x))
def test_flag_refused_like_ldclient(oracle, path, value):
    bad = _broken(GOOD_FLAG, path, value)
    with pytest.raises(OracleRejected):
        oracle.load({"f": bad}, {})
    flag = parse_flag(bad)
    assert flag.error
    with pytest.raises(DataError):
        validate_flag(bad)
    if not (path == ("deleted",)):
        detail = Client.from_data({"flags": {"f": bad}}).variation_detail("f", {"kind": "user", "key": "a"}, "d")
        assert detail.value == "d" and detail.variation_index is None
        assert detail.reason == {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}


@pytest.mark.parametrize("path, value", SEGMENT_BREAKS, ids=lambda x: repr(x))
def test_segment_refused_like_ldclient(oracle, path, value):
    bad = _broken(GOOD_SEGMENT, path, value)
    with pytest.raises(OracleRejected):
        oracle.load({}, {"s": bad})
    assert parse_segment(bad).error
    flag = {"key": "f", "version": 1, "on": True, "variations": [0, 1], "fallthrough": {"variation": 0},
            "rules": [{"id": "r", "variation": 1, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["s"]}]}]}
    detail = Client.from_data({"flags": {"f": flag}, "segments": {"s": bad}}).variation_detail("f", {"kind": "user", "key": "a"}, "d")
    assert detail.reason == {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}


@pytest.mark.parametrize("raw", [None, 5, "flag", [], {"deleted": True}])
def test_parse_never_raises(raw):
    assert parse_flag(raw).error and parse_segment(raw).error


def test_tombstones_parse_without_other_fields():
    flag = parse_flag({"key": "f", "version": 3, "deleted": True})
    assert flag.error is None and flag.deleted and flag.version == 3
    client = Client.from_data({"flags": {"f": {"key": "f", "version": 3, "deleted": True}}})
    assert client.variation_detail("f", {"kind": "user", "key": "a"}, 1).reason["errorKind"] == "FLAG_NOT_FOUND"


def test_null_means_absent_and_bool_counts_as_int(oracle):
    flag = dict(GOOD_FLAG, offVariation=None, salt=None, on=None, trackEvents=None)
    oracle.load({"f": flag}, {})
    parsed = validate_flag(flag)
    assert parsed.off_variation is None and parsed.salt == "" and parsed.on is False
    bool_index = dict(GOOD_FLAG, offVariation=True)
    oracle.load({"f": bool_index}, {})
    assert validate_flag(bool_index).off_variation is True


def test_client_side_prefers_client_side_availability():
    assert parse_flag(dict(GOOD_FLAG, clientSide=True)).client_side is True
    assert parse_flag(dict(GOOD_FLAG, clientSideAvailability={"usingEnvironmentId": True})).client_side is True
    assert parse_flag(dict(GOOD_FLAG, clientSide=True,
                           clientSideAvailability={"usingEnvironmentId": False})).client_side is False
    assert parse_flag(GOOD_FLAG).client_side is False


def test_clause_values_are_preparsed_once():
    flag = parse_flag(dict(GOOD_FLAG, rules=[{"id": "r", "variation": 0, "clauses": [
        {"contextKind": "user", "attribute": "d", "op": "before", "values": ["1970-01-01T00:00:01Z", "bad", 5]},
        {"contextKind": "user", "attribute": "v", "op": "semVerEqual", "values": ["2", "x"]},
        {"contextKind": "user", "attribute": "/a/b", "op": "lessThan", "values": [1, "2", True]}]}]))
    dates, versions, numbers = flag.rules[0].clauses
    assert dates.values.parsed == (1000.0, 5.0)
    assert [v.core for v in versions.values.parsed] == [(2, 0, 0)]
    assert numbers.values.nums == (1.0,) and numbers.attribute.components == ("a", "b")


@pytest.mark.parametrize("flags, refused", [
    ({"f": {"key": "f", "version": 1, "deleted": True, "prerequisites": [1]}}, True),
    ({"f": {"key": "f", "version": 1, "deleted": True, "prerequisites": None}}, True),
    ({"f": {"key": "f", "version": 1, "deleted": True, "prerequisites": {}}}, False),
    ({"f": {"key": "f", "version": 1, "deleted": True, "prerequisites": [{"key": 5}]}}, False),
    ({"f": {"key": "f", "version": 1, "deleted": True, "prerequisites": [{"key": [5]}]}}, True),
    ({"f": {"version": 1, "deleted": True}}, True),
    ({"f": dict(GOOD_FLAG, prerequisites=None)}, True),
    ({"g": GOOD_FLAG}, True),
    ({"f": GOOD_FLAG}, False),
], ids=lambda x: repr(x)[:60])
def test_payload_level_refusals_match_ldclient(oracle, flags, refused):
    """ldclient's store orders flags by prerequisites (tombstones too) and keys them by "key"."""
    try:
        oracle.load(flags, {})
        theirs = False
    except OracleRejected:
        theirs = True
    try:
        validate_payload(flags, {})
        ours = False
    except DataError:
        ours = True
    assert theirs is refused and ours is refused


def test_segments_keep_their_payload_key(oracle):
    segment = dict(GOOD_SEGMENT, key="other")
    oracle.load({}, {"s": segment})
    flags, segments = validate_payload({}, {"s": segment})
    assert segments["s"].key == "other"
