"""Compiled string sets (record format 4, docs/snapshot-format.md §5.2.1 "string set").

* the layout invariants, read back by a small Python reader written from the documentation
  (slots in the record, members in the record's string pool, a span of its own);
* membership through the C evaluator (flag targets, segment included/excluded keys, large
  ``in`` clauses) equals Python ``set`` membership over random sets: empty, one element,
  forced 32-bit fingerprint collisions, unicode with lone surrogates (encoded
  "surrogatepass" as the compiler does), long members (multi-byte length prefixes);
* corrupted set bytes (bit flips and u32 overwrites in a record's set slots and in its
  members in the pool), fuzzed through
  the C evaluator in a subprocess, never crash and never raise: the flag evaluates normally
  or to ``MALFORMED_FLAG``.

Run directly for a longer hunt: ``python tests/unit/test_record_sets.py ITERATIONS SEED``.
"""
from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import xxhash

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
FUZZ_ITERATIONS = int(os.environ.get("SHMFLAGS_SET_FUZZ_ITERATIONS", "10000"))

from shmflags.snapshot import compile as C  # noqa: E402


# ---------------------------------------------------------------------------------------------
# A reader written from docs/snapshot-format.md §5.2
# ---------------------------------------------------------------------------------------------

def _leb128(buf: bytes, pos: int) -> Tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def read_set(rec: bytes, off: int, pool: bytes, packed: bool = True) -> List[bytes]:
    """Every member of the set at ``off``, checking the layout invariants on the way.

    :param packed: the members must be packed in slot order (a compiled item's own pool;
        a snapshot's shared pool holds them in first-use order).
    """
    if off == 0:
        return []
    assert off % 8 == 0
    assert pool[:1] == b"\0", "pool byte 0 is reserved"
    nslots, m = struct.unpack_from("<II", rec, off)
    assert nslots >= 2 and m >= 1
    assert struct.unpack_from("<II", rec, off + 8 + 8 * (nslots - 1)) == (C.SET_EMPTY_FP, 0)
    members: List[bytes] = []
    prev_fp, at = -1, None
    for i in range(nslots - 1):
        fp, s_off = struct.unpack_from("<II", rec, off + 8 + 8 * i)
        if s_off == 0:
            assert fp == C.SET_EMPTY_FP
            continue
        assert fp >= prev_fp, "slots sorted by fingerprint"
        assert (fp * m) >> 32 <= i, "never before its home slot"
        assert s_off >= 1 and (not packed or at is None or s_off == at), \
            "members packed in slot order"
        n, start = _leb128(pool, s_off)
        raw = pool[start:start + n]
        assert len(raw) == n
        assert C.set_fingerprint(raw) == fp
        members.append(raw)
        prev_fp, at = fp, start + n
    # the slot before the sentinel is used (the table ends right after its last member)
    assert struct.unpack_from("<I", rec, off + 8 + 8 * (nslots - 2) + 4)[0] != 0
    return members


def lookup(rec: bytes, off: int, pool: bytes, raw: bytes) -> bool:
    """The lookup as the documentation states it (what native/hash.c does)."""
    if off == 0:
        return False
    nslots, m = struct.unpack_from("<II", rec, off)
    fp = xxhash.xxh64_intdigest(raw) >> 32
    i = min((fp * m) >> 32, nslots - 1)

    def slot(i: int) -> Tuple[int, int]:
        return struct.unpack_from("<II", rec, off + 8 + 8 * i)

    while slot(i)[0] < fp:          # the sentinel's fp (the maximum) ends this
        i += 1
    while slot(i)[0] == fp:
        s_off = slot(i)[1]
        if s_off == 0:              # an empty slot or the sentinel
            return False
        n, start = _leb128(pool, s_off)
        if pool[start:start + n] == raw:
            return True
        i += 1
    return False


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _flag_with_targets(keys: Sequence[str]) -> dict:
    return {"key": "f", "version": 1, "on": True, "variations": [True, False],
            "offVariation": 1, "fallthrough": {"variation": 1}, "salt": "s",
            "targets": [{"values": list(keys), "variation": 0}] if keys else []}


def _target_set_off(rec: bytes) -> int:
    t_off, t_n = struct.unpack_from("<II", rec, 32)  # sf_flag_rec_t.targets
    return struct.unpack_from("<I", rec, t_off + 12)[0] if t_n else 0


