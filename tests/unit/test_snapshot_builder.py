"""SnapshotBuilder: contents, tombstones, incremental reuse, determinism, records, speed."""
from __future__ import annotations

import time

import pytest

from shmflags.snapshot import format as fmt
from shmflags.snapshot.builder import SnapshotBuilder
from shmflags.snapshot.reader import SnapshotReader


def _flag(i: int, version: int = 1, **extra) -> dict:
    f = {"key": f"flag-{i:05d}", "version": version, "on": True, "salt": f"s{i}",
         "variations": [{"a": i, "b": [1, 2, 3]}, False, "x" * 40], "offVariation": 1,
         "fallthrough": {"rollout": {"variations": [{"variation": 0, "weight": 50000},
                                                   {"variation": 1, "weight": 50000}]}},
         "targets": [{"values": [f"u{j}" for j in range(10)], "variation": 0}],
         "rules": [{"id": f"r{j}", "variation": 1,
                    "clauses": [{"contextKind": "user", "attribute": "email", "op": "endsWith",
                                 "values": ["@x.com", "@y.com"]}]} for j in range(3)],
         "trackEvents": False}
    f.update(extra)
    return f


def _plain() -> SnapshotBuilder:
    return SnapshotBuilder(use_default_compilers=False)


def test_tombstones_and_non_dicts_are_excluded():
    b = _plain()
    data = b.build({"a": _flag(1), "d": {"key": "d", "version": 2, "deleted": True},
                    "n": None}, {"s": {"key": "s", "version": 1, "deleted": True}})
    r = SnapshotReader(data)
    assert [e.key for e in r.flags()] == ["a"]
    assert r.n_segments == 0 and r.find_segment("s") is None


def test_empty_snapshot_is_valid():
    r = SnapshotReader(_plain().build({}, {}))
    assert (r.n_flags, r.n_segments) == (0, 0)
    assert r.header.flag_index_cap == fmt.MIN_INDEX_CAP
    assert r.find_flag("x") is None and list(r.flags()) == []


def test_same_input_gives_same_bytes_from_fresh_and_warm_builders():
    flags = {f"flag-{i:05d}": _flag(i) for i in range(50)}
    warm = _plain()
    warm.build(flags, {}, built_at_ms=1)
    flags2 = dict(flags)
    flags2["flag-00007"] = _flag(7, version=2)
    a = warm.build(flags2, {}, built_at_ms=1)
    b = _plain().build(flags2, {}, built_at_ms=1)
    assert a == b
    assert warm.last_encoded == 1 and warm.last_reused == 49


def test_reuse_by_identity_then_by_content_hash():
    b = _plain()
    flags = {"a": _flag(1), "b": _flag(2)}
    b.build(flags, {})
    assert b.last_encoded == 2
    b.build(flags, {})
    assert (b.last_reused, b.last_encoded) == (2, 0)
    # A new but equal dict with the same version: found equal through the msgpack hash.
    b.build({"a": dict(flags["a"]), "b": flags["b"]}, {})
    assert (b.last_reused, b.last_encoded) == (2, 0)
    # Same version, different content (flag files may do this): re-encoded.
    changed = dict(flags["a"], on=False)
    data = b.build({"a": changed, "b": flags["b"]}, {})
    assert b.last_encoded == 1
    r = SnapshotReader(data)
    assert r.decode(r.find_flag("a"))["on"] is False


def test_versions_and_big_integers_round_trip():
    flags = {"neg": {"key": "neg", "version": -3}, "big": {"key": "big", "version": 2**62},
             "huge": {"key": "huge", "version": 1, "variations": [2**70, -(2**70), 2**64 - 1]}}
    r = SnapshotReader(_plain().build(flags, {}))
    assert r.find_flag("neg").version == -3
    assert r.find_flag("big").version == 2**62
    assert r.decode(r.find_flag("huge"))["variations"] == [2**70, -(2**70), 2**64 - 1]


def test_unicode_keys_sorted_by_utf8_bytes():
    keys = ["z", "ä", "a", "日本", "Z", "aa", "\U0001f600", "\uffff"]
    r = SnapshotReader(_plain().build({k: {"key": k, "version": 1} for k in keys}, {}))
    assert [e.key for e in r.flags()] == sorted(keys, key=lambda k: k.encode("utf-8"))
    for k in keys:
        assert r.find_flag(k).key == k


