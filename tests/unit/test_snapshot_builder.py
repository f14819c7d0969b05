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