# ---------------------------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------------------------

def _collisions(count: int) -> List[Tuple[str, str]]:
    """Distinct ASCII strings with equal 32-bit set fingerprints (birthday search)."""
    seen: Dict[int, str] = {}
    out: List[Tuple[str, str]] = []
    i = 0
    while len(out) < count:
        s = f"collide-{i}"
        fp = C.set_fingerprint(s.encode())
        if fp in seen:
            out.append((seen[fp], s))
        else:
            seen[fp] = s
        i += 1
    return out


COLLISIONS = _collisions(3)

_ALPHABET = ["a", "b", "Z", "0", "-", ".", "é", "ß", "中", "😀", "\ud800", "\udfff", "\x00", " "]


def _random_string(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.05:
        return ""
    if r < 0.12:   # long: 2- and 3-byte LEB128 length prefixes
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.choice([127, 128, 300, 20000])))
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 24)))


def _random_sets(seed: int) -> List[Tuple[List[str], List[str]]]:
    """(members, probes) pairs: probes are members plus near misses and colliding strings."""
    rng = random.Random(seed)
    cases: List[Tuple[List[str], List[str]]] = [([], ["", "x"]), (["only"], ["only", "onl", "onlyx", ""])]
    a, b = COLLISIONS[0]
    cases.append(([a], [a, b]))                                  # collision, the other absent
    cases.append(([a, b], [a, b]))                               # both present
    cases.append(([x for pair in COLLISIONS for x in pair], [x for pair in COLLISIONS for x in pair]))
    cases.append(([COLLISIONS[1][1]] + [f"user-{i:06d}" for i in range(50)],
                  [COLLISIONS[1][0], COLLISIONS[1][1], "user-000049", "user-000050"]))
    for _ in range(40):
        n = rng.choice([1, 2, 3, 7, 9, 40, 300, 2000])
        members = [_random_string(rng) for _ in range(n)]
        if rng.random() < 0.3:
            members += members[: n // 3]                          # duplicates in the list
        probes = list(members[:50]) + [_random_string(rng) for _ in range(50)]
        probes += [m + "x" for m in members[:10]] + [m[:-1] for m in members[:10] if m]
        cases.append((members, probes))
    return cases


# ---------------------------------------------------------------------------------------------
# Layout and membership
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_layout_and_reference_lookup_equal_python_sets(seed):
    for members, probes in _random_sets(seed):
        rec, pool, _sets = C.compile_flag(_flag_with_targets(members))
        assert struct.unpack_from("<I", rec, 8)[0] & C.FLAG_MALFORMED == 0
        off = _target_set_off(rec)
        expected = set(_utf8(k) for k in members)
        assert sorted(read_set(rec, off, pool)) == sorted(expected)
        assert (pool == b"") == (not expected)
        if members:
            nslots, m = struct.unpack_from("<II", rec, off)
            assert m == C.set_home_slots(len(expected))
        for p in probes + members:
            assert lookup(rec, off, pool, _utf8(p)) == (_utf8(p) in expected), (p, members[:5])


def test_same_key_list_is_stored_once():
    keys = [f"user-{i}" for i in range(100)]
    flag = _flag_with_targets(keys)
    flag["contextTargets"] = [{"contextKind": "user", "values": [], "variation": 0}]
    rec, pool, _sets = C.compile_flag(flag)
    ct_off, ct_n = struct.unpack_from("<II", rec, 40)
    assert ct_n == 1
    assert struct.unpack_from("<I", rec, ct_off + 12)[0] == _target_set_off(rec) != 0
    alone = C.compile_flag(_flag_with_targets(keys))
    assert len(rec) < len(alone.record) + 64 and pool == alone.pool


def _snapshot(N, flags: dict, segments: dict):
    """A C Snapshot whose records are compiled from ``flags`` / ``segments``.

    The builder is given stubs (key and version only): its raw msgpack copy of an item cannot
    hold lone surrogates (builder.pack_raw has no "surrogatepass"), the records can, and the C
    evaluator reads only the records.
    """
    from shmflags.snapshot.builder import SnapshotBuilder

    builder = SnapshotBuilder(compile_flag=lambda f: C.compile_flag(flags[f["key"]]),
                              compile_segment=lambda s: C.compile_segment(segments[s["key"]]),
                              record_format=C.RECORD_FORMAT)
    stub = lambda items: {k: {"key": k, "version": v["version"]} for k, v in items.items()}  # noqa: E731
    return N.Snapshot(builder.build(stub(flags), stub(segments), built_at_ms=0))


def _ctx(key: str):
    from shmflags.context import Context

    return Context.create(key)


@pytest.mark.parametrize("seed", [3])
def test_c_membership_equals_python_sets(seed):
    """Flag targets, segment included/excluded keys and a large ``in`` clause, per probe."""
    from conftest import native_module

    N = native_module()
    for members, probes in _random_sets(seed):
        expected = set(members)
        flags = {
            "t": _flag_with_targets(members) | {"key": "t"},
            "in": {"key": "in", "version": 1, "on": True, "variations": [True, False],
                   "offVariation": 1, "fallthrough": {"variation": 1},
                   "rules": [{"id": "r", "variation": 0, "clauses": [
                       {"contextKind": "user", "attribute": "key", "op": "in",
                        "values": list(members) + [f"pad-{i}" for i in range(9)]}]}]},
        }
        for name in ("inc", "exc"):
            flags[name] = {"key": name, "version": 1, "on": True, "variations": [True, False],
                           "offVariation": 1, "fallthrough": {"variation": 1},
                           "rules": [{"id": "r", "variation": 0, "clauses": [
                               {"attribute": "key", "op": "segmentMatch", "values": [name]}]}]}
        segments = {
            "inc": {"key": "inc", "version": 1, "included": list(members)},
            # excluded keys never match; the rule matches everyone else
            "exc": {"key": "exc", "version": 1, "excluded": list(members),
                    "rules": [{"clauses": [{"attribute": "key", "op": "startsWith", "values": [""]}]}]},
        }
        snap = _snapshot(N, flags, segments)
        for p in probes:
            ctx = _ctx(p)
            if not ctx.valid:
                continue
            want = p in expected
            assert (snap.evaluate("t", ctx)[1] == 0) == want, ("targets", p)
            assert (snap.evaluate("in", ctx)[1] == 0) == (want or p.startswith("pad-")), ("in", p)
            assert (snap.evaluate("inc", ctx)[1] == 0) == want, ("included", p)
            assert (snap.evaluate("exc", ctx)[1] == 0) == (not want), ("excluded", p)


def test_lone_surrogate_keys_match():
    from conftest import native_module

    N = native_module()
    keys = ["a\ud800b", "\udfff", "x" * 200 + "\ud83d"]
    snap = _snapshot(N, {"t": _flag_with_targets(keys) | {"key": "t"}}, {})
    for k in keys:
        assert snap.evaluate("t", _ctx(k))[1] == 0
    assert snap.evaluate("t", _ctx("a\ud801b"))[1] == 1


def test_pool_is_read_only_when_a_fingerprint_matches():
    """Set members live in the pool region, between the records and the raw msgpack; an
    evaluation that matches no fingerprint verifies (and so reads) none of its chunks, a member
    verifies the chunk holding it, and a damaged pool chunk fails only the lookups that read it
    (MALFORMED_FLAG), not the flag's other contexts (issue 4: a worker maps what it reads)."""
    from conftest import native_module

    from shmflags.snapshot import format as fmt
    from shmflags.snapshot.builder import SnapshotBuilder
    from shmflags.snapshot.reader import SnapshotReader

    N = native_module()
    keys = [f"user-{i:06d}" for i in range(3000)]
    flags = {"t": _flag_with_targets(keys) | {"key": "t"},
             "s": {"key": "s", "version": 1, "on": True, "variations": [True, False],
                   "offVariation": 1, "fallthrough": {"variation": 1},
                   "rules": [{"id": "r", "variation": 0, "clauses": [
                       {"attribute": "key", "op": "segmentMatch", "values": ["seg"]}]}]}}
    segments = {"seg": {"key": "seg", "version": 1, "included": keys[::3], "salt": "x"}}
    data = SnapshotBuilder(chunk_shift=fmt.MIN_CHUNK_SHIFT).build(flags, segments, built_at_ms=0)
    r = SnapshotReader(data)
    h = r.header
    entries = [r.find_flag("t"), r.find_flag("s"), r.find_segment("seg")]
    hot_end = max(e.rec_off + e.rec_len for e in entries)
    pools = [(e.pool_off, e.pool_off + e.pool_len) for e in entries if e.pool_len]
    assert len(pools) == 2                                  # "t" and "seg"; "s" has no set
    assert all(hot_end <= a < b <= h.raw_off for a, b in pools)
    t_rec = bytes(r.record(entries[0]))
    assert sorted(read_set(t_rec, _target_set_off(t_rec), bytes(r.pool(entries[0])),
                           packed=False)) == sorted(k.encode() for k in keys)

    def chunk(off: int) -> int:
        return 1 + ((off - h.blob_off) >> h.chunk_shift)

    first_pool_chunk, last_pool_chunk = chunk(pools[0][0]) + 1, chunk(pools[-1][1] - 1) - 1
    assert last_pool_chunk - first_pool_chunk >= 4          # whole chunks inside the pools

    state = bytearray(1 + h.n_chunks)
    snap = N.Snapshot(data, state=state)
    for key in ("t", "s"):
        assert snap.evaluate(key, _ctx("nobody"))[2] == {"kind": "FALLTHROUGH"}
    assert state[chunk(entries[0].rec_off)] == fmt.CHUNK_OK
    assert set(state[first_pool_chunk:last_pool_chunk + 1]) == {fmt.CHUNK_UNKNOWN}
    assert snap.evaluate("t", _ctx("user-001500"))[1] == 0
    assert snap.evaluate("s", _ctx("user-001500"))[1] == 0
    verified = [i for i in range(first_pool_chunk, last_pool_chunk + 1) if state[i]]
    assert 1 <= len(verified) <= 4                          # the chunks of the members read

    # Damage the pool chunk holding user-002001 of "t" (not re-sealed: its checksum fails).
    pool = bytes(r.pool(entries[0]))
    at = entries[0].pool_off + pool.index(b"user-002001")
    bad = bytearray(data)
    bad[at + 5] ^= 0x01
    snap = N.Snapshot(bytes(bad))
    assert snap.evaluate("t", _ctx("nobody"))[2] == {"kind": "FALLTHROUGH"}
    assert snap.evaluate("t", _ctx("user-002001"))[2] == {"kind": "ERROR",
                                                          "errorKind": "MALFORMED_FLAG"}


# ---------------------------------------------------------------------------------------------
# Corrupted sets through the C evaluator (subprocess)
# ---------------------------------------------------------------------------------------------

def _fuzz_base() -> Tuple[dict, dict, List[str]]:
    keys = [f"user-{i:06d}" for i in range(0, 3000, 7)] + [COLLISIONS[0][0], "é😀\ud800", "L" * 300]
    flags = {
        "t": _flag_with_targets(keys) | {"key": "t"},
        "in": {"key": "in", "version": 1, "on": True, "variations": [True, False], "offVariation": 1,
               "fallthrough": {"variation": 1}, "rules": [{"id": "r", "variation": 0, "clauses": [
                   {"attribute": "key", "op": "in", "values": keys[:40]}]}]},
        "seg": {"key": "seg", "version": 1, "on": True, "variations": [True, False],
                "offVariation": 1, "fallthrough": {"variation": 1},
                "rules": [{"id": "r", "variation": 0, "clauses": [
                    {"attribute": "key", "op": "segmentMatch", "values": ["s"]}]}]},
    }
    segments = {"s": {"key": "s", "version": 1, "included": keys[::2]}}
    probes = keys[:20] + keys[-3:] + [COLLISIONS[0][1], "user-000001", "nobody", ""]
    return flags, segments, probes


Region = Tuple[C.Compiled, int, int]


def _set_region(item: C.Compiled, set_off: int) -> Region:
    """The item and [start, end) of the set at ``set_off`` in its record: header and slots
    (its members are the whole pool: each fuzzed item has one set)."""
    nslots = struct.unpack_from("<I", item.record, set_off)[0]
    return item, set_off, set_off + 8 + 8 * nslots


def _regions(flags: dict, segments: dict) -> Dict[Tuple[str, str], Region]:
    """(kind, key) -> (compiled item, set start, set end) for the one set of each item."""
    it_t = C.compile_flag(flags["t"])
    it_in = C.compile_flag(flags["in"])
    rec_in = it_in.record
    r_off = struct.unpack_from("<I", rec_in, 48)[0]              # rules[0]
    c_off = struct.unpack_from("<I", rec_in, r_off + 16)[0]      # its clauses[0]
    in_set = struct.unpack_from("<I", rec_in, c_off + 24)[0]     # sf_clause_t.set
    it_s = C.compile_segment(segments["s"])
    inc_set = struct.unpack_from("<I", it_s.record, 56)[0]       # sf_segment_rec_t.included
    return {("f", "t"): _set_region(it_t, _target_set_off(it_t.record)),
            ("f", "in"): _set_region(it_in, in_set),
            ("s", "s"): _set_region(it_s, inc_set)}


def fuzz(iterations: int, seed: int) -> Tuple[int, int, int]:
    """Corrupt one set per case and evaluate every flag for every probe.

    :returns: (cases, evaluations that gave MALFORMED_FLAG, evaluations that raised or
        reported anything but a normal result or MALFORMED_FLAG).
    """
    from shmflags import _native
    from shmflags.snapshot.builder import SnapshotBuilder

    flags, segments, probes = _fuzz_base()
    regions = _regions(flags, segments)
    contexts = [_ctx(p) for p in probes]
    stub_f = {k: {"key": k, "version": 1} for k in flags}
    stub_s = {k: {"key": k, "version": 1} for k in segments}
    rng = random.Random(seed)
    malformed = bad = 0
    for case in range(iterations):
        which = rng.choice(sorted(regions))
        item, start, end = regions[which]
        buf, pool = bytearray(item.record), bytearray(item.pool)
        for _ in range(rng.choice([1, 1, 2, 3, 8])):
            r = rng.random()
            if r < 0.3:                        # a bit flip in the set's header or slots
                pos = rng.randrange(start, end)
                buf[pos] ^= 1 << rng.randrange(8)
            elif r < 0.5:                      # a bit flip in its members
                pos = rng.randrange(len(pool))
                pool[pos] ^= 1 << rng.randrange(8)
            elif r < 0.85:                     # a u32 overwrite: header or a slot field
                pos = start + 4 * rng.randrange(min(2 + 2 * 64, (end - start) // 4))
                struct.pack_into("<I", buf, pos, rng.choice(
                    [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFFFFFFFF, 0x80000000, len(buf), len(pool),
                     len(pool) - 1, start, end, rng.randrange(1 << 32)]))
            else:                              # a byte of the pool, maybe a length prefix
                pos = rng.randrange(len(pool))
                pool[pos] = rng.choice([0x7F, 0x80, 0xFF, 0])
        mutated = C.Compiled(bytes(buf), bytes(pool))

        def cf(flag, _w=which, _m=mutated):
            k = flag["key"]
            return _m if _w == ("f", k) else C.compile_flag(flags[k])

        def cs(seg, _w=which, _m=mutated):
            return _m if _w[0] == "s" else C.compile_segment(segments[seg["key"]])

        data = SnapshotBuilder(compile_flag=cf, compile_segment=cs,
                               record_format=C.RECORD_FORMAT).build(stub_f, stub_s, built_at_ms=0)
        snap = _native.Snapshot(data)
        for ctx in contexts:
            for key in ("t", "in", "seg"):
                try:
                    value, index, reason, _info, _pre = snap.evaluate(key, ctx)
                except Exception:  # noqa: BLE001
                    bad += 1
                    continue
                if reason.get("kind") == "ERROR":
                    if reason.get("errorKind") == "MALFORMED_FLAG":
                        malformed += 1
                    else:
                        bad += 1
                elif index not in (0, 1):
                    bad += 1
            try:
                snap.all_flags_state(ctx, True, False, False, 0)
            except Exception:  # noqa: BLE001
                bad += 1
    return iterations, malformed, bad


def _child_env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=(path + os.pathsep if path else "") + str(ROOT))


def test_corrupted_sets_never_crash_the_evaluator():
    from conftest import native_module

    native_module()
    proc = subprocess.run([sys.executable, str(HERE), str(FUZZ_ITERATIONS), "11"], cwd="/",
                          capture_output=True, text=True, timeout=900, env=_child_env())
    assert proc.returncode == 0, f"child died ({proc.returncode}):\n{proc.stderr[-4000:]}"
    cases, malformed, bad = map(int, proc.stdout.strip().splitlines()[-1].split())
    assert cases == FUZZ_ITERATIONS
    assert malformed > 0, "some corruptions must be detected as MALFORMED_FLAG"
    assert bad == 0, f"{bad} evaluations raised or gave another error on corrupted sets"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    print(*fuzz(int(sys.argv[1]), int(sys.argv[2])))
