"""The C evaluator's building blocks and its Snapshot object, checked against Python and ldclient.

Hashes (xxh64 against the xxhash module, SHA-1 bucketing against hashlib and the vectors of
ld-protocol.md §3.7), semver and date parsing against ldclient's own parsers, compilation of
arbitrary junk (never raises), the Snapshot contract (errors, copies, caches, Big Segments),
and hostile contexts (no crash, the Python backend's answer).
"""
from __future__ import annotations

import hashlib
import struct
import sys
from typing import Any, Dict

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import native_module, snapshot_bytes
from shmflags import _pure
from shmflags.context import Context
from shmflags.errors import SnapshotFormatError
from shmflags.snapshot import compile as C
from shmflags.snapshot import format as fmt

@pytest.fixture(scope="module")
def N():
    return native_module()


def flag(key: str, **kw: Any) -> Dict[str, Any]:
    base = {"key": key, "version": 1, "on": True, "variations": [False, True],
            "offVariation": 0, "fallthrough": {"variation": 1}, "salt": "s"}
    base.update(kw)
    return base


def both(N, flags, segments=None, **kw):
    raw = snapshot_bytes(flags, segments or {})
    return N.Snapshot(raw, **kw), _pure.Snapshot(raw, **kw)


# ---------------------------------------------------------------------------- hashes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_xxh64_matches_xxhash(N, data):
    assert N._xxh64(data) == xxhash.xxh64_intdigest(data)


@pytest.mark.parametrize("prefix,value,expected", [
    ("hashKey.saltyA", "userKeyA", 0.42157587),
    ("hashKey.saltyA", "userKeyB", 0.67084850),
    ("61", "userKeyA", 0.09801207),
    ("hashKey.saltyA", "33333", 0.54771423),
])
def test_bucket_vectors(N, prefix, value, expected):
    assert N._bucket(prefix, value) == pytest.approx(expected, abs=1e-8)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_bucket_matches_hashlib(N, prefix, value):
    try:
        raw = ("%s.%s" % (prefix, value)).encode("utf-8")
    except UnicodeEncodeError:
        return
    want = int(hashlib.sha1(raw).hexdigest()[:15], 16) / float(0xFFFFFFFFFFFFFFF)
    assert N._bucket(prefix, value) == want


# ---------------------------------------------------------------------------- semver, dates

SEMVER_CHARS = st.sampled_from(list("0123456789.-+abrcZ\n x"))
semver_text = st.one_of(
    st.text(SEMVER_CHARS, max_size=14),
    st.sampled_from(["2", "2.0", "2.0.0", "2-rc", "2.0-rc", "2.0.0-rc.1", "2.0.0+build",
                     "2.0.0-rc+build", "v2.0.0", "02.0.0", "2.0.0.0", "1.0.0-alpha",
                     "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.11", "1.0.0-rc.1",
                     "1.0.0-0A", "1.0.0-01", "1\nfoo", "1.2.3\n", "99999999999999999999.0.0"]))


@settings(max_examples=1500, deadline=None)
@given(semver_text, semver_text)
def test_semver_matches_ldclient(N, a, b):
    from ldclient.impl.model.value_parsing import parse_semver as ld_parse

    va, vb = ld_parse(a), ld_parse(b)
    assert (C.parse_semver(a) is None) == (va is None)
    got = N._semver_compare(a, b)
    if va is None or vb is None:
        assert got is None
    else:
        assert got == va.compare(vb)


date_text = st.one_of(
    st.sampled_from(["2017-12-06T00:00:00Z", "2017-12-06T00:00:00.000-07:00", "2017-12-06",
                     "2017-12-06T00:00:00", "1512543600000", "2017-12-06T00:00:00.123456789z",
                     "2017-12-06 00:00:00+00:00", "20171206T000000Z", "0001-01-01T00:00:00Z",
                     "9999-12-31T23:59:59.999999+14:00", "", "Z", "2017-12-06T00:00:00Z\n"]),
    st.text(st.sampled_from(list("0123456789-:TZz.+ ")), max_size=30))


