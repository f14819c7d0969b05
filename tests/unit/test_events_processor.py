"""Supervisor side: datagram validation, summary merging, index/de-dup, debug cut-off, capacity."""
from __future__ import annotations

from typing import Any, Dict, List

import msgpack
import pytest

from shmflags.config import Config
from shmflags.events.datagram import MAX_DATAGRAM, DatagramError, decode, encode
from shmflags.events.processor import ContextKeys, EventProcessor
from shmflags.events.summarizer import Summarizer

USER = {"kind": "user", "key": "u1", "name": "N", "email": "e"}
ANON = {"kind": "user", "key": "a1", "anonymous": True, "name": "A"}
ORG = {"kind": "org", "key": "acme"}


def dg(**sections: Any) -> Dict[str, Any]:
    d = {"v": 1, "pid": 10, "seq": 0}
    d.update(sections)
    return decode(encode(d))


def processor(**kw: Any) -> EventProcessor:
    return EventProcessor(Config(**kw))


def kinds(payload: List[Dict[str, Any]]) -> List[str]:
    return [e["kind"] for e in payload]


# -- datagram ----------------------------------------------------------------------------


def test_decode_accepts_a_full_datagram():
    d = dg(dropped=3, summary=[1, 2, [["f", False, ["user"], [[0, 1, True, 4], [None, None, 1, 1]]]]],
           contexts=[[USER, 1, 2, True]],
           events=[{"kind": "feature", "creationDate": 1, "key": "f", "value": True,
                    "default": False, "version": 1, "variation": 0, "reason": {"kind": "OFF"},
                    "context": USER},
                   {"kind": "debug", "creationDate": 1, "key": "f", "value": 1, "default": 0,
                    "debugUntil": 5, "context": USER},
                   {"kind": "custom", "creationDate": 1, "key": "c", "metricValue": 1.5,
                    "data": {"a": [1]}, "context": ORG},
                   {"kind": "identify", "creationDate": 1, "context": ORG},
                   {"kind": "migration_op", "creationDate": 1, "operation": "read",
                    "evaluation": {"key": "m", "value": "off"}, "context": USER}])
    assert d["dropped"] == 3


@pytest.mark.parametrize("bad", [
    {"v": 1, "pid": 1},                                        # no seq
    {"v": 1, "pid": 1, "seq": 0, "extra": 1},                  # unknown field
    {"v": True, "pid": 1, "seq": 0},                           # bool is not the version
    {"v": 1, "pid": 0, "seq": 0},                              # pid must be positive
    {"v": 1, "pid": 1, "seq": 0, "summary": [2, 1, []]},       # end before start
    {"v": 1, "pid": 1, "seq": 0, "summary": [1, 2, [["", 0, [], [[0, 1, 1, 1]]]]]},
    {"v": 1, "pid": 1, "seq": 0, "summary": [1, 2, [["f", 0, [], []]]]},
    {"v": 1, "pid": 1, "seq": 0, "summary": [1, 2, [["f", 0, [1], [[0, 1, 1, 1]]]]]},
    {"v": 1, "pid": 1, "seq": 0, "summary": [1, 2, [["f", 0, [], [[-1, 1, 1, 1]]]]]},
    {"v": 1, "pid": 1, "seq": 0, "contexts": [[{}, 1, 1, True]]},
    {"v": 1, "pid": 1, "seq": 0, "contexts": [[USER, 1, 1, 1]]},
    {"v": 1, "pid": 1, "seq": 0, "events": [{"kind": "nope", "creationDate": 1,
                                             "context": USER}]},
    {"v": 1, "pid": 1, "seq": 0, "events": [{"kind": "identify", "creationDate": 1,
                                             "context": USER, "key": "x"}]},
    {"v": 1, "pid": 1, "seq": 0, "events": [{"kind": "feature", "creationDate": 1, "key": "f",
                                             "value": 1, "context": USER}]},
    {"v": 1, "pid": 1, "seq": 0, "events": [{"kind": "feature", "creationDate": 1, "key": "f",
                                             "value": 1, "default": 1, "debugUntil": 1,
                                             "context": USER}]},
    {"v": 1, "pid": 1, "seq": 0, "events": [{"kind": "custom", "creationDate": 1, "key": "c",
                                             "metricValue": "1", "context": USER}]},
])
def test_decode_rejects_schema_violations(bad):
    with pytest.raises(DatagramError):
        decode(encode(bad))


