"""The client's C hot path (native/fast.c): the generation watch behind ``ShmSource.current()``
and the ``variation`` / ``variation_detail`` fast path.

The watch must see every generation switch, visit the slow path every 256th call, survive a
closed control-block mapping and leak no reference; the fast path must answer exactly what the
full Python path answers (value, index, reason, typed conversions) and hand everything unusual
to it (``_SLOW``).
"""
from __future__ import annotations

import gc
import math
import mmap
import struct
import sys
import tracemalloc
import uuid
from typing import Any, Dict, Iterator, List

import pytest

from conftest import native_module, snapshot_bytes
from shmflags import shm
from shmflags.backend import evaluator_backend
from shmflags.client.client import Client
from shmflags.client.source import ShmSource
from shmflags.config import Config
from shmflags.context import Context
from shmflags.evaluation.detail import EvaluationDetail
from shmflags.snapshot.builder import SnapshotBuilder
from shmflags.snapshot.format import CTL_OFF_GENERATION

USER = Context.create("user-1")


@pytest.fixture(scope="module")
def N() -> Any:
    return native_module()


def _flag(key: str, variations: List[Any], **kw: Any) -> Dict[str, Any]:
    base = {"key": key, "version": 3, "on": True, "variations": variations,
            "offVariation": 0, "fallthrough": {"variation": len(variations) - 1}, "salt": "s"}
    base.update(kw)
    return base


FLAGS: Dict[str, Dict[str, Any]] = {
    "b": _flag("b", [False, True]),
    "i": _flag("i", [0, 7]),
    "big": _flag("big", [0, 2 ** 62]),
    "fl": _flag("fl", [0.5, 2.75]),
    "neg": _flag("neg", [0.5, -2.75]),
    "s": _flag("s", ["x", "y"]),
    "j": _flag("j", [{"a": [1]}, [1, {"b": 2}]]),
    "nul": _flag("nul", [None, None]),
    "off": _flag("off", [1, 2], on=False),
    "nooff": _flag("nooff", [1, 2], on=False, offVariation=None),
    "rule": _flag("rule", ["r0", "r1"], rules=[{"id": "rid", "variation": 0, "clauses": [
        {"attribute": "key", "op": "in", "values": ["user-1"]}]}]),
    "tgt": _flag("tgt", ["t0", "t1"], targets=[{"values": ["user-2"], "variation": 0}]),
    "pre": _flag("pre", ["p0", "p1"], prerequisites=[{"key": "b", "variation": 0}]),
    "bad": _flag("bad", ["v"], fallthrough={"variation": 5}),
}
CONTEXTS = [USER, Context.create("user-2"), Context.builder("user-3").kind("org").build(),
            Context.create_multi(Context.create("user-1"), Context.create("o", "org"))]