@settings(max_examples=800, deadline=None)
@given(date_text)
def test_time_parsing_matches_ldclient(N, text):
    from ldclient.impl.model.value_parsing import parse_time as ld_parse

    assert C.parse_time(text) == ld_parse(text)


# ---------------------------------------------------------------------------- compile

json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
              st.binary(max_size=3), st.integers(min_value=2 ** 64, max_value=2 ** 80)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ["key", "version", "on", "variations", "rules", "clauses",
                                 "attribute", "op", "values", "fallthrough", "rollout",
                                 "variation", "weight", "targets", "contextTargets", "included",
                                 "contextKind", "bucketBy", "segmentMatch", "prerequisites",
                                 "offVariation", "salt", "seed", "kind", "negate", "x"]),
                                inner, max_size=8)),
    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(json_junk)
def test_compile_never_raises(N, junk):
    for fn in (C.compile_flag, C.compile_segment):
        rec, pool, _sets = fn(junk)
        assert isinstance(rec, bytes) and len(rec) % 8 == 0 and len(rec) >= 96
        assert isinstance(pool, bytes) and (pool == b"" or pool[0] == 0)
    if isinstance(junk, dict):
        f = dict(junk, key="j", version=1)
        s = dict(junk, key="s", version=1)
        c, py = both(N, {"j": f} if _storable(f) else {}, {"s": s} if _storable(s) else {})
        ctx = Context.create("k")
        got, want = c.evaluate("j", ctx), py.evaluate("j", ctx)
        assert got[:3] == want[:3]