def test_decode_rejects_non_json_values_depth_and_size():
    deep: Any = 0
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(DatagramError):
        decode(encode({"v": 1, "pid": 1, "seq": 0, "contexts": [[dict(USER, x=deep), 1, 1, True]]}))
    with pytest.raises(DatagramError):
        decode(msgpack.packb({"v": 1, "pid": 1, "seq": 0, "contexts": [
            [dict(USER, x=b"bin"), 1, 1, True]]}, use_bin_type=True))
    with pytest.raises(DatagramError):
        decode(msgpack.packb({"v": 1, "pid": 1, "seq": 0, "contexts": [
            [dict(USER, x=2 ** 64 - 1), 1, 1, True]]}))
    with pytest.raises(DatagramError):
        decode(b"\x80" * (MAX_DATAGRAM + 1))
    with pytest.raises(DatagramError):
        decode(msgpack.packb({1: 2}))
    with pytest.raises(DatagramError):
        decode(b"\xc1")


# -- summarizer --------------------------------------------------------------------------


def test_summarizer_merges_windows_first_default_and_value_wins():
    s = Summarizer()
    s.merge(100, 200, [["f", "d1", ["user"], [[0, 3, "a", 2], [None, None, "d1", 1]]]])
    s.merge(50, 150, [["f", "d2", ["org", "user"], [[0, 3, "b", 5]]]])
    e = s.event()
    assert (e["startDate"], e["endDate"]) == (50, 200)
    f = e["features"]["f"]
    assert f["default"] == "d1" and sorted(f["contextKinds"]) == ["org", "user"]
    assert {"count": 7, "value": "a", "variation": 0, "version": 3} in f["counters"]
    assert {"count": 1, "value": "d1", "unknown": True} in f["counters"]
    s.clear()
    assert s.empty()


# -- processor ---------------------------------------------------------------------------


def test_index_once_per_context_and_dedup_counts():
    p = processor()
    p.add(dg(contexts=[[USER, 5, 3, True], [ORG, 6, 1, True]]))
    p.add(dg(contexts=[[USER, 9, 2, True]]))
    payload, n = p.take()
    assert kinds(payload) == ["index", "index"] and n == 2
    assert payload[0] == {"kind": "index", "creationDate": 5, "context": USER}
    assert p.deduplicated == 2 + 2


def test_identify_first_primes_without_index():
    p = processor()
    p.add(dg(contexts=[[ORG, 5, 2, False]],
             events=[{"kind": "identify", "creationDate": 5, "context": ORG}]))
    payload, _ = p.take()
    assert kinds(payload) == ["identify"]


def test_context_keys_lru_capacity_and_clear():
    from ldclient.impl.lru_cache import SimpleLRUCache

    keys, oracle = ContextKeys(2), SimpleLRUCache(2)
    sequence = ("a", "b", "a", "c", "b", "a", "a", "c", "b", "c")
    assert [keys.put(k) for k in sequence] == [oracle.put(k, True) for k in sequence]
    assert True in [keys.put(k) for k in ("z", "z")]
    p = processor(context_keys_capacity=1)
    p.add(dg(contexts=[[USER, 1, 1, True], [ORG, 1, 1, True], [USER, 1, 1, True]]))
    assert kinds(p.take()[0]) == ["index", "index", "index"]
    p.add(dg(contexts=[[USER, 1, 1, True]]))
    assert kinds(p.take()[0]) == []
    p.clear_context_keys()
    p.add(dg(contexts=[[USER, 1, 1, True]]))
    assert kinds(p.take()[0]) == ["index"]


def test_redaction_by_event_kind():
    p = processor(private_attributes=["email"])
    feature = {"kind": "feature", "creationDate": 1, "key": "f", "value": 1, "default": 0,
               "context": ANON}
    p.add(dg(contexts=[[ANON, 1, 1, True]], events=[
        feature, dict(feature, kind="debug", debugUntil=10 ** 15),
        {"kind": "custom", "creationDate": 1, "key": "c", "context": USER},
        {"kind": "identify", "creationDate": 1, "context": ANON}]))
    payload, _ = p.take()
    by_kind = {e["kind"]: e for e in payload}
    assert by_kind["index"]["context"] == ANON
    assert by_kind["feature"]["context"] == {"kind": "user", "key": "a1", "anonymous": True,
                                             "_meta": {"redactedAttributes": ["name"]}}
    assert by_kind["debug"]["context"] == ANON and "debugUntil" not in by_kind["debug"]
    assert by_kind["custom"]["context"] == {"kind": "user", "key": "u1", "name": "N",
                                            "_meta": {"redactedAttributes": ["email"]}}
    assert by_kind["identify"]["context"] == ANON