class _Recorder:
    """Forces the full path (events on) without sending anything."""

    def record_evaluation(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def flush(self) -> None:
        pass


def _clients() -> Any:
    fast = Client.from_data({"flags": FLAGS})
    full = Client.from_data({"flags": FLAGS})
    full._recorder = _Recorder()
    return fast, full


# -- the watch ----------------------------------------------------------------------------

def test_watch_returns_the_snapshot_until_the_generation_changes(N: Any) -> None:
    calls: List[int] = []
    ctl = bytearray(1024)
    snap = object()
    w = N._Watch(lambda: calls.append(1) or "slow", CTL_OFF_GENERATION)
    assert w() == "slow" and calls == [1], "not attached: always the slow path"
    w.words = ctl
    struct.pack_into("<Q", ctl, CTL_OFF_GENERATION, 5)
    w.snapshot, w.generation = snap, 5
    assert w.load() == 5
    assert all(w() is snap for _ in range(100)) and calls == [1]
    struct.pack_into("<Q", ctl, CTL_OFF_GENERATION, 6)
    assert w() == "slow" and w() == "slow" and calls == [1, 1, 1], "a switch is seen at once"
    w.bad_generation = 6
    assert w() is snap, "a rejected generation keeps the served snapshot"
    w.words = None
    assert w() == "slow"


def test_watch_visits_the_slow_path_every_256_calls(N: Any) -> None:
    ctl = bytearray(64)
    snap = object()
    seen: List[int] = []

    def slow() -> Any:
        seen.append(1)
        w.countdown = 256
        return snap

    w = N._Watch(slow, 24)
    w.words, w.snapshot = ctl, snap
    for _ in range(256 * 4):
        assert w() is snap
    assert len(seen) == 4


def test_watch_survives_a_closed_or_short_buffer(N: Any) -> None:
    mm = mmap.mmap(-1, 4096)
    snap = object()
    w = N._Watch(lambda: "slow", 24)
    w.words, w.snapshot = mm, snap
    assert w() is snap
    mm.close()   # no export is held between calls, so closing works
    assert w() == "slow" and w.load() is None
    words = memoryview(bytearray(64)).cast("Q")
    w.words = words
    assert w() is snap
    words.release()
    assert w() == "slow"
    w.words = b"\0" * 16   # too short for offset 24
    assert w() == "slow"
    w.words = 42           # not a buffer at all
    assert w() == "slow"
    with pytest.raises(ValueError):
        N._Watch(None, 3)
    with pytest.raises(AttributeError):
        del w.snapshot


def test_watch_and_fast_path_do_not_leak_references(N: Any) -> None:
    ctl = bytearray(64)
    snap = object()
    w = N._Watch(lambda: snap, 24)
    w.words, w.snapshot = ctl, snap
    before = sys.getrefcount(snap)
    for _ in range(100_000):
        w()
    assert sys.getrefcount(snap) == before
    fast, _ = _clients()
    default, key = object(), "".join(["r", "ule"])   # not an interned constant
    keys = ("s", "j", "nope", "nooff", "pre", key)
    for k in keys:
        for _ in range(2):   # first calls fill the snapshot's caches
            fast.variation(k, USER, default)
            fast.variation_detail(k, USER, default)
            fast.int_variation(k, USER, default)
    refs = [sys.getrefcount(o) for o in (default, key, USER)]
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    for _ in range(100_000 // 6):
        for k in keys:
            fast.variation(k, USER, default)
            fast.variation_detail(k, USER, default)
            fast.int_variation(k, USER, default)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert [sys.getrefcount(o) for o in (default, key, USER)] == refs


# -- ShmSource with the C watch -----------------------------------------------------------

@pytest.fixture
def name() -> Iterator[str]:
    ns = f"t-fast-{uuid.uuid4().hex[:10]}"
    yield ns
    shm.cleanup(ns)


def test_python_backend_uses_the_python_watch_and_slow_path(name: str) -> None:
    """On the Python evaluator the source serves through _PyWatch and the client's fast path
    always hands over to the full Python path (the C one serves C snapshots only)."""
    from shmflags.client import source as source_mod
    source = ShmSource(Config(name=name, environ={}))
    client = Client(Config(name=name, environ={}, send_events=False))
    try:
        if evaluator_backend() == "c":
            assert not isinstance(source._w, source_mod._PyWatch)
            assert client._fast_value("missing", USER, None) is client._SLOW   # no snapshot
        else:
            assert isinstance(source._w, source_mod._PyWatch)
            assert client._fast_value("s", USER, None) is client._SLOW
            assert client._fast_detail("s", USER, None) is client._SLOW
    finally:
        client.close()
        source.close()


@pytest.mark.c_only
def test_shm_source_current_is_the_c_watch_and_sees_switches(name: str, N: Any,
                                                             caplog: Any) -> None:
    pub = shm.Publisher(name, grace=0.2)
    builder = SnapshotBuilder()
    try:
        pub.publish(builder.build({"f": _flag("f", ["a"], fallthrough={"variation": 0})}, {}))
        source = ShmSource(Config(name=name, environ={}))
        client = Client(Config(name=name, environ={}, send_events=False))
        assert isinstance(source.current, N._Watch)
        first = source.current()
        assert first is source.current() and first.evaluate("f", USER)[0] == "a"
        assert client.variation("f", USER, None) == "a"
        pub.publish(builder.build({"f": _flag("f", ["b"], version=2,
                                              fallthrough={"variation": 0})}, {}))
        second = source.current()
        assert second is not first and second.evaluate("f", USER)[0] == "b"
        assert source.generation() == second.generation
        assert client.variation("f", USER, None) == "b"
        assert client.variation_detail("f", USER, None).value == "b"
        # a closed attachment: no crash, an error logged, the last snapshot still served
        source._attachment.close()
        with caplog.at_level("ERROR"):
            assert source.current() is second
        assert any("control block" in r.getMessage() for r in caplog.records)
        client.close()
    finally:
        pub.close()


# -- the fast path ------------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("method", ["variation", "bool_variation", "int_variation",
                                    "float_variation", "string_variation", "json_variation"])