def test_compiled_records_are_stored_aligned_and_failures_leave_empty_records():
    calls = []

    def compile_flag(obj: dict) -> bytes:
        calls.append(obj["key"])
        if obj["key"] == "bad":
            raise ValueError("boom")
        return b"R" * (3 + len(obj["key"]))

    b = SnapshotBuilder(compile_flag=compile_flag, compile_segment=lambda s: b"SEG",
                        record_format=0xABCD)
    data = b.build({"good": {"key": "good", "version": 1}, "bad": {"key": "bad", "version": 1}},
                   {"s": {"key": "s", "version": 1}})
    r = SnapshotReader(data)
    assert r.record_format == 0xABCD
    good = r.find_flag("good")
    assert bytes(r.record(good)) == b"R" * 7 and good.rec_off % 8 == 0
    assert r.find_flag("bad").rec_len == 0
    assert bytes(r.record(r.find_segment("s"))) == b"SEG"
    b.build({"good": {"key": "good", "version": 1}}, {})
    assert calls.count("good") == 1     # reused, not recompiled (new dict, equal content)


def test_default_compilers_used_when_importable():
    try:
        from shmflags.snapshot import compile as compile_mod
    except ImportError:
        pytest.fail("shmflags.snapshot.compile is not importable")
    data = SnapshotBuilder().build({"f": {"key": "f", "version": 1, "on": True,
                                          "variations": [True], "fallthrough": {"variation": 0}}},
                                   {})
    r = SnapshotReader(data)
    assert r.record_format == compile_mod.RECORD_FORMAT
    assert r.find_flag("f").rec_len > 0


def test_one_flag_patch_at_10000_flags_is_fast():
    """A one-flag patch reuses 9,999 items; measured median of 5 patches (generous bound)."""
    flags = {f"flag-{i:05d}": _flag(i) for i in range(10000)}
    segs = {f"seg-{i}": {"key": f"seg-{i}", "version": 1, "included": ["a"]} for i in range(200)}
    b = _plain()
    b.build(flags, segs)
    times = []
    for v in range(2, 7):
        flags = dict(flags)
        flags["flag-00042"] = _flag(42, version=v)
        t = time.perf_counter()
        data = b.build(flags, segs)
        times.append(time.perf_counter() - t)
        assert (b.last_reused, b.last_encoded) == (10199, 1)
    times.sort()
    median_ms = times[2] * 1000
    print(f"\none-flag patch at 10,000 flags ({len(data) / 1e6:.1f} MB): median {median_ms:.1f} ms")
    r = SnapshotReader(data)
    assert r.find_flag("flag-00042").version == 6
    assert median_ms < 150, f"one-flag patch took {median_ms:.1f} ms"


@pytest.mark.slow
def test_one_flag_patch_at_10000_flags_with_compiled_records():
    """The same patch with the real record compiler (bigger items, one recompile)."""
    flags = {f"flag-{i:05d}": _flag(i) for i in range(10000)}
    b = SnapshotBuilder()
    b.build(flags, {})
    times = []
    for v in range(2, 7):
        flags = dict(flags)
        flags["flag-00042"] = _flag(42, version=v)
        t = time.perf_counter()
        data = b.build(flags, {})
        times.append(time.perf_counter() - t)
        assert (b.last_reused, b.last_encoded) == (9999, 1)
    times.sort()
    median_ms = times[2] * 1000
    print(f"\none-flag patch at 10,000 flags with records ({len(data) / 1e6:.1f} MB): "
          f"median {median_ms:.1f} ms")
    r = SnapshotReader(data)
    assert r.find_flag("flag-00042").rec_len > 0
    assert median_ms < 400, f"one-flag patch took {median_ms:.1f} ms"


# ------------------------------------------------------------------ overlays (layered generations)

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shmflags import _pure  # noqa: E402
from shmflags.context import Context  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from differential import strategies as ds  # noqa: E402

CORPUS = sorted((Path(__file__).resolve().parent.parent / "corpus").glob("*.json"))


def _backends():
    out = [_pure]
    try:
        from shmflags import _native
        out.append(_native)
    except ImportError:
        pass
    return out


