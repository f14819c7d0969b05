"""Fuzzes a snapshot reader backend with truncated, bit-flipped and re-checksummed snapshots.

Runs the target (``--backend python`` = ``shmflags._pure.Snapshot``, ``--backend c`` =
``shmflags._native.Snapshot``) in child processes, so a crash is seen as a failure with the
case that caused it. A case passes when opening raises ``SnapshotFormatError``, or when the
snapshot opens and every operation of the backend contract either works or raises
``SnapshotFormatError``. Any other exception, a crash or a hang is a failure.

    python scripts/fuzz_snapshot.py --cases 1000000 --backend python --jobs 2
    python scripts/fuzz_snapshot.py --replay 12345 --seed 1      # rerun one case, traceback

Cases are a pure function of (seed, index), so any failure is reproducible. Prints one JSON
object; exit status 1 on any failure. ``tests/integration/test_snapshot_fuzz.py`` runs 10^5.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from shmflags.snapshot import format as fmt  # noqa: E402

PLAIN_MUTATIONS = ("truncate", "bitflip", "bitflip_rehash", "header_field", "body_word",
                   "magic_version", "size", "garbage", "extend", "entry_field", "slot_field",
                   "swap_blocks")
#: mutations of an (overlay, base) pair: bit flips in the base's blobs (stale chunk table),
#: overlay entries pointing past or around the base, a missing or wrong base, structural
#: damage to either object (resealed)
OVERLAY_MUTATIONS = ("base_blob_flip", "overlay_entry_base", "base_missing_or_wrong",
                     "overlay_mutate", "base_mutate")
MUTATIONS = PLAIN_MUTATIONS + OVERLAY_MUTATIONS

_INTERESTING = (0, 1, 7, 8, 127, 128, 129, 0x7F, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000,
                0x7FFFFFFF, 0x80000000, 0xFFFFFFF8, 0xFFFFFFFF)


# ------------------------------------------------------------------------------ base inputs

def base_snapshots() -> List[Any]:
    """The valid inputs mutations start from: snapshots (golden, generated with records,
    empty) and (overlay, base) pairs (same key set; keys added and removed)."""
    from shmflags.snapshot.builder import SnapshotBuilder
    with open(os.path.join(ROOT, "tests", "golden", "small.snap"), "rb") as f:
        golden = f.read()
    flags: Dict[str, dict] = {}
    for i in range(12):
        flags[f"flag-{i}"] = {
            "key": f"flag-{i}", "version": i + 1, "on": i % 3 != 0, "salt": f"s{i}",
            "variations": [i, f"v{i}", {"k": [i, None, True]}], "offVariation": 0,
            "fallthrough": ({"variation": 1} if i % 2 else {"rollout": {"variations": [
                {"variation": 0, "weight": 40000}, {"variation": 2, "weight": 60000}]}}),
            "targets": [{"values": ["alice", f"u{i}"], "variation": 2}],
            "contextTargets": [{"contextKind": "org", "values": ["acme"], "variation": 1}],
            "prerequisites": [{"key": f"flag-{i - 1}", "variation": 1}] if i % 4 == 1 else [],
            "rules": [{"id": f"r{i}", "variation": 1, "trackEvents": True, "clauses": [
                {"contextKind": "user", "attribute": "email", "op": op, "values": vals}]}
                for op, vals in (("endsWith", ["@x.com"]), ("in", ["a", "b", 3]),
                                 ("matches", ["^a.*z$"]), ("semVerLessThan", ["2.0.0"]),
                                 ("before", [1700000000000]), ("segmentMatch", ["seg-1"]))],
            "trackEventsFallthrough": i % 2 == 0, "debugEventsUntilDate": 10 ** 13,
            "clientSideAvailability": {"usingEnvironmentId": i % 2 == 0},
        }
    segs = {f"seg-{i}": {"key": f"seg-{i}", "version": 1, "included": ["alice"],
                         "excluded": ["bob"], "salt": "x",
                         "includedContexts": [{"contextKind": "org", "values": ["acme"]}],
                         "rules": [{"id": "sr", "weight": 50000, "bucketBy": "key",
                                    "clauses": [{"attribute": "plan", "op": "in",
                                                 "values": ["pro"]}]}]}
            for i in range(3)}
    generated = SnapshotBuilder().build(flags, segs, payload_version=3, built_at_ms=1)
    empty = SnapshotBuilder(use_default_compilers=False).build({}, {}, built_at_ms=1)
    pairs = []
    for add_remove in (False, True):
        b = SnapshotBuilder(compact_fraction=100.0, chunk_shift=12)
        base = b.build(flags, segs, payload_version=3, built_at_ms=1)
        f2 = dict(flags)
        f2["flag-2"] = dict(f2["flag-2"], version=50, on=not f2["flag-2"]["on"])
        f2["flag-7"] = dict(f2["flag-7"], version=50, variations=["a", "b", "c"])
        changed = ["flag-2", "flag-7"]
        s2 = dict(segs)
        if add_remove:
            del f2["flag-5"]
            f2["flag-new"] = dict(flags["flag-4"], key="flag-new")
            s2["seg-9"] = dict(segs["seg-1"], key="seg-9")
            changed += ["flag-5", "flag-new"]
        overlay = b.build(f2, s2, payload_version=4, built_at_ms=2,
                          changed=(changed, ["seg-9"] if add_remove else []))
        assert b.last_kind == "overlay"
        pairs.append((overlay, base))
    return [golden, generated, empty] + pairs


def rehash(buf: bytearray, chunks: bool = True) -> None:
    """Recompute the chunk table (unless ``chunks`` is false: stale chunks must cost only their
    items), the directory checksum (both over the stated offsets, clamped) and header check."""
    if len(buf) < fmt.HEADER_SIZE:
        return
    if chunks:
        fmt.reseal(buf)
        return
    h = fmt.unpack_header(buf)
    end = min(max(h.blob_off, fmt.HEADER_SIZE), len(buf))
    struct.pack_into("<Q", buf, fmt.OFF_CHECKSUM, fmt.checksum(bytes(buf[fmt.HEADER_SIZE:end])))
    struct.pack_into("<Q", buf, fmt.OFF_HEADER_CHECK,
                     fmt.checksum(bytes(buf[:fmt.OFF_HEADER_CHECK])))


def _value(rng: random.Random, size: int, near: int) -> int:
    pick = rng.random()
    if pick < 0.5:
        v = rng.choice(_INTERESTING)
    elif pick < 0.8:
        v = near + rng.randint(-64, 64)
    else:
        v = rng.getrandbits(8 * size)
    return v & ((1 << (8 * size)) - 1)


def _overlay_case(rng: random.Random, overlay: bytes, base: bytes) -> Tuple[str, Any]:
    kind = OVERLAY_MUTATIONS[rng.randrange(len(OVERLAY_MUTATIONS))]
    ov, bs = bytearray(overlay), bytearray(base)
    bh = fmt.unpack_header(base)
    h = fmt.unpack_header(overlay)
    other: Optional[bytes] = bytes(bs)
    if kind == "base_blob_flip":
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(bh.blob_off, bh.total_size)
            bs[pos] ^= 1 << rng.randrange(8)
        if rng.random() < 0.2:
            rehash(bs)                       # resealed: the damage is structural now
        other = bytes(bs)
    elif kind == "overlay_entry_base":
        n = h.n_flags + h.n_segments
        first = h.flag_entries_off       # flag entries, then segment entries
        for _ in range(rng.randint(1, 4)):
            eoff = first + fmt.ENTRY_SIZE * rng.randrange(n)
            field = rng.choice([0, 8, 16, 32, 4, 12, 20, 36])
            old = struct.unpack_from("<I", ov, eoff + field)[0]
            pick = rng.random()
            if pick < 0.4:
                v = fmt.BASE_BIT | rng.choice([bh.total_size, bh.total_size - 1, bh.blob_off - 8,
                                               0, 8, fmt.OFF_MASK, bh.raw_off,
                                               (old & fmt.OFF_MASK) + rng.randint(-64, 64)])
            elif pick < 0.7:
                v = old ^ fmt.BASE_BIT       # the same offset in the other object
            else:
                v = _value(rng, 4, old)
            struct.pack_into("<I", ov, eoff + field, v & 0xFFFFFFFF)
        rehash(ov)
    elif kind == "base_missing_or_wrong":
        pick = rng.randrange(4)
        if pick == 0:
            other = None
        elif pick == 1:
            other = bytes(ov)                # an overlay as its own base
        elif pick == 2:
            struct.pack_into("<Q", bs, fmt.OFF_GENERATION, rng.randint(1, 5))
            rehash(bs)
            other = bytes(bs)
        else:
            struct.pack_into("<Q", ov, rng.choice([fmt.OFF_BASE_SIZE, fmt.OFF_BASE_CHECKSUM,
                                                   fmt.OFF_BASE_GENERATION]),
                             _value(rng, 8, 0))
            rehash(ov)
    elif kind == "overlay_mutate":
        sub, data = make_case([bytes(ov)], rng.getrandbits(30), rng.getrandbits(30))
        return kind, (data, other)
    else:  # base_mutate
        sub, data = make_case([bytes(bs)], rng.getrandbits(30), rng.getrandbits(30))
        return kind, (bytes(ov), data)
    return kind, (bytes(ov), other)


def make_case(bases: List[Any], seed: int, index: int) -> Tuple[str, Any]:
    """Return (mutation name, data) for case ``index`` of ``seed`` (deterministic); data is
    snapshot bytes, or an (overlay, base or None) pair."""
    rng = random.Random((seed << 32) ^ index)
    base = bases[index % len(bases)]
    if isinstance(base, tuple):
        return _overlay_case(rng, *base)
    kind = PLAIN_MUTATIONS[rng.randrange(len(PLAIN_MUTATIONS))]
    buf = bytearray(base)
    n = len(buf)
    if kind == "truncate":
        del buf[rng.randrange(n):]
        if rng.random() < 0.5:
            struct.pack_into("<Q", buf, fmt.OFF_TOTAL_SIZE, len(buf)) if len(buf) >= 24 else None
            rehash(buf)
    elif kind in ("bitflip", "bitflip_rehash"):
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(n) if rng.random() < 0.7 else rng.randrange(min(n, 160))
            buf[pos] ^= 1 << rng.randrange(8)
        if kind == "bitflip_rehash":
            rehash(buf, chunks=rng.random() < 0.7)
    elif kind == "header_field":
        off = rng.choice([8, 12, 16, 56, 60, 64, 68, 72, 76, 80, 84, 88, 92, 96, 100, 104,
                          112, 120, 128])
        size = 8 if off in (16, 112, 120, 128) else 4
        old = int.from_bytes(buf[off:off + size], "little")
        buf[off:off + size] = _value(rng, size, old).to_bytes(size, "little")
        rehash(buf)
    elif kind == "body_word":
        for _ in range(rng.randint(1, 4)):
            off = rng.randrange(fmt.HEADER_SIZE, max(fmt.HEADER_SIZE + 1, n - 4)) & ~3
            if off + 4 <= n:
                old = int.from_bytes(buf[off:off + 4], "little")
                buf[off:off + 4] = _value(rng, 4, old).to_bytes(4, "little")
        rehash(buf, chunks=rng.random() < 0.8)
    elif kind == "entry_field" or kind == "slot_field":
        h = fmt.unpack_header(base)
        if kind == "entry_field" and h.n_flags + h.n_segments:
            first = h.flag_entries_off if h.n_flags else h.seg_entries_off
            cnt = h.n_flags or h.n_segments
            eoff = first + fmt.ENTRY_SIZE * rng.randrange(cnt)
            off = eoff + 4 * rng.randrange(fmt.ENTRY_SIZE // 4)
        else:
            cap = h.flag_index_cap if rng.random() < 0.7 else h.seg_index_cap
            ioff = h.flag_index_off if cap == h.flag_index_cap else h.seg_index_off
            off = ioff + fmt.SLOT_SIZE * rng.randrange(cap) + rng.choice([0, 4])
        old = int.from_bytes(buf[off:off + 4], "little")
        buf[off:off + 4] = _value(rng, 4, old).to_bytes(4, "little")
        rehash(buf)
    elif kind == "magic_version":
        which = rng.randrange(4)
        if which == 0:
            buf[rng.randrange(8)] ^= 1 << rng.randrange(8)
        elif which == 1:
            struct.pack_into("<I", buf, 8, fmt.FORMAT_WORD + (rng.randint(1, 4) << 24))
        elif which == 2:
            struct.pack_into("<I", buf, 8, rng.getrandbits(32))
        else:
            struct.pack_into("<I", buf, 12, rng.getrandbits(32))
        if rng.random() < 0.5:
            rehash(buf)
    elif kind == "size":
        total = rng.choice([0, 1, 159, 160, n - 1, n + 1, n + 4096, 2 ** 31, 2 ** 32, 2 ** 63,
                            2 ** 64 - 1, rng.randrange(n)])
        struct.pack_into("<Q", buf, fmt.OFF_TOTAL_SIZE, total)
        rehash(buf)
    elif kind == "garbage":
        buf = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(0, 600)))
        if len(buf) >= fmt.HEADER_SIZE and rng.random() < 0.5:
            buf[:8] = fmt.MAGIC
            struct.pack_into("<IIQ", buf, 8, fmt.FORMAT_WORD, 0, len(buf))
            rehash(buf)
    elif kind == "extend":
        buf += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 256)))
        if rng.random() < 0.5:
            struct.pack_into("<Q", buf, fmt.OFF_TOTAL_SIZE, len(buf))
            rehash(buf)
    elif kind == "swap_blocks":
        a, b = rng.randrange(160, n) & ~7, rng.randrange(160, n) & ~7
        ln = min(rng.choice([8, 16, 32, 64]), n - max(a, b))
        if ln > 0:
            buf[a:a + ln], buf[b:b + ln] = bytes(buf[b:b + ln]), bytes(buf[a:a + ln])
        rehash(buf)
    return kind, bytes(buf)


# ------------------------------------------------------------------------------ target

class _SelfTest:
    """A deliberately broken backend proving the harness reports crashes and exceptions."""

    def __init__(self, data: bytes, base: Any = None) -> None:
        from shmflags._pure import Snapshot
        if len(data) % 97 == 13:
            os.abort()                       # a "segfault"
        if len(data) % 89 == 7:
            raise IndexError("selftest: not a SnapshotFormatError")
        self._s = Snapshot(data, base=base)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)


def _load_backend(name: str) -> Any:
    if name == "selftest":
        return _SelfTest
    if name == "python":
        from shmflags._pure import Snapshot
    elif name == "c":
        from shmflags._native import Snapshot  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown backend {name!r}")
    return Snapshot


def exercise(Snapshot: Any, data: Any, contexts: List[Any], deep: bool) -> str:
    """Open ``data`` (bytes, or an (overlay, base) pair) and use every contract method;
    return "rejected" or "accepted".

    :raises Exception: anything other than SnapshotFormatError (a failure).
    """
    from shmflags.errors import SnapshotFormatError
    try:
        if isinstance(data, tuple):
            snap = Snapshot(data[0], base=data[1])
        else:
            snap = Snapshot(data)
    except SnapshotFormatError:
        return "rejected"
    _ = (snap.generation, snap.flag_count, snap.segment_count)
    try:
        keys = snap.flag_keys()
    except SnapshotFormatError:
        keys = []
    probe = keys[:3] + ["flag-3", "", "missing-\u00e9"]
    for key in probe:
        for ctx in (contexts if deep else contexts[:1]):
            res = snap.evaluate(key, ctx)
            if not (isinstance(res, tuple) and len(res) == 5):
                raise AssertionError(f"evaluate returned {res!r}")
        for getter in (snap.raw_flag, snap.raw_segment):
            try:
                getter(key)
            except SnapshotFormatError:
                pass
    if deep:
        for opts in ((False, False, False), (True, True, True)):
            try:
                state = snap.all_flags_state(contexts[0], *opts, now_ms=0)
            except SnapshotFormatError:
                continue
            if not isinstance(state, dict):
                raise AssertionError(f"all_flags_state returned {type(state).__name__}")
    return "accepted"


def _contexts() -> List[Any]:
    from shmflags.context import Context
    return [Context.builder("alice").set("email", "alice@x.com").set("plan", "pro").build(),
            Context.create_multi(Context.create("bob"), Context.create("acme", "org"))]


def target(backend: str, seed: int, start: int, stop: int, progress_path: str) -> None:
    """Run cases [start, stop) in this process; print counts as JSON."""
    import logging
    logging.disable(logging.CRITICAL)     # evaluation of garbage logs; not what we measure
    Snapshot = _load_backend(backend)
    bases = base_snapshots()
    contexts = _contexts()
    fd = os.open(progress_path, os.O_RDWR)
    progress = mmap.mmap(fd, 8)
    os.close(fd)
    counts: Dict[str, int] = {"rejected": 0, "accepted": 0}
    kinds: Dict[str, int] = {}
    failures: List[Dict[str, Any]] = []
    for index in range(start, stop):
        struct.pack_into("<Q", progress, 0, index)
        kind, data = make_case(bases, seed, index)
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            counts[exercise(Snapshot, data, contexts, deep=index % 8 == 0)] += 1
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding
            failure = {"index": index, "mutation": kind,
                       "error": f"{type(exc).__name__}: {exc}"[:300]}
            failures.append(failure)
            # at once, so a later crash of this process does not lose it
            print(json.dumps({"failure": failure}), flush=True)
    struct.pack_into("<Q", progress, 0, stop)
    print(json.dumps({"counts": counts, "mutations": kinds, "failures": failures[:50],
                      "n_failures": len(failures)}))


# ------------------------------------------------------------------------------ driver

def run(cases: int, backend: str = "python", seed: int = 1, jobs: int = 2,
        timeout: Optional[float] = None) -> Dict[str, Any]:
    """Fuzz ``cases`` cases in ``jobs`` child processes; return merged results.

    A child that dies (signal, non-zero exit) is reported with the case it was running and
    restarted after it.
    """
    me = os.path.abspath(__file__)
    started = time.monotonic()
    chunks: List[Tuple[int, int]] = []
    per = -(-cases // jobs)
    for j in range(jobs):
        if j * per < cases:
            chunks.append((j * per, min(cases, (j + 1) * per)))
    result: Dict[str, Any] = {"cases": cases, "backend": backend, "seed": seed,
                              "rejected": 0, "accepted": 0, "crashes": [], "failures": [],
                              "n_failures": 0, "mutations": {}}
    pending = list(chunks)
    while pending:
        running = []
        for start, stop in pending[:jobs]:
            progress = tempfile.NamedTemporaryFile(prefix="shmflags-fuzz-", delete=False)
            progress.write(struct.pack("<Q", start))
            progress.close()
            p = subprocess.Popen([sys.executable, me, "--role", "target", "--backend", backend,
                                  "--seed", str(seed), "--start", str(start), "--stop",
                                  str(stop), "--progress", progress.name],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running.append((p, start, stop, progress.name))
        pending = pending[jobs:]
        for p, start, stop, path in running:
            left = None if timeout is None else max(1.0, timeout - (time.monotonic() - started))
            try:
                out, err = p.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            with open(path, "rb") as f:
                at = struct.unpack("<Q", f.read(8))[0]
            os.unlink(path)
            if p.returncode != 0:
                result["crashes"].append({"index": at, "returncode": p.returncode,
                                          "stderr": err[-500:]})
                # failures the child reported before it died (its counts are lost)
                for line in out.splitlines():
                    if line.startswith('{"failure"'):
                        result["n_failures"] += 1
                        result["failures"].append(json.loads(line)["failure"])
                if at + 1 < stop and p.returncode != -9:
                    pending.append((at + 1, stop))
                continue
            doc = json.loads(out.strip().splitlines()[-1])
            result["rejected"] += doc["counts"]["rejected"]
            result["accepted"] += doc["counts"]["accepted"]
            result["n_failures"] += doc["n_failures"]
            result["failures"].extend(doc["failures"])
            for k, v in doc["mutations"].items():
                result["mutations"][k] = result["mutations"].get(k, 0) + v
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def replay(backend: str, seed: int, index: int) -> int:
    """Run one case in this process and print what happens (with a traceback)."""
    Snapshot = _load_backend(backend)
    kind, data = make_case(base_snapshots(), seed, index)
    size = [len(d or b"") for d in data] if isinstance(data, tuple) else len(data)
    print(f"case {index} (seed {seed}): {kind}, {size} bytes")
    try:
        print(exercise(Snapshot, data, _contexts(), deep=True))
        return 0
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=["driver", "target"], default="driver")
    ap.add_argument("--cases", type=float, default=1e6)
    ap.add_argument("--backend", choices=["python", "c", "selftest"], default="python")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--start", type=int)
    ap.add_argument("--stop", type=int)
    ap.add_argument("--progress")
    ap.add_argument("--replay", type=int, help="run one case index in-process")
    args = ap.parse_args()
    if args.role == "target":
        target(args.backend, args.seed, args.start, args.stop, args.progress)
        return 0
    if args.replay is not None:
        return replay(args.backend, args.seed, args.replay)
    res = run(int(args.cases), args.backend, args.seed, args.jobs)
    print(json.dumps(res))
    return int(bool(res["crashes"] or res["n_failures"]))


if __name__ == "__main__":
    sys.exit(main())
