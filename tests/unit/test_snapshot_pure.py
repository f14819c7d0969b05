"""_pure.Snapshot: the backend contract over snapshot bytes gives exactly what ModelBackend
gives over the same LD JSON (golden dataset, generated flags, and tests/corpus/ when present)."""
from __future__ import annotations

import glob
import json
import os
import struct

import pytest

from shmflags import _pure
from shmflags.context import Context
from shmflags.evaluation.backend import ModelBackend
from shmflags.model import parse_flag, parse_segment
from shmflags.snapshot import format as fmt
from shmflags.snapshot.builder import SnapshotBuilder

TESTS = os.path.dirname(os.path.dirname(__file__))
CORPUS = sorted(glob.glob(os.path.join(TESTS, "corpus", "*.json")))


def _live(objs: dict) -> dict:
    return {k: v for k, v in objs.items() if not v.get("deleted")}


def _pair(flags: dict, segments: dict):
    data = SnapshotBuilder().build(flags, segments)
    snap = _pure.Snapshot(data)
    model = ModelBackend.from_dicts({k: parse_flag(v) for k, v in _live(flags).items()},
                                    {k: parse_segment(v) for k, v in _live(segments).items()})
    return snap, model


def _golden() -> dict:
    with open(os.path.join(TESTS, "golden", "small.json"), encoding="utf-8") as f:
        return json.load(f)


CONTEXTS = [
    Context.create("alice"), Context.create("bob"), Context.create("carol"),
    Context.builder("dan").set("email", "dan@example.com").build(),
    Context.create("acme", "org"),
    Context.create_multi(Context.create("alice"), Context.create("acme", "org")),
    Context.builder("\u00e9ve").set("email", "x@example.com").build(),
]


def test_header_properties_and_keys():
    ds = _golden()
    snap = _pure.Snapshot(SnapshotBuilder().build(ds["flags"], ds["segments"]))
    assert snap.generation == 0
    assert snap.flag_count == len(_live(ds["flags"]))
    assert snap.segment_count == len(_live(ds["segments"]))
    assert snap.flag_keys() == sorted(_live(ds["flags"]))
    assert snap.raw_flag("alpha") == ds["flags"]["alpha"]
    assert snap.raw_segment("seg-a") == ds["segments"]["seg-a"]
    assert snap.raw_flag("gone") is None and snap.raw_segment("nope") is None
    keys = snap.flag_keys()
    keys.append("mutated")
    assert "mutated" not in snap.flag_keys()


def test_generation_comes_from_the_header():
    data = SnapshotBuilder().build({}, {})
    stamped = fmt.stamp_generation(data[:fmt.HEADER_SIZE], 77) + data[fmt.HEADER_SIZE:]
    assert _pure.Snapshot(stamped).generation == 77


def test_golden_dataset_evaluates_like_model_backend():
    ds = _golden()
    snap, model = _pair(ds["flags"], ds["segments"])
    for key in list(ds["flags"]) + ["missing"]:
        for ctx in CONTEXTS:
            assert snap.evaluate(key, ctx) == model.evaluate(key, ctx), (key, ctx)
    assert snap.evaluate("missing", CONTEXTS[0]) == (
        None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}, None, ())
    for ctx in CONTEXTS:
        for opts in [(False, False, False), (True, False, False), (True, True, True),
                     (False, False, True)]:
            assert snap.all_flags_state(ctx, *opts, now_ms=0) == \
                model.all_flags_state(ctx, *opts, now_ms=0)


def test_dict_values_are_fresh_copies():
    ds = _golden()
    snap, _ = _pair(ds["flags"], ds["segments"])
    ctx = Context.create("x")
    first = snap.evaluate("shared", ctx)[0]
    assert first == {"a": [1, 2.5, None]}
    first["a"].append("mutated")
    assert snap.evaluate("shared", ctx)[0] == {"a": [1, 2.5, None]}


def test_generated_flags_with_rules_segments_and_prereqs():
    flags, segs = {}, {}
    for i in range(40):
        segs[f"s{i}"] = {"key": f"s{i}", "version": 1, "included": [f"u{i}"],
                         "rules": [{"id": "r", "clauses": [
                             {"attribute": "plan", "op": "in", "values": ["pro"]}]}]}
        flags[f"f{i}"] = {
            "key": f"f{i}", "version": i + 1, "on": i % 5 != 0, "salt": f"salt{i}",
            "variations": [f"v{j}" for j in range(3)], "offVariation": 0,
            "fallthrough": {"rollout": {"variations": [{"variation": 1, "weight": 30000},
                                                      {"variation": 2, "weight": 70000}]}},
            "prerequisites": [{"key": f"f{i - 1}", "variation": 1}] if i % 7 == 3 else [],
            "rules": [{"id": "seg", "variation": 2, "trackEvents": i % 2 == 0,
                       "clauses": [{"attribute": "", "op": "segmentMatch",
                                    "values": [f"s{i}"]}]},
                      {"id": "age", "variation": 0,
                       "clauses": [{"attribute": "age", "op": "greaterThan", "values": [30]}]}],
            "trackEventsFallthrough": i % 3 == 0,
        }
    snap, model = _pair(flags, segs)
    ctxs = [Context.builder(f"u{i}").set("plan", "pro" if i % 4 == 0 else "free")
            .set("age", 20 + i).build() for i in range(40)]
    n = 0
    for key in flags:
        for ctx in ctxs[::3]:
            assert snap.evaluate(key, ctx) == model.evaluate(key, ctx)
            n += 1
    assert n == 40 * 14


def test_undecodable_entry_evaluates_as_malformed():
    flags = {"ok": {"key": "ok", "version": 1, "on": True, "variations": [1],
                    "fallthrough": {"variation": 0}},
             "bad": {"key": "bad", "version": 1, "on": True, "variations": [1],
                     "fallthrough": {"variation": 0}}}
    data = bytearray(SnapshotBuilder().build(flags, {}))
    snap = _pure.Snapshot(bytes(data))
    raw_off = snap._reader.find_flag("bad").raw_off
    data[raw_off] = 0xC1
    snap = _pure.Snapshot(fmt.reseal(data))
    ctx = Context.create("k")
    assert snap.evaluate("ok", ctx)[0] == 1
    value, index, reason, _info, _p = snap.evaluate("bad", ctx)
    assert (value, index, reason) == (None, None, {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"})


def _corpus_cases():
    for path in CORPUS:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        yield pytest.param(doc, id=os.path.basename(path))


@pytest.mark.parametrize("doc", list(_corpus_cases()))
def test_corpus_round_trip(doc):
    """Evaluating from the snapshot gives exactly what ModelBackend gives (every corpus file)."""
    flags, segs = doc.get("flags", {}), doc.get("segments", {})
    snap, model = _pair(flags, segs)
    cases = doc.get("evaluations", [])
    for case in cases:
        ctx = Context.from_dict(case["context"])
        if not ctx.valid:
            continue
        key = case.get("flag") or case.get("key") or case.get("flagKey")
        assert snap.evaluate(key, ctx) == model.evaluate(key, ctx), case
    for key in flags:
        assert snap.evaluate(key, Context.create("corpus-user")) == \
            model.evaluate(key, Context.create("corpus-user"))