def _same_evaluations(overlay: bytes, base: bytes, full: bytes, contexts) -> None:
    """The overlay (read through its base) evaluates exactly like the self-contained build."""
    for mod in _backends():
        a = mod.Snapshot(overlay, base=base)
        b = mod.Snapshot(full)
        assert a.flag_keys() == b.flag_keys()
        assert a.segment_keys() == b.segment_keys()
        for key in b.flag_keys() + ["no-such-flag"]:
            assert a.raw_flag(key) == b.raw_flag(key)
            for ctx in contexts:
                assert a.evaluate(key, ctx) == b.evaluate(key, ctx), (mod.__name__, key)
        for key in b.segment_keys():
            assert a.raw_segment(key) == b.raw_segment(key)
        for ctx in contexts:
            assert a.all_flags_state(ctx, True) == b.all_flags_state(ctx, True)


def _bump(obj: dict, **changes) -> dict:
    new = json.loads(json.dumps(obj))
    new["version"] = new.get("version", 0) + 1
    new.update(changes)
    return new


def _overlay_builder() -> SnapshotBuilder:
    return SnapshotBuilder(compact_fraction=100.0)    # never compact: always test the overlay


def test_overlay_of_a_patch_evaluates_like_a_full_build():
    flags = {f"flag-{i:05d}": _flag(i) for i in range(200)}
    b = _overlay_builder()
    base = b.build(flags, {})
    assert b.last_kind == "full"
    key = "flag-00017"
    flags = dict(flags)
    flags[key] = _bump(flags[key], on=False)
    overlay = b.build(flags, {}, changed=([key], []))
    assert b.last_kind == "overlay" and b.last_encoded == 1
    h = fmt.unpack_header(overlay)
    bh = fmt.unpack_header(base)
    assert (h.base_size, h.base_checksum, h.base_generation) == (bh.total_size, bh.checksum, 0)
    # directory (as large as the base's) plus the changed item's blobs, nothing more
    base_blobs = bh.total_size - bh.blob_off
    assert h.blob_off <= bh.blob_off + 4096
    assert h.total_size - h.blob_off < base_blobs // 50, (h.total_size, h.blob_off, base_blobs)
    # same key set: the directory is the base's with one entry repointed
    assert overlay[fmt.HEADER_SIZE:h.flag_entries_off] == \
        base[fmt.HEADER_SIZE:bh.flag_entries_off]
    r = SnapshotReader(overlay, base=base)
    assert r.find_flag(key).rec_off & fmt.BASE_BIT == 0
    assert r.find_flag("flag-00018").rec_off & fmt.BASE_BIT
    contexts = [Context.create(f"u{j}") for j in range(4)] + \
        [Context.builder("v").set("email", "a@x.com").build()]
    _same_evaluations(overlay, base, SnapshotBuilder().build(flags, {}), contexts)


def test_overlays_are_cumulative_and_depth_one():
    flags = {f"flag-{i:05d}": _flag(i) for i in range(100)}
    b = _overlay_builder()
    base = b.build(flags, {})
    flags = dict(flags)
    for n, key in enumerate(["flag-00001", "flag-00050", "flag-00001", "flag-00099"]):
        flags[key] = _bump(flags[key], offVariation=n % 2)
        overlay = b.build(flags, {}, changed=([key], []))
        assert b.last_kind == "overlay"
        r = SnapshotReader(overlay, base=base)
        own = sorted(e.key for e in r.flags() if not e.rec_off & fmt.BASE_BIT)
        assert own == sorted({"flag-00001", "flag-00050", "flag-00099"} & set(
            ["flag-00001", "flag-00050", "flag-00001", "flag-00099"][:n + 1]))
    _same_evaluations(overlay, base, SnapshotBuilder().build(flags, {}), [Context.create("k")])
    # Reverting an item to the base's bytes points it back into the base.
    b2 = _overlay_builder()
    orig = {f"flag-{i:05d}": _flag(i) for i in range(10)}
    base2 = b2.build(orig, {})
    changed = dict(orig, **{"flag-00003": _flag(3, version=2)})
    b2.build(changed, {}, changed=(["flag-00003"], []))
    back = b2.build(orig, {}, changed=(["flag-00003"], []))
    assert all(e.rec_off & fmt.BASE_BIT for e in SnapshotReader(back, base=base2).flags())