def test_debug_cutoff_uses_server_time():
    p = processor()
    debug = {"kind": "debug", "creationDate": 1, "key": "f", "value": 1, "default": 0,
             "debugUntil": 5000, "context": USER}
    p.set_server_time(4999)
    p.add(dg(events=[debug]))
    p.set_server_time(5000)
    p.add(dg(events=[debug]))
    assert kinds(p.take()[0]) == ["debug"]


def test_omit_anonymous_contexts():
    p = processor(omit_anonymous_contexts=True)
    multi = {"kind": "multi", "user": {"key": "a", "anonymous": True}, "org": {"key": "o"}}
    p.add(dg(contexts=[[ANON, 1, 1, True], [multi, 1, 1, True]], events=[
        {"kind": "identify", "creationDate": 1, "context": ANON},
        {"kind": "identify", "creationDate": 1, "context": multi}]))
    payload, _ = p.take()
    assert payload == [{"kind": "index", "creationDate": 1, "context": {"kind": "org", "key": "o"}},
                       {"kind": "identify", "creationDate": 1,
                        "context": {"kind": "org", "key": "o"}}]


def test_capacity_drops_and_counts_but_summary_survives():
    p = processor(events_max_pending=3)
    events = [{"kind": "custom", "creationDate": 1, "key": "c", "context": USER}] * 5
    p.add(dg(summary=[1, 1, [["f", 0, ["user"], [[0, 1, 0, 9]]]]], events=events, dropped=2))
    payload, n = p.take()
    assert n == 3 and kinds(payload) == ["custom"] * 3 + ["summary"]
    assert p.dropped == 2 + 2 and p.worker_dropped == 2
    assert p.take_diagnostic_counts() == (4, 0)
    assert p.take_diagnostic_counts() == (0, 0)


def test_invalid_context_rejected():
    p = processor()
    p.add(dg(contexts=[[{"kind": "user", "key": ""}, 1, 1, True]],
             events=[{"kind": "custom", "creationDate": 1, "key": "c",
                      "context": {"kind": "kind", "key": "x"}}]))
    assert p.take() == ([], 0)
    assert p.rejected == 2


def test_summary_resets_after_each_take():
    p = processor()
    p.add(dg(summary=[1, 2, [["f", 0, ["user"], [[0, 1, 0, 3]]]]]))
    first, _ = p.take()
    p.add(dg(summary=[5, 6, [["f", 9, ["org"], [[1, 1, 1, 2]]]]]))
    second, _ = p.take()
    assert first[-1]["features"]["f"]["counters"] == [{"count": 3, "value": 0, "variation": 0,
                                                      "version": 1}]
    assert second[-1]["features"]["f"] == {"default": 9, "contextKinds": ["org"],
                                           "counters": [{"count": 2, "value": 1, "variation": 1,
                                                         "version": 1}]}
    assert (second[-1]["startDate"], second[-1]["endDate"]) == (5, 6)
    assert p.take() == ([], 0)


# -- property: decode only ever raises DatagramError, and what it accepts processes ------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                  st.floats(allow_nan=True), st.text(max_size=5), st.binary(max_size=5),
                  st.sampled_from(["feature", "debug", "custom", "identify", "migration_op",
                                   "user", "kind", "key", "context", "summary", "events",
                                   "contexts", "v", "pid", "seq"]))
_any = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["v", "pid", "seq", "kind", "key", "context", "value",
                                     "default", "creationDate", "summary", "events",
                                     "contexts", "dropped", "x"]), inner, max_size=5)),
    max_leaves=25)


@st.composite
def _datagramish(draw):
    base = {"v": 1, "pid": draw(st.integers(-1, 5)), "seq": draw(st.integers(-1, 5))}
    for name in draw(st.lists(st.sampled_from(["summary", "events", "contexts", "dropped", "x"]),
                              max_size=3)):
        base[name] = draw(_any)
    if draw(st.booleans()):
        base["events"] = [{"kind": draw(_any), "creationDate": draw(_any),
                           "context": draw(st.one_of(_any, st.just(USER))),
                           "key": draw(_any), "value": draw(_any), "default": draw(_any)}]
    return base


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.one_of(_any, _datagramish()))
def test_decode_raises_only_datagram_error_and_accepted_input_processes(obj):
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    try:
        d = decode(data)
    except DatagramError:
        return
    p = processor()
    p.add(d)  # must not raise
    p.take()
