"""Fuzzed snapshot bytes through the C reader, in a subprocess; and refcount leaks (flat RSS).

The fuzzer mutates a valid snapshot (random byte flips and u32 overwrites inside compiled
records, entries, indexes and header fields; truncations), recomputes both checksums so the
bytes pass validation, and evaluates every flag for several contexts plus
``all_flags_state``. The child process must not die, and damaged records must evaluate to
``MALFORMED_FLAG`` (never raise, never report ``EXCEPTION``). Run directly
for a longer hunt: ``python tests/unit/test_native_fuzz.py ITERATIONS SEED``.
"""
from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
FUZZ_ITERATIONS = int(os.environ.get("SHMFLAGS_FUZZ_ITERATIONS", "3000"))

FLAGS = {
    "a": {"key": "a", "version": 3, "on": True, "salt": "s", "variations": [1, "x", {"o": [1]}],
          "offVariation": 0, "fallthrough": {"rollout": {"kind": "experiment", "seed": 7, "variations": [
              {"variation": 0, "weight": 40000}, {"variation": 2, "weight": 60000}]}},
          "prerequisites": [{"key": "b", "variation": 1}],
          "targets": [{"values": ["t1", "t2"], "variation": 1}],
          "contextTargets": [{"contextKind": "user", "values": [], "variation": 1},
                             {"contextKind": "org", "values": ["o1"], "variation": 0}],
          "rules": [{"id": "r0", "trackEvents": True, "variation": 1, "clauses": [
              {"contextKind": "user", "attribute": "/obj/x", "op": "in",
               "values": [str(i) for i in range(20)] + [1, True, None, {"z": 1}]},
              {"attribute": "email", "op": "endsWith", "values": ["@x.com"], "negate": True}]},
              {"id": "r1", "rollout": {"bucketBy": "email", "contextKind": "user", "variations": [
                  {"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]},
               "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["s0", "s1"]},
                           {"attribute": "ver", "op": "semVerLessThan", "values": ["2.0.0-rc.1"]},
                           {"attribute": "d", "op": "before", "values": ["2020-01-01T00:00:00Z", 5]},
                           {"attribute": "n", "op": "matches", "values": ["^a.*", "["]},
                           {"attribute": "kind", "op": "in", "values": ["user"]},
                           {"attribute": "n", "op": "greaterThan", "values": [2.5]}]}],
          "trackEvents": False, "debugEventsUntilDate": 10, "samplingRatio": 2},
    "b": {"key": "b", "version": 1, "on": True, "variations": [False, True], "offVariation": 0,
          "fallthrough": {"variation": 1}, "prerequisites": [{"key": "c", "variation": 0}]},
    "c": {"key": "c", "version": 1, "on": True, "variations": ["c"], "fallthrough": {"variation": 0}},
}
SEGMENTS = {
    "s0": {"key": "s0", "version": 1, "included": ["u1"], "excluded": ["u2"], "salt": "q",
           "includedContexts": [{"contextKind": "org", "values": ["o1"]}],
           "rules": [{"weight": 30000, "bucketBy": "email", "clauses": [
               {"attribute": "", "op": "segmentMatch", "values": ["s1"]}]}]},
    "s1": {"key": "s1", "version": 1, "unbounded": True, "generation": 2,
           "rules": [{"clauses": [{"attribute": "key", "op": "startsWith", "values": ["u"]}]}]},
}


def _restamp(buf: bytearray) -> bytes:
    """Recompute the chunk table, directory checksum and header check (most of the time: an
    unresealed chunk must make its items unusable, never crash) so mutated bytes pass."""
    from shmflags.snapshot import format as fmt

    if len(buf) < fmt.HEADER_SIZE:
        return bytes(buf)
    return fmt.reseal(buf)


def _reheader(buf: bytearray) -> bytes:
    """Recompute the directory checksum and header check only: blob chunks stay stale."""
    from shmflags.snapshot import format as fmt

    if len(buf) < fmt.HEADER_SIZE:
        return bytes(buf)
    h = fmt.unpack_header(buf)
    blob_off = max(fmt.HEADER_SIZE, min(h.blob_off, len(buf)))
    struct.pack_into("<Q", buf, fmt.OFF_CHECKSUM, fmt.checksum(bytes(buf[fmt.HEADER_SIZE:blob_off])))
    struct.pack_into("<Q", buf, fmt.OFF_HEADER_CHECK, fmt.checksum(bytes(buf[:fmt.OFF_HEADER_CHECK])))
    return bytes(buf)


def fuzz(iterations: int, seed: int) -> tuple:
    """Mutate and evaluate ``iterations`` times.

    :returns: (snapshots that opened, evaluations that raised or reported EXCEPTION); damaged
        records must evaluate as MALFORMED_FLAG, so the second number should be 0.
    """
    from shmflags import _native
    from shmflags.context import Context
    from shmflags.snapshot.builder import SnapshotBuilder

    base = SnapshotBuilder().build(FLAGS, SEGMENTS, built_at_ms=0)
    rng = random.Random(seed)
    contexts = [Context.create("u1"), Context.create("t1"),
                Context.builder("u3").set("email", "a@x.com").set("obj", {"x": "3"})
                .set("ver", "1.0.0").set("d", 1).set("n", "abc").build(),
                Context.create_multi(Context.create("u2"), Context.create("o1", "org"))]
    opened = bad = 0
    for _ in range(iterations):
        buf = bytearray(base)
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            what = rng.random()
            if what < 0.6:        # anywhere in the body (records mostly)
                pos = rng.randrange(160, len(buf))
            elif what < 0.8:      # indexes, order arrays and entries
                pos = rng.randrange(160, min(len(buf), 160 + 2048))
            else:                 # header fields
                pos = rng.randrange(0, 152)
            if rng.random() < 0.5:
                buf[pos] = rng.randrange(256)
            elif pos + 4 <= len(buf):
                struct.pack_into("<I", buf, pos, rng.choice(
                    [0, 1, 7, 8, 0xFFFFFFFF, 0x7FFFFFFF, len(buf), len(buf) - 4, rng.randrange(1 << 32)]))
        if rng.random() < 0.05:
            del buf[rng.randrange(160, len(buf)):]
        data = _restamp(buf) if rng.random() < 0.9 else _reheader(buf)
        try:
            snap = _native.Snapshot(data)
        except Exception:  # noqa: BLE001 - rejection is fine
            continue
        opened += 1
        for ctx in contexts:
            for key in ("a", "b", "c", "zz"):
                try:
                    if snap.evaluate(key, ctx)[2].get("errorKind") == "EXCEPTION":
                        bad += 1
                except Exception:  # noqa: BLE001
                    bad += 1
            try:
                state = snap.all_flags_state(ctx, True, False, False, 0)
                bad += sum(1 for m in state["$flagsState"].values()
                           if m.get("reason", {}).get("errorKind") == "EXCEPTION")
            except Exception:  # noqa: BLE001
                bad += 1
            try:
                snap.flag_keys()
                snap.raw_flag("a")    # msgpack of damaged raw bytes may raise: allowed
            except Exception:  # noqa: BLE001
                pass
    return opened, bad


def _child_env() -> dict:
    """Children import shmflags from PYTHONPATH first (the sanitized build), then the tree."""
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=(path + os.pathsep if path else "") + str(ROOT))
    if "libasan" in env.get("LD_PRELOAD", ""):
        # under scripts/build_sanitized.sh: ASan's quarantine would look like a leak
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"
    return env


def test_fuzzed_snapshots_never_crash_the_process():
    from conftest import native_module

    native_module()
    proc = subprocess.run([sys.executable, str(HERE), str(FUZZ_ITERATIONS), "1"], cwd="/",
                          capture_output=True, text=True, timeout=600, env=_child_env())
    assert proc.returncode == 0, f"child died ({proc.returncode}):\n{proc.stderr[-4000:]}"
    opened, bad = map(int, proc.stdout.strip().splitlines()[-1].split())
    assert opened > FUZZ_ITERATIONS // 4, "most mutated snapshots should open (checksums redone)"
    assert bad == 0, f"{bad} evaluations raised or reported EXCEPTION on damaged records"


def test_rss_flat_over_a_million_calls():
    """Refcount leaks show as RSS growth: 10^6 evaluations and 10^3 all_flags_state calls."""
    from conftest import native_module

    native_module()
    code = r"""
import psutil, sys
sys.path.insert(0, HERE_DIR)
from test_native_fuzz import FLAGS, SEGMENTS
from shmflags import _native
from shmflags.context import Context
from shmflags.snapshot.builder import SnapshotBuilder
s = _native.Snapshot(SnapshotBuilder().build(FLAGS, SEGMENTS, built_at_ms=0))
ctxs = [Context.create("u1"), Context.builder("u3").set("email", "a@x.com").set("obj", {"x": "3"})
        .set("ver", "1.0.0").set("d", 1).set("n", "abc").build(),
        Context.create_multi(Context.create("u2"), Context.create("o1", "org"))]
def run(n):
    for i in range(n):
        c = ctxs[i % 3]
        s.evaluate("a", c); s.evaluate("b", c); s.evaluate("zz", c)
        if i % 1000 == 0:
            s.all_flags_state(c, True, False, True, 0)
run(20000)
p = psutil.Process()
before = p.memory_info().rss
run(333334)
after = p.memory_info().rss
print(before, after)
""".replace("HERE_DIR", repr(str(HERE.parent)))
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                          timeout=600, env=_child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = map(int, proc.stdout.split())
    assert after - before < 2 * 1024 * 1024, f"RSS grew by {after - before} bytes"


if __name__ == "__main__":
    print(*fuzz(int(sys.argv[1]), int(sys.argv[2])))