def test_overlay_with_keys_added_and_removed():
    flags = {f"flag-{i:05d}": _flag(i) for i in range(60)}
    segs = {f"seg-{i}": {"key": f"seg-{i}", "version": 1, "included": [f"u{i}"],
                         "salt": "x"} for i in range(5)}
    b = _overlay_builder()
    base = b.build(flags, segs)
    flags = dict(flags)
    segs = dict(segs)
    del flags["flag-00010"]
    flags["zz-new"] = _flag(999, key="zz-new")
    flags["flag-00020"] = {"key": "flag-00020", "version": 9, "deleted": True}   # tombstone
    segs["seg-9"] = {"key": "seg-9", "version": 1, "included": ["u1"], "salt": "y"}
    del segs["seg-0"]
    changed = (["flag-00010", "zz-new", "flag-00020"], ["seg-9", "seg-0"])
    overlay = b.build(flags, segs, changed=changed)
    assert b.last_kind == "overlay"
    full = SnapshotBuilder().build(flags, segs)
    r = SnapshotReader(overlay, base=base)
    assert [e.key for e in r.flags()] == [e.key for e in SnapshotReader(full).flags()]
    assert r.find_flag("flag-00010") is None and r.find_flag("flag-00020") is None
    assert r.find_segment("seg-0") is None and r.find_segment("seg-9") is not None
    _same_evaluations(overlay, base, full, [Context.create(f"u{j}") for j in range(3)])
    # Putting the keys back returns to the base's key set (directory copied again).
    flags2 = {f"flag-{i:05d}": _flag(i) for i in range(60)}
    segs2 = {f"seg-{i}": {"key": f"seg-{i}", "version": 1, "included": [f"u{i}"],
                          "salt": "x"} for i in range(5)}
    b2 = _overlay_builder()
    base2 = b2.build(flags2, segs2)
    gone = dict(flags2)
    del gone["flag-00005"]
    b2.build(gone, segs2, changed=(["flag-00005"], []))
    back = dict(flags2, **{"flag-00005": _flag(5, version=3)})
    ov2 = b2.build(back, segs2, changed=(["flag-00005"], []))
    h2, bh2 = fmt.unpack_header(ov2), fmt.unpack_header(base2)
    assert h2.flag_index_off == bh2.flag_index_off and h2.n_flags == bh2.n_flags
    _same_evaluations(ov2, base2, SnapshotBuilder().build(back, segs2), [Context.create("u5")])


def test_compaction_threshold():
    flags = {f"flag-{i:05d}": _flag(i) for i in range(100)}
    b = SnapshotBuilder(compact_fraction=0.25)
    base = b.build(flags, {})
    bh = fmt.unpack_header(base)
    blob_len = bh.total_size - bh.blob_off
    flags = dict(flags)
    kinds = []
    for i in range(40):
        key = f"flag-{i:05d}"
        flags[key] = _bump(flags[key])
        data = b.build(flags, {}, changed=([key], []))
        kinds.append(b.last_kind)
        if b.last_kind == "overlay":
            h = fmt.unpack_header(data)
            assert h.total_size - h.blob_off <= 0.25 * blob_len
        else:
            break
    # about a quarter of the items fit in an overlay, then the next build compacts
    assert kinds[:20] == ["overlay"] * 20 and kinds[-1] == "full", kinds
    assert 20 <= len(kinds) <= 30
    assert fmt.unpack_header(data).base_size == 0
    # ... and the compacted build is the next base
    flags["flag-00099"] = _bump(flags["flag-00099"])
    nxt = b.build(flags, {}, changed=(["flag-00099"], []))
    assert b.last_kind == "overlay"
    assert fmt.unpack_header(nxt).base_checksum == fmt.unpack_header(data).checksum
    # the absolute cap applies too
    b3 = SnapshotBuilder(compact_fraction=1.0, compact_max_bytes=1)
    b3.build(flags, {})
    b3.build(flags, {}, changed=(["flag-00001"], []))
    assert b3.last_kind == "overlay"        # nothing differs: an empty blob area fits
    flags["flag-00001"] = _bump(flags["flag-00001"])
    b3.build(flags, {}, changed=(["flag-00001"], []))
    assert b3.last_kind == "full"


def test_changed_without_a_base_or_after_forget_is_self_contained():
    flags = {"a": _flag(1, key="a")}
    b = SnapshotBuilder()
    b.build(flags, {}, changed=(["a"], []))
    assert b.last_kind == "full"
    b.forget_base()
    b.build(flags, {}, changed=(["a"], []))
    assert b.last_kind == "full"