def _storable(obj: Any) -> bool:
    from shmflags.snapshot.builder import pack_raw

    try:
        pack_raw(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_malformed_flag_evaluates_to_malformed(N):
    bad = flag("b", rules=[{"clauses": [{"attribute": 5, "op": "in", "values": []}], "variation": 0}])
    c, _ = both(N, {"b": bad})
    value, index, reason, info, prereqs = c.evaluate("b", Context.create("k"))
    assert (value, index, reason) == (None, None, {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"})
    assert info[0] == 1


# ---------------------------------------------------------------------------- Snapshot object


def test_rejects_bad_bytes(N):
    raw = snapshot_bytes({"f": flag("f")}, {})
    for bad in (b"", raw[:100], b"X" + raw[1:], raw[:-8]):
        with pytest.raises(SnapshotFormatError):
            N.Snapshot(bad)
    h = fmt.unpack_header(raw)
    body = bytearray(raw)
    body[(fmt.HEADER_SIZE + h.blob_off) // 2] ^= 0xFF      # the directory: checked at open
    with pytest.raises(SnapshotFormatError, match="directory checksum.*expected 0x"):
        N.Snapshot(bytes(body))
    body = bytearray(raw)
    body[40] ^= 1
    with pytest.raises(SnapshotFormatError, match="header_check"):
        N.Snapshot(bytes(body))
    hdr = h._replace(record_format=0x12345678)
    with pytest.raises(SnapshotFormatError, match="0x12345678"):
        N.Snapshot(fmt.pack_header(hdr) + raw[fmt.HEADER_SIZE:])


def test_bad_blob_chunk_makes_its_items_malformed_not_the_snapshot(N, caplog):
    raw = snapshot_bytes({"f": flag("f"), "g": flag("g")}, {})
    h = fmt.unpack_header(raw)
    ok = N.Snapshot(raw)
    assert ok.evaluate("f", Context.create("u"))[2] == {"kind": "FALLTHROUGH"}
    body = bytearray(raw)
    body[h.blob_off + 3] ^= 0xFF            # a key/record byte: the only chunk
    state = bytearray(1 + h.n_chunks)
    with caplog.at_level("ERROR", logger="shmflags.snapshot"):
        snap = N.Snapshot(bytes(body), state=state)      # attach hashes the directory only
        assert state[0] == 1 and state[1] == 0
        for key in ("f", "g", "f"):
            value, index, reason, _i, _p = snap.evaluate(key, Context.create("u"))
            assert (value, index, reason) == (None, None,
                                              {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"})
        with pytest.raises(SnapshotFormatError):
            snap.raw_flag("f")
    assert state[1] == fmt.CHUNK_BAD
    assert len([r for r in caplog.records if "chunk" in r.getMessage()]) == 1
    with pytest.raises(ValueError, match="at least 2 bytes"):
        N.Snapshot(raw, state=bytearray(1))


def test_contract_surface(N):
    c, py = both(N, {"b": flag("b"), "a": flag("a", trackEvents=True, samplingRatio=3,
                                                debugEventsUntilDate=5)},
                 {"s": {"key": "s", "version": 2}})
    assert c.flag_keys() == ["a", "b"] == py.flag_keys()
    assert c.segment_keys() == ["s"]
    assert (c.flag_count, c.segment_count, c.payload_version) == (2, 1, 0)
    assert c.raw_flag("a")["trackEvents"] is True and c.raw_flag("zz") is None
    assert c.raw_segment("s") == {"key": "s", "version": 2}
    assert c.evaluate("zz", Context.create("k")) == (
        None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}, None, ())
    assert c.evaluate("a", Context.create("k"))[3] == (1, 1, 5, 3)
    assert "generation=0" in repr(c)


def test_dict_values_are_fresh_copies(N):
    c, _ = both(N, {"d": flag("d", variations=[{"a": [1]}, {"b": 2}], fallthrough={"variation": 0})})
    ctx = Context.create("k")
    v1 = c.evaluate("d", ctx)[0]
    v1["a"].append(2)
    v1["z"] = 0
    assert c.evaluate("d", ctx)[0] == {"a": [1]}
    assert c.all_flags_state(ctx, False, False, False, 0)["d"] == {"a": [1]}


def test_holds_the_buffer(N):
    import mmap

    raw = snapshot_bytes({"f": flag("f")}, {})
    m = mmap.mmap(-1, len(raw))
    m.write(raw)
    s = N.Snapshot(m)
    with pytest.raises(BufferError):
        m.close()      # the Snapshot's buffer export keeps the mapping alive
    assert s.evaluate("f", Context.create("k"))[0] is True
    del s
    m.close()


class _Provider:
    def __init__(self, membership, status="HEALTHY"):
        self.membership, self.status, self.calls = membership, status, 0

    def get_membership(self, key):
        self.calls += 1
        return self.membership, self.status


@pytest.mark.parametrize("membership", [None, {}, {"big.g3": True}, {"big.g3": False}])
def test_big_segments_provider(N, membership):
    seg = {"key": "big", "version": 1, "unbounded": True, "generation": 3,
           "rules": [{"clauses": [{"attribute": "key", "op": "in", "values": ["k"]}]}]}
    f = flag("f", rules=[{"id": "r", "variation": 0, "clauses": [
        {"attribute": "", "op": "segmentMatch", "values": ["big", "big"]}]}])
    for provider in (None, _Provider(membership)):
        raw = snapshot_bytes({"f": f}, {"big": seg})
        got = N.Snapshot(raw, big_segments=provider).evaluate("f", Context.create("k"))
        want = _pure.Snapshot(raw, big_segments=provider).evaluate("f", Context.create("k"))
        assert got == want
        if provider is not None:
            assert got[2]["bigSegmentsStatus"] == "HEALTHY"
            assert provider.calls == 2     # once per evaluation per context key (two backends)


# ---------------------------------------------------------------------------- hostile contexts


class StrSub(str):
    pass


class DictSub(dict):
    def get(self, key, default=None):
        return "from-get" if key == "x" else super().get(key, default)


def _hostile_contexts():
    deep: Any = "leaf"
    for _ in range(400):
        deep = {"x": deep}
    yield Context.builder("k").set("n", "1" * 1_000_000).build()
    yield Context.builder("k").set("n", [[[["a"]]], 1, True, None, 1.5, {"a": 1}]).build()
    yield Context.builder("k").set("n", deep).set("obj", deep).build()
    yield Context.builder("k").set("n", StrSub("abc")).set("obj", DictSub(x=1)).build()
    yield Context.builder("k").set("n", 10 ** 400).set("date", float("nan")).build()
    yield Context.builder("k").set("n", "\ud800x").set("ver", "1.0.0\ud800").build()
    yield Context.builder("k").set("n", float("inf")).set("tags", ("a", "b")).build()
    yield Context.builder("\udfff").kind("org").build()


HOSTILE_FLAG = flag("h", rules=[
    {"id": f"r{i}", "variation": i % 2, "clauses": [
        {"contextKind": "user", "attribute": attr, "op": op, "values": values}]}
    for i, (attr, op, values) in enumerate([
        ("n", "in", ["abc", 1, True, None, [1]]), ("n", "startsWith", ["1", "a"]),
        ("n", "matches", ["^1+$", "b"]), ("n", "lessThan", [5]), ("/obj/x", "in", ["from-get", 1]),
        ("n", "semVerEqual", ["1.0.0"]), ("ver", "semVerLessThan", ["2.0.0"]),
        ("date", "before", [5, "2020-01-01T00:00:00Z"]), ("tags", "in", ["b"]),
        ("n", "contains", ["x"]), ("n", "endsWith", ["c"]), ("key", "in", ["k"])])
] + [{"id": "bucket", "rollout": {"bucketBy": "n", "variations": [
    {"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}, "clauses": []}])


def test_hostile_contexts_give_the_python_answer(N):
    # (the builder cannot store lone surrogates in flag data; a context key can carry one)
    org = flag("o", contextTargets=[{"contextKind": "org", "values": ["y", "x"], "variation": 0},
                                    {"contextKind": "org", "values": ["x"], "variation": 1}])
    c, py = both(N, {"h": HOSTILE_FLAG, "t": flag("t", targets=[{"values": ["k"], "variation": 0}]),
                     "o": org})
    assert c.evaluate("o", Context.create("x", "org"))[2] == {"kind": "TARGET_MATCH"}
    for ctx in _hostile_contexts():
        for key in ("h", "t", "o"):
            try:
                want = py.evaluate(key, ctx)
            except Exception as exc:  # noqa: BLE001 - then C must raise the same type
                with pytest.raises(type(exc)):
                    c.evaluate(key, ctx)
                continue
            assert c.evaluate(key, ctx) == want


def test_context_changed_between_calls(N):
    c, py = both(N, {"h": HOSTILE_FLAG})
    ctx = Context.builder("k").set("n", "abc").build()
    first = c.evaluate("h", ctx)
    ctx._eval_map()["user"]["n"] = 3          # a caller breaking the read-only contract
    assert c.evaluate("h", ctx) == py.evaluate("h", ctx)
    assert first != c.evaluate("h", ctx)


def test_wrong_arguments_raise_not_crash(N):
    c, _ = both(N, {"f": flag("f")})
    with pytest.raises(TypeError):
        c.evaluate(1, Context.create("k"))
    with pytest.raises(AttributeError):
        c.evaluate("f", object())
    with pytest.raises(TypeError):
        c.evaluate("f")


def test_prerequisite_without_variation_fails_even_for_minus_one(N):
    """Found by the ldclient leg of the differential test: -1 must not equal "no variation"."""
    parent = flag("p", prerequisites=[{"key": "q", "variation": -1}])
    child = flag("q", variations=[], fallthrough={"variation": 0})
    c, py = both(N, {"p": parent, "q": child})
    got = c.evaluate("p", Context.create("k"))
    assert got[2] == {"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "q"}
    assert got == py.evaluate("p", Context.create("k"))


def test_threads_sharing_a_cold_snapshot(N):
    """Caches fill while Python code (dict-subclass get, regex) lets other threads run."""
    import threading

    flags = {"h": HOSTILE_FLAG, "d": flag("d", variations=[{"a": [1]}, [2]],
                                          fallthrough={"variation": 0})}
    raw = snapshot_bytes(flags, {})
    want = {k: _pure.Snapshot(raw).evaluate(k, Context.builder("k").set("obj", DictSub(x=1))
                                             .set("n", "abc").build()) for k in flags}
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):
            s = N.Snapshot(raw)
            errors = []

            def work():
                ctx = Context.builder("k").set("obj", DictSub(x=1)).set("n", "abc").build()
                for _ in range(300):
                    for k in flags:
                        if s.evaluate(k, ctx) != want[k]:
                            errors.append(k)

            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors
    finally:
        sys.setswitchinterval(old)


def test_old_style_targets_ignore_their_context_kind(N):
    f = flag("t", targets=[{"contextKind": "org", "values": ["k"], "variation": 0}])
    c, py = both(N, {"t": f})
    for ctx in (Context.create("k"), Context.create("k", "org")):
        assert c.evaluate("t", ctx) == py.evaluate("t", ctx)
    assert c.evaluate("t", Context.create("k"))[2] == {"kind": "TARGET_MATCH"}


def test_long_prerequisite_and_segment_chains(N):
    """150 levels: both evaluators follow them; beyond MAX_DEPTH C reports MALFORMED_FLAG."""
    n = 150
    flags = {f"p{i}": flag(f"p{i}", prerequisites=[{"key": f"p{i + 1}", "variation": 1}])
             for i in range(n)}
    flags[f"p{n}"] = flag(f"p{n}")
    segs = {f"s{i}": {"key": f"s{i}", "version": 1, "rules": [{"clauses": [
        {"attribute": "", "op": "segmentMatch", "values": [f"s{i + 1}"]}]}]} for i in range(n)}
    segs[f"s{n}"] = {"key": f"s{n}", "version": 1, "included": ["k"]}
    flags["seg"] = flag("seg", rules=[{"id": "r", "variation": 0, "clauses": [
        {"attribute": "", "op": "segmentMatch", "values": ["s0"]}]}])
    c, py = both(N, flags, segs)
    ctx = Context.create("k")
    for key in ("p0", "seg"):
        got = c.evaluate(key, ctx)
        assert got == py.evaluate(key, ctx)
        assert got[2]["kind"] in ("FALLTHROUGH", "RULE_MATCH")
    assert len(c.evaluate("p0", ctx)[4]) == n
    deep = {f"q{i}": flag(f"q{i}", prerequisites=[{"key": f"q{i + 1}", "variation": 1}])
            for i in range(N.MAX_DEPTH + 5)}
    c2, _ = both(N, deep)
    assert c2.evaluate("q0", ctx)[2] == {"kind": "ERROR", "errorKind": "EXCEPTION"}


def test_flag_stored_under_another_key_reaching_itself(N):
    """Found by the differential hunt (a stack overflow before): ldclient's cycle check
    compares flag keys, so f0 (key "other") with prerequisite "f0" recurses until
    RecursionError, an EXCEPTION result; C bounds the depth and reports the same."""
    f = flag("other", prerequisites=[{"key": "f0", "variation": 0}])
    c, py = both(N, {"f0": f})
    ctx = Context.create("k")
    got = c.evaluate("f0", ctx)
    assert got[2] == {"kind": "ERROR", "errorKind": "EXCEPTION"}
    assert got == py.evaluate("f0", ctx)
    state = c.all_flags_state(ctx, True, False, False, 0)
    assert state["$flagsState"]["other"]["reason"] == {"kind": "ERROR", "errorKind": "EXCEPTION"}


def test_misaligned_buffer_is_refused_with_a_reason(N):
    raw = snapshot_bytes({"f": flag("f")}, {})
    shifted = memoryview(b"\0" + raw)[1:]
    with pytest.raises(SnapshotFormatError, match="aligned"):
        N.Snapshot(shifted)


@pytest.mark.parametrize("allow_ni", [False, True])
def test_sha1_both_implementations_match_hashlib(N, allow_ni):
    """Portable SHA-1 and the x86 SHA-extension path (when the CPU has it) give hashlib's bits."""
    import random

    rng = random.Random(5)
    try:
        N._sha1_setup(allow_ni)
        for n in list(range(0, 200)) + [1000, 4096]:
            value = "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(n))
            raw = ("pfx." + value).encode("utf-8")
            want = int(hashlib.sha1(raw).hexdigest()[:15], 16) / float(0xFFFFFFFFFFFFFFF)
            assert N._bucket("pfx", value) == want, n
    finally:
        N._sha1_setup(True)


def test_deeply_nested_variation_values_are_copied(N):
    deep: Any = 1
    for _ in range(400):
        deep = [deep]
    c, py = both(N, {"d": flag("d", variations=[deep], fallthrough={"variation": 0})})
    got = c.evaluate("d", Context.create("k"))
    assert got == py.evaluate("d", Context.create("k"))
    assert got[0] == deep and got[0] is not deep


def _lazy_flags():
    """Flags covering every metadata member, two keys equal to the JSON's own members, and
    values of every kind (shared singletons, cached strings, copied dicts)."""
    return {
        "a": flag("a", trackEvents=True, debugEventsUntilDate=5, version=700),
        "b": flag("b", variations=["x", "y", "z"], fallthrough={"variation": 2}),
        "c": flag("c", variations=[{"k": [1, 2]}, {}], fallthrough={"variation": 0}),
        "d": flag("d", prerequisites=[{"key": "a", "variation": 1}], clientSide=True),
        "e": flag("e", fallthrough={"rollout": {"kind": "experiment", "variations": [
            {"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}}),
        "f": flag("f", on=False, offVariation=None, debugEventsUntilDate=10**13),
        "g": flag("g", variations=[7, 1000, None], fallthrough={"variation": 1}),
        "$valid": flag("$valid"),
        "$flagsState": flag("$flagsState", variations=[3, 4]),
    }


@pytest.mark.parametrize("opts", [(w, c, d) for w in (False, True) for c in (False, True)
                                  for d in (False, True)])
def test_all_flags_lazy_builds_what_all_flags_state_gives(N, opts):
    from shmflags.client.flags_state import FeatureFlagsState
    c, py = both(N, _lazy_flags())
    for ctx in (Context.create("k"), Context.create("other-key")):
        full = c.all_flags_state(ctx, *opts, 1000)
        assert full == py.all_flags_state(ctx, *opts, 1000)
        lazy = c.all_flags_lazy(ctx, *opts, 1000)
        assert len(lazy) == len(full["$flagsState"])
        values, meta = lazy.build()
        assert lazy.build()[0] is values and lazy.build()[1] is meta   # built once
        assert len(lazy) == len(meta)
        expect = dict(full)
        assert meta == expect.pop("$flagsState") and expect.pop("$valid") is True
        expect.pop("$valid", None)
        expect.pop("$flagsState", None)
        assert list(values.items()) == list(expect.items())   # same keys in the same order
        # FeatureFlagsState behaves the same over either form, in every method
        a = FeatureFlagsState(True, dict(full))
        b = FeatureFlagsState(True, c.all_flags_lazy(ctx, *opts, 1000))
        p = FeatureFlagsState(True, py.all_flags_lazy(ctx, *opts, 1000))
        assert repr(a) == repr(b) == repr(p)
        for key in list(_lazy_flags()) + ["nope"]:
            assert a.get_flag_value(key) == b.get_flag_value(key) == p.get_flag_value(key)
            assert a.get_flag_reason(key) == b.get_flag_reason(key) == p.get_flag_reason(key)
        assert a.to_values_map() == b.to_values_map() == p.to_values_map()
        assert a.to_json_string() == b.to_json_string() == p.to_json_string()
        assert a == b == p and b.valid
        import pickle
        assert pickle.loads(pickle.dumps(b)) == a


def test_all_flags_lazy_values_alone_then_build(N):
    """values() builds the values dict alone (to_values_map() pays for no metadata); a later
    build() returns that same dict with the metadata, on both evaluators."""
    from shmflags.client.flags_state import FeatureFlagsState
    c, py = both(N, _lazy_flags())
    ctx = Context.create("k")
    full = c.all_flags_state(ctx, True, False, False, 1000)
    for make in (c.all_flags_lazy, py.all_flags_lazy):
        lazy = make(ctx, True, False, False, 1000)
        values = lazy.values()
        assert lazy.values() is values
        assert "$valid" not in values and "$flagsState" not in values
        assert all(values[k] == full[k] for k in values)
        built_values, meta = lazy.build()
        assert built_values is values and lazy.values() is values
        assert meta == full["$flagsState"]
    # through FeatureFlagsState: values first, then a reason, then the JSON
    state = FeatureFlagsState(True, c.all_flags_lazy(ctx, True, False, False, 1000))
    values = state.to_values_map()
    assert state.get_flag_value("c") == {"k": [1, 2]}
    assert state.get_flag_reason("a") == full["$flagsState"]["a"]["reason"]
    assert state.to_values_map() is values
    assert state.to_json_dict() == full


def test_all_flags_lazy_cycle_through_its_values_is_collected(N):
    """A caller may store the lazy result inside its own values dict: the GC frees the cycle."""
    import gc
    import weakref
    c, _ = both(N, _lazy_flags())

    class Holder:
        pass
    lazy = c.all_flags_lazy(Context.create("k"), True, False, False, 0)
    values = lazy.values()
    holder = Holder()
    holder.lazy = lazy
    values["cycle"] = holder
    gone = weakref.ref(holder)
    del lazy, values, holder
    gc.collect()
    assert gone() is None


def test_all_flags_state_names_non_ascii_keys_as_python_does(N):
    """all_flags_state makes each key str itself (ASCII directly, anything else through the
    UTF-8 decoder): the same keys, in the same order, as the Python evaluator; and a key
    evaluated by variation() first (cached by the snapshot) is the same str."""
    flags = {k: flag(k) for k in ("ascii-key", "clé", "キー", "emoji-🚩", "", "z" * 300)}
    c, py = both(N, flags)
    ctx = Context.create("k")
    assert c.evaluate("clé", ctx)[0] is True   # caches this one key in its slot
    for _ in range(2):
        got = c.all_flags_state(ctx, False, False, False, 0)
        assert got == py.all_flags_state(ctx, False, False, False, 0)
        assert list(got) == list(py.all_flags_state(ctx, False, False, False, 0))
        values, _ = c.all_flags_lazy(ctx, False, False, False, 0).build()
        assert set(values) == set(flags) and all(type(k) is str for k in values)


def test_all_flags_lazy_outlives_its_snapshot(N):
    import gc
    c, _ = both(N, _lazy_flags())
    lazy = c.all_flags_lazy(Context.create("k"), True, False, False, 0)
    unbuilt = c.all_flags_lazy(Context.create("k"), True, False, False, 0)
    expect = c.all_flags_state(Context.create("k"), True, False, False, 0)
    del c
    gc.collect()
    values, meta = lazy.build()
    assert meta == expect["$flagsState"] and values["c"] == {"k": [1, 2]}
    values["c"]["k"].append(3)   # copies: the next result is not affected
    del unbuilt   # released without ever being built


def test_all_flags_lazy_wrong_arguments_raise(N):
    c, _ = both(N, _lazy_flags())
    with pytest.raises(TypeError):
        c.all_flags_lazy()
    with pytest.raises(TypeError):
        c.all_flags_lazy(Context.create("k"), now_ms="x")
    with pytest.raises(TypeError):
        N._FlagsState()