@pytest.mark.parametrize("default", [None, 1.5, True, "d", 3])
def test_fast_path_answers_what_the_full_path_answers(method: str, default: Any) -> None:
    fast, full = _clients()
    for ctx in CONTEXTS:
        for key in list(FLAGS) + ["missing"]:
            a = getattr(fast, method)(key, ctx, default)
            b = getattr(full, method)(key, ctx, default)
            assert _same(a, b), (method, key, a, b)
            da = getattr(fast, method + "_detail")(key, ctx, default)
            db = getattr(full, method + "_detail")(key, ctx, default)
            assert isinstance(da, EvaluationDetail) and da == db, (method, key, da, db)
            assert _same(da.value, db.value) and repr(da) == repr(db)
            assert da.is_default_value() == db.is_default_value()


@pytest.mark.c_only
def test_fast_path_is_taken_and_gives_fresh_objects(N: Any) -> None:
    fast, _ = _clients()
    assert evaluator_backend() == "c", "c_only: run with the C evaluator"
    assert fast._fast_value("s", USER, None) == "y"
    a, b = fast.variation("j", USER, None), fast.variation("j", USER, None)
    assert a == [1, {"b": 2}] and a is not b, "dict/list values are fresh copies"
    d1, d2 = fast.variation_detail("rule", USER, None), fast.variation_detail("rule", USER, None)
    assert d1.reason == {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "rid"}
    assert d1.reason is not d2.reason
    assert fast._fast_detail("bad", USER, None).reason == {"kind": "ERROR",
                                                           "errorKind": "MALFORMED_FLAG"}
    assert fast._fast_detail("missing", USER, 4) == EvaluationDetail(
        4, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"})


def test_fast_path_hands_unusual_cases_to_the_full_path(N: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    fast, _ = _clients()
    slow = fast._SLOW
    invalid = Context.create("")
    assert not invalid.valid
    for args in [("s", invalid, 1), ("s", {"kind": "user", "key": "k"}, 1), (1, USER, 1),
                 ("s", USER, 1, 9), ("s", USER, 1, "x"), ("s", USER)]:
        assert fast._fast_value(*args) is slow
        assert fast._fast_detail(*args) is slow
    # and the client still answers them as before
    with caplog.at_level("WARNING"):
        assert fast.variation("s", invalid, 1) == 1
        assert fast.variation_detail("s", invalid, 1).reason == {
            "kind": "ERROR", "errorKind": "USER_NOT_SPECIFIED"}
    assert any("invalid" in r.getMessage() for r in caplog.records)
    assert fast.variation("s", {"kind": "user", "key": "k"}, 1) == "y"
    assert fast.variation(1, USER, "dflt") == "dflt"
    assert fast.bool_variation_detail("s", USER, False).reason == {"kind": "ERROR",
                                                                   "errorKind": "WRONG_TYPE"}


@pytest.mark.c_only
def test_variation_is_one_c_call_while_the_fast_path_may_answer(N: Any) -> None:
    """``client.variation`` / ``variation_detail`` are the C entry points (no Python frame)
    exactly while the fast path may answer; what it does not answer reaches the full path."""
    builtin = type(len)
    fast, full = _clients()
    assert isinstance(fast.variation, builtin) and isinstance(fast.variation_detail, builtin)
    assert not isinstance(full.variation, builtin), "a recorder the C core cannot count in"
    # passed on unchanged: keywords, a dict context, a bad call (TypeError as the method)
    assert fast.variation(key="s", context=USER, default=1) == "y"
    assert fast.variation_detail("s", USER, default=1) == full.variation_detail("s", USER, 1)
    assert fast.variation("s", {"kind": "user", "key": "k"}, 1) == "y"
    assert fast.variation_detail("s", Context.create(""), 1).reason == {
        "kind": "ERROR", "errorKind": "USER_NOT_SPECIFIED"}
    for bad in [("s", USER), ("s", USER, 1, 2)]:
        with pytest.raises(TypeError):
            fast.variation(*bad)
        with pytest.raises(TypeError):
            fast.variation_detail(*bad)
    # a recorder the core cannot count in, then none again
    fast._recorder = _Recorder()
    assert not isinstance(fast.variation, builtin) and fast.variation("s", USER, 1) == "y"
    fast._recorder = None
    assert isinstance(fast.variation, builtin)

    class Hook:
        def before_evaluation(self, series: Any, data: Any) -> Any:
            return data

        def after_evaluation(self, series: Any, data: Any, detail: Any) -> Any:
            return data
    hooked, _ = _clients()
    hooked.add_hook(Hook())
    assert not isinstance(hooked.variation, builtin)
    assert not isinstance(hooked.variation_detail, builtin)

    class Sub(Client):
        def variation(self, key: str, context: Any, default: Any) -> Any:
            return "sub"
    sub = Sub.from_data({"flags": FLAGS})
    assert sub.variation("s", USER, 1) == "sub", "a subclass's override is kept"
    # close(): the entry points keep answering but no longer hold the client
    import weakref
    entry, ref = fast.variation, weakref.ref(fast)
    fast.close()
    assert entry("s", USER, 1) == "y"
    del fast
    gc.collect()
    assert ref() is None
    assert entry("s", USER, 1) == "y", "the fast path still answers on the snapshot"
    assert entry("s", {"kind": "user", "key": "k"}, 1) == 1, "the full path: client gone"


def test_no_snapshot_is_client_not_ready(name: str) -> None:
    client = Client(Config(name=name, environ={}, send_events=False), start_wait=0)
    assert client.variation("f", USER, "d") == "d"
    assert client.variation_detail("f", USER, "d").reason == {"kind": "ERROR",
                                                              "errorKind": "CLIENT_NOT_READY"}
    client.close()


def test_hooks_still_run_with_the_fast_path() -> None:
    fast, _ = _clients()
    seen: List[str] = []

    class Hook:
        def before_evaluation(self, series: Any, data: Any) -> Any:
            seen.append(series.key)
            return data

        def after_evaluation(self, series: Any, data: Any, detail: Any) -> Any:
            return data

    fast.add_hook(Hook())
    assert fast.variation("s", USER, None) == "y"
    assert fast.variation_detail("s", USER, None).value == "y"
    assert fast.string_variation("s", USER, "z") == "y"
    assert seen == ["s", "s", "s"]


def test_detail_built_in_c_equals_the_constructor(N: Any) -> None:
    f = N._Fast(lambda: None, Context, EvaluationDetail)
    assert f.value("s", USER, 1) is N._SLOW   # no snapshot
    with pytest.raises(TypeError):
        N._Fast(lambda: None, dict, EvaluationDetail)   # no _error/_emap slots
    with pytest.raises(TypeError):
        N._Fast(42, Context, EvaluationDetail)
    if evaluator_backend() != "c":
        return   # the clients' fast path serves C snapshots only
    fast, _ = _clients()
    d = fast._fast_detail("i", USER, None)
    ref = EvaluationDetail(7, 1, {"kind": "FALLTHROUGH"})
    assert type(d) is EvaluationDetail and d == ref and repr(d) == repr(ref)
    assert (d.value, d.variation_index, d.reason) == (7, 1, {"kind": "FALLTHROUGH"})


# -- all_flags_state: $flagsState entries copied from per-flag templates ------------------

def _afs_flags() -> Dict[str, Dict[str, Any]]:
    flags = dict(FLAGS)
    flags["exp"] = _flag("exp", ["e0", "e1"], trackEventsFallthrough=True)
    flags["trk"] = _flag("trk", ["t0", "t1"], trackEvents=True, debugEventsUntilDate=2 ** 50)
    flags["dbg"] = _flag("dbg", ["d0", "d1"], debugEventsUntilDate=1.5)
    flags["roll"] = _flag("roll", ["a", "b", "c"], fallthrough={"rollout": {"variations": [
        {"variation": 0, "weight": 33000}, {"variation": 1, "weight": 33000},
        {"variation": 2, "weight": 34000}]}})
    flags["cs"] = _flag("cs", [1, 2], clientSide=True)
    return flags


def test_all_flags_state_repeated_calls_give_fresh_identical_results(N: Any) -> None:
    import json
    import itertools
    raw = snapshot_bytes(_afs_flags(), {})
    warm = N.Snapshot(raw)
    contexts = CONTEXTS + [Context.create(f"u{i}") for i in range(20)]
    combos = list(itertools.product([False, True], repeat=3))
    for _ in range(2):
        for ctx in contexts:
            for opts in combos:
                got = warm.all_flags_state(ctx, *opts, 10 ** 13)
                ref = N.Snapshot(raw).all_flags_state(ctx, *opts, 10 ** 13)   # no templates
                assert json.dumps(got) == json.dumps(ref), (ctx, opts)   # order too
                # every entry is a fresh dict: mutating one changes no later result
                for meta in got["$flagsState"].values():
                    meta["version"] = -1
                    meta.pop("variation", None)
                    meta["junk"] = True
    again = warm.all_flags_state(USER, True, False, False, 10 ** 13)
    assert json.dumps(again) == json.dumps(N.Snapshot(raw).all_flags_state(
        USER, True, False, False, 10 ** 13))


def test_feature_flags_state_takes_the_backend_output_apart() -> None:
    from shmflags.client.flags_state import FeatureFlagsState
    state = {"a": 1, "b": None, "$flagsState": {"a": {"version": 2}}, "$valid": True}
    fs = FeatureFlagsState(True, dict(state))
    assert fs.to_values_map() == {"a": 1, "b": None}
    assert list(fs.to_json_dict()) == ["a", "b", "$flagsState", "$valid"]
    assert fs.to_json_dict() == state and fs.get_flag_value("a") == 1
    assert FeatureFlagsState(True, {"$valid": True}).to_json_dict() == {"$flagsState": {},
                                                                        "$valid": True}
    assert FeatureFlagsState(False).to_json_dict() == {"$flagsState": {}, "$valid": False}


def test_short_record_strings_by_content_match_the_python_backend(N: Any) -> None:
    """Attribute names and kinds go through a small by-content table (sf_rec_pystr): equal,
    near-equal, long, non-ASCII and NUL-containing names must each resolve to their own."""
    from shmflags import _pure
    names = ["email", "emaiL", "e", "", "x" * 32, "x" * 33, "x" * 31 + "y", "plan\u00e9",
             "a\u0000b", "a", "b", "country", "key", "name"]
    flags = {}
    for i, attr in enumerate(names * 3):
        kind = ["user", "org", "org\u00e9", "k" * 40][i % 4]
        flags[f"f{i}"] = _flag(f"f{i}", ["miss", "hit"], rules=[{"id": f"r{i}", "variation": 1,
            "clauses": [{"contextKind": kind, "attribute": attr, "op": "in",
                         "values": [f"v-{attr}"]}]}], fallthrough={"variation": 0})
    raw = snapshot_bytes(flags, {})
    c, p = N.Snapshot(raw), _pure.Snapshot(raw)
    contexts = []
    for kind in ["user", "org", "org\u00e9", "k" * 40]:
        for attr in names:
            b = Context.builder("k1").kind(kind)
            if attr not in ("", "key", "kind"):
                b.set(attr, f"v-{attr}")
            contexts.append(b.build())
    hits = 0
    for ctx in contexts:
        for key in flags:
            got, ref = c.evaluate(key, ctx), p.evaluate(key, ctx)
            assert got[:3] == ref[:3], (key, ctx, got, ref)
            hits += got[0] == "hit"
    assert hits > len(names)


# -- Context.from_dict's C common case ----------------------------------------------------

class _Str(str):
    pass


_PROP_KEYS: List[Any] = ["kind", "key", "name", "anonymous", "_meta", "", "email", "age",
                         "Key", "kinds", "é", 1, _Str("email")]
_PROP_VALUES: List[Any] = [None, "user", "org", "", "multi", "kind", "bad kind", "x", "é",
                           "a.b-c_D9", True, False, 0, 1.5, [1], {"a": 1},
                           {"privateAttributes": ["email"]}, _Str("user")]


@pytest.mark.c_only
def test_context_from_dict_c_builder_builds_what_python_builds(N: Any) -> None:
    """The C builder answers the common single-kind case with exactly the slots the Python
    path stores (the same objects), and leaves every other case to it (_SLOW)."""
    import random

    from shmflags import context as C
    Context.from_dict({"kind": "user", "key": "k"})
    build = C._C_FROM_DICT
    assert build, "c_only: the C builder is in use"
    rng = random.Random(7)
    answered = 0
    cases: List[Any] = [{"kind": "user", "key": "k", "email": None},
                        {"kind": "org", "key": "k", "name": None, "anonymous": True},
                        {"kind": "user", "key": "k", "kind2": 1, "kind": "org"},
                        {"key": "old-user"}, {"kind": "multi", "user": {"key": "a"}},
                        [("kind", "user")], None, "user"]
    for _ in range(20000):
        d: Dict[Any, Any] = {"kind": rng.choice(["user", "org", rng.choice(_PROP_VALUES)])}
        if rng.random() < 0.9:
            d["key"] = rng.choice(["u1", "", _Str("u2"), 5, None]) if rng.random() < 0.2 else "u1"
        for _ in range(rng.randrange(5)):
            d[rng.choice(_PROP_KEYS)] = rng.choice(_PROP_VALUES)
        cases.append(d)
    for props in cases:
        expected = C._from_dict(props, False)
        got = build(props)
        if got is not C._C_SLOW:
            answered += 1
            assert type(got) is Context and got.valid
            for slot in Context.__slots__:
                a, b = getattr(got, slot), getattr(expected, slot)
                assert type(a) is type(b) and a == b, (props, slot, a, b)
                if slot in ("_kind", "_key", "_name", "_anon"):
                    assert a is b, (props, slot)
        ours = Context.from_dict(props)
        assert ours == expected and ours.error == expected.error and ours.valid == expected.valid
        if ours.valid:
            assert ours.to_dict() == expected.to_dict()
    assert answered > 3000, answered


def test_flags_state_first_use_from_many_threads() -> None:
    """A lazily built FeatureFlagsState used first by several threads at once: every one
    gets the same, complete result (and none an error)."""
    import threading
    fast, full = _clients()
    expected = full.all_flags_state(USER).to_json_dict()
    for _ in range(30):
        state = fast.all_flags_state(USER)
        barrier = threading.Barrier(4)
        out: List[Any] = []

        def use() -> None:
            barrier.wait()
            out.append((state.to_values_map(), state.to_json_dict()))
        threads = [threading.Thread(target=use) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(out) == 4
        assert all(values is out[0][0] for values, _ in out)
        assert all(js == expected for _, js in out)