def test_overlay_patch_build_is_fast():
    flags = {f"flag-{i:05d}": _flag(i) for i in range(5000)}
    b = SnapshotBuilder()
    b.build(flags, {})
    flags = dict(flags)
    times = []
    for n in range(5):
        key = f"flag-{n:05d}"
        flags[key] = _bump(flags[key])
        t0 = time.perf_counter()
        b.build(flags, {}, changed=([key], []))
        times.append(time.perf_counter() - t0)
        assert b.last_kind == "overlay"
    assert min(times) < 0.02, times       # a full build of 5000 flags takes far longer


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_through_overlays(path):
    """Every corpus case: base = the data minus about half the items (and the rest changed),
    overlay = the real data; it must evaluate exactly like a self-contained build."""
    case = json.loads(path.read_text())
    flags, segs = case.get("flags", {}), case.get("segments", {})
    rng = random.Random(path.stem)
    pre_f = {k: v for k, v in flags.items() if rng.random() < 0.5}
    pre_s = {k: v for k, v in segs.items() if rng.random() < 0.5}
    for d in (pre_f, pre_s):
        for k in list(d):
            if rng.random() < 0.3 and isinstance(d[k], dict):
                d[k] = dict(d[k], version=-5, on=False)
    b = _overlay_builder()
    base = b.build(pre_f, pre_s)
    overlay = b.build(flags, segs, changed=(set(flags) | set(pre_f), set(segs) | set(pre_s)))
    assert b.last_kind == "overlay"
    contexts = [Context.from_dict(ev["context"]) for ev in case["evaluations"][:30]]
    contexts = [c for c in contexts if c.valid][:10] or [Context.create("x")]
    _same_evaluations(overlay, base, SnapshotBuilder().build(flags, segs), contexts)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(ds.datasets(tombstones=True), ds.datasets(tombstones=True), ds.context_lists(2),
       st.randoms(use_true_random=False))
def test_differential_datasets_through_overlays(before, after, ctx_dicts, rnd):
    (f0, s0), (f1, s1) = before, after
    b = _overlay_builder()
    base = b.build(f0, s0)
    changed = (set(f0) | set(f1), set(s0) | set(s1))
    overlay = b.build(f1, s1, changed=changed)
    # an empty base has no blob bytes, so any overlay on it is "too large": compaction
    assert b.last_kind == "overlay" or fmt.unpack_header(base).raw_off == \
        fmt.unpack_header(base).total_size
    contexts = [c for c in (Context.from_dict(d) for d in ctx_dicts) if c.valid] or \
        [Context.create("x")]
    _same_evaluations(overlay, base if b.last_kind == "overlay" else None,
                      SnapshotBuilder().build(f1, s1), contexts)


def test_lone_surrogates_in_json_publish_and_evaluate_on_every_backend():
    """"\\ud800" is legal JSON (json.loads keeps the lone surrogate): such data must build,
    decode back unchanged, and evaluate the same on the C and Python backends as the model."""
    import importlib.util

    from shmflags import Context, _pure
    from shmflags.client.client import Client

    doc = json.loads('{"key": "f\\ud800", "version": 1, "on": true, "salt": "s",'
                     ' "variations": ["a\\udfff", "b"], "fallthrough": {"variation": 0},'
                     ' "offVariation": 1, "rules": [{"id": "r", "variation": 1, "clauses":'
                     ' [{"attribute": "name", "op": "in", "values": ["x\\ud800"]}]}]}')
    key = doc["key"]
    data = SnapshotBuilder().build({key: doc}, {})
    reader = SnapshotReader(data)
    assert reader.decode(reader.find_flag(key)) == doc
    matching = Context.builder("u").set("name", "x\ud800").build()
    other = Context.create("u")
    model = Client.from_data({"flags": {key: doc}}, evaluator="model")
    expected = [model.variation_detail(key, c, "d") for c in (matching, other)]
    assert [d.value for d in expected] == ["b", "a\udfff"]
    backends = [_pure.Snapshot]
    if importlib.util.find_spec("shmflags._native") is not None:
        from shmflags._native import Snapshot as CSnapshot
        backends.append(CSnapshot)
    for snapshot_type in backends:
        client = Client(snapshot_type(data))
        got = [client.variation_detail(key, c, "d") for c in (matching, other)]
        assert [(d.value, d.variation_index, d.reason) for d in got] == \
            [(d.value, d.variation_index, d.reason) for d in expected], snapshot_type


def test_set_members_are_stored_once_per_object_and_overlays_keep_their_own():
    """Target lists and segments that name the same keys share one string pool in a
    self-contained object (each member once); an overlay's changed item carries its own pool
    while unchanged items still read the base's; every lookup answers as before."""
    common = [f"user-{i:05d}" for i in range(400)]

    def targets(i: int, extra: str) -> dict:
        return {"key": f"t{i}", "version": 1, "on": True, "salt": "s",
                "variations": [True, False], "offVariation": 1, "fallthrough": {"variation": 1},
                "targets": [{"values": common + [extra], "variation": 0}]}

    flags = {f"t{i}": targets(i, f"only-{i}") for i in range(20)}
    segs = {"seg": {"key": "seg", "version": 1, "included": common[::2], "salt": "x"}}
    b = _overlay_builder()
    base = b.build(flags, segs)
    r = SnapshotReader(base)
    spans = {(e.pool_off, e.pool_len) for e in list(r.flags()) + list(r.segments())}
    assert len(spans) == 1
    (pool_off, pool_len), = spans
    each = sum(1 + len(k) for k in common + [f"only-{i}" for i in range(20)])
    assert pool_len == (1 + each + 7) // 8 * 8     # reserved byte, then prefix + bytes each
    assert bytes(r.pool(r.find_flag("t3"))).count(b"user-00007") == 1

    flags = dict(flags)
    flags["t3"] = targets(3, "brand-new")
    overlay = b.build(flags, segs, changed=(["t3"], []))
    assert b.last_kind == "overlay"
    ro = SnapshotReader(overlay, base=base)
    own, other = ro.find_flag("t3"), ro.find_flag("t4")
    assert own.pool_off & fmt.BASE_BIT == 0 and 0 < own.pool_len < pool_len
    assert (other.pool_off, other.pool_len) == (pool_off | fmt.BASE_BIT, pool_len)
    assert ro.find_segment("seg").pool_off == pool_off | fmt.BASE_BIT

    contexts = [Context.create(k) for k in ("brand-new", "only-3", "only-4", "user-00010",
                                            "user-00011", "nobody")]
    _same_evaluations(overlay, base, SnapshotBuilder().build(flags, segs), contexts)
    from conftest import native_module

    for mod in (_pure, native_module()):
        snap = mod.Snapshot(overlay, base=base)
        assert [snap.evaluate("t3", c)[1] for c in contexts] == [0, 1, 1, 0, 0, 1]
        assert [snap.evaluate("t4", c)[1] for c in contexts] == [1, 1, 0, 0, 0, 1]


def test_shared_pool_is_kept_across_full_builds_and_its_garbage_bounded():
    """A later full build reuses the linked records (same bytes when nothing changed); members
    of replaced items stay until the churn exceeds twice the live items, then the pool starts
    over, so it never grows without bound; every build answers for its own keys only."""
    from conftest import native_module

    N = native_module()

    def flags_of(gen: int) -> dict:
        return {f"t{i}": {"key": f"t{i}", "version": gen + 1, "on": True, "salt": "s",
                          "variations": [True, False], "offVariation": 1,
                          "fallthrough": {"variation": 1},
                          "targets": [{"values": [f"g{gen}-k{i}-{j}" for j in range(50)],
                                       "variation": 0}]} for i in range(10)}

    def pool_len(data: bytes) -> int:
        return SnapshotReader(data).find_flag("t0").pool_len

    def live(flags: dict) -> int:       # the pool of these flags alone, unpadded
        return 1 + sum(1 + len(k) for f in flags.values() for k in f["targets"][0]["values"])

    b = SnapshotBuilder()
    flags = flags_of(0)
    first = b.build(flags, {}, built_at_ms=0)
    assert b.build(flags, {}, built_at_ms=0) == first
    assert pool_len(first) - live(flags) < 8
    growth = []
    for gen in range(1, 12):
        flags = flags_of(gen)
        data = b.build(flags, {}, built_at_ms=0)
        growth.append(round(pool_len(data) / live(flags), 1))
        snap = N.Snapshot(data)
        assert snap.evaluate("t3", Context.create(f"g{gen}-k3-7"))[1] == 0
        assert snap.evaluate("t3", Context.create(f"g{gen - 1}-k3-7"))[1] == 1
    assert max(growth) <= 4.0 and min(growth) == 1.0, growth
