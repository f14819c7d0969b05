"""Torn-read stress test of the control-block seqlock and generation switching (any machine).

One writer process publishes generations and rewrites multi-field status continuously; several
reader processes read the control block under the seqlock and check that every copy is
self-consistent (the writer derives every field of a write section from one counter), and now
and then map the current snapshot and check it against the control block.

    python scripts/torn_reads.py --reads 100000000 --readers 3
    python scripts/torn_reads.py --unsynced --reads 2000000   # negative control: must tear

Prints one JSON object; exit status 1 when any inconsistent read was seen (or, with
``--unsynced``, when none was: the checker must be able to fail). The test
``tests/integration/test_torn_reads.py`` runs it with ``SHMFLAGS_TORN_READS`` reads.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import struct
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from shmflags import shm  # noqa: E402
from shmflags.errors import SnapshotBusy  # noqa: E402
from shmflags.snapshot import format as fmt  # noqa: E402
from shmflags.snapshot.builder import SnapshotBuilder  # noqa: E402

# Everything a reader checks lies in [16, 672): seq .. socket.
_START, _END = fmt.CTL_OFF_SEQ, fmt.CTL_OFF_BIGSEG_STATUS
_KINDS = ("UNKNOWN", "NETWORK_ERROR", "ERROR_RESPONSE", "INVALID_DATA", "STORE_ERROR")


def expected_payload_version(gen: int) -> int:
    return gen * 7919


def expected_counts(gen: int) -> tuple:
    return 1 + gen % 5, gen % 3


def expected_message(counter: int) -> str:
    return f"{counter}:" + "x" * (counter % 200)


# ---------------------------------------------------------------------------------- writer

def writer(name: str, publish_every: int) -> None:
    """Publish and rewrite status until stdin closes. Runs in its own process."""
    builder = SnapshotBuilder()         # with compiled records, so the C reader can open it
    pub = shm.Publisher(name, grace=0.05)
    counter = 0
    try:
        gen = 0
        while True:
            if counter % publish_every == 0:
                nf, ns = expected_counts(pub.generation + 1)
                data = builder.build(
                    {f"f{i}": {"key": f"f{i}", "version": i} for i in range(nf)},
                    {f"s{i}": {"key": f"s{i}", "version": i} for i in range(ns)},
                    payload_version=expected_payload_version(pub.generation + 1))
                gen = pub.publish(data)
                if counter % (publish_every * 64) == 0:
                    r, _w, _x = select.select([sys.stdin], [], [], 0)
                    if r and not sys.stdin.read(1):
                        break
            counter += 1
            pub.set_status(error={"kind": _KINDS[counter % 5], "statusCode": counter % 65536,
                                  "time": counter, "message": expected_message(counter)})
            if counter % 8 == 0:
                pub.heartbeat()
    finally:
        pub.close()
    print(json.dumps({"role": "writer", "status_writes": counter, "generations": gen}))


# ---------------------------------------------------------------------------------- reader

class Checker:
    """Checks copies of control bytes [16, 672) for self-consistency, as cheaply as possible.

    One struct unpack pulls every number; the expected name and message bytes are derived
    from the generation and the counter, memoised for the last value of each (most reads
    see the same write as the previous one).
    """

    # generation, payload_version, n_flags, n_segments, error kind, status, time, length
    _FIELDS = struct.Struct("<8xQ16xq56xIIIIQI")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._name_gen = -1
        self._name = b""
        self._msg_counter = -1
        self._msg = b""
        self._name_off = fmt.CTL_OFF_DATA_NAME - _START
        self._msg_off = fmt.CTL_OFF_ERROR_MESSAGE - _START

    def __call__(self, raw: bytes) -> bool:
        gen, pv, nf, ns, kind, status, when, length = self._FIELDS.unpack_from(raw, 0)
        if gen:
            if pv != gen * 7919 or nf != 1 + gen % 5 or ns != gen % 3:
                return False
            if gen != self._name_gen:
                self._name_gen = gen
                self._name = f"{self._prefix}{gen}".encode() + b"\0"
            off = self._name_off
            if raw[off:off + len(self._name)] != self._name:
                return False
        if kind:
            counter = when // 1000
            if kind != counter % 5 + 1 or status != counter % 65536:
                return False
            if counter != self._msg_counter:
                self._msg_counter = counter
                self._msg = expected_message(counter).encode()
            off = self._msg_off
            if length != len(self._msg) or raw[off:off + length] != self._msg:
                return False
        return True


def _open_backend(kind: str):
    if kind == "python":
        from shmflags._pure import Snapshot
    else:
        from shmflags._native import Snapshot  # type: ignore[attr-defined]
    return Snapshot


def reader(name: str, reads: int, snapshot_every: int, backend: str, unsynced: bool) -> None:
    """Read ``reads`` times; print counts as JSON. Runs in its own process."""
    Snapshot = _open_backend(backend)
    deadline = time.monotonic() + 30
    while True:
        try:
            att = shm.Attachment(name)
            if att.generation():
                break
            att.close()
        except Exception:  # noqa: BLE001 - the writer may not have created it yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit("writer never published")
        time.sleep(0.01)
    check = Checker(f"/shmflags.{name}.")
    bad = snapshots = snap_bad = 0
    mm, words = att._mm, att._words
    # The cheapest consistent read: shm's own seqlock read, minus the method call.
    read = shm._read_consistent
    started = time.perf_counter()
    busy = 0
    for i in range(reads):
        # --unsynced bypasses the seqlock on purpose (negative control).
        while True:
            try:
                raw = mm[_START:_END] if unsynced else read(mm, words, _START, _END)
                break
            except SnapshotBusy:
                busy += 1       # no consistent copy within READ_TIMEOUT: not a wrong one
        if not check(raw):
            bad += 1
        if i % snapshot_every == 0 and not unsynced:
            snapshots += 1
            buf = att.snapshot_parts()
            snap = Snapshot(**buf)
            gen = snap.generation
            if gen != att.mapped_generation or \
                    (snap.flag_count, snap.segment_count) != expected_counts(gen):
                snap_bad += 1
            del snap, buf
    elapsed = time.perf_counter() - started
    del words, mm
    att.close()
    print(json.dumps({"role": "reader", "reads": reads, "inconsistent": bad, "busy": busy,
                      "snapshot_checks": snapshots, "snapshot_inconsistent": snap_bad,
                      "seconds": round(elapsed, 3)}))


# ---------------------------------------------------------------------------------- driver

def run(reads: int, readers: int = 2, backend: str = "python", unsynced: bool = False,
        publish_every: int = 50, snapshot_every: int = 2000,
        timeout: Optional[float] = 600.0) -> Dict[str, Any]:
    """Run one writer and ``readers`` readers sharing ``reads``; return the merged counts."""
    name = f"torn-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    me = os.path.abspath(__file__)
    py = sys.executable
    w = subprocess.Popen([py, me, "--role", "writer", "--name", name,
                          "--publish-every", str(publish_every)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs: List[subprocess.Popen] = []
    try:
        per = -(-reads // readers)
        for _ in range(readers):
            procs.append(subprocess.Popen(
                [py, me, "--role", "reader", "--name", name, "--reads", str(per),
                 "--snapshot-every", str(snapshot_every), "--backend", backend]
                + (["--unsynced"] if unsynced else []), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        results = []
        started = time.monotonic()
        for p in procs:
            left_s = None if timeout is None else max(1.0, timeout - (time.monotonic() - started))
            out, err = p.communicate(timeout=left_s)
            if p.returncode != 0:
                raise RuntimeError(f"reader pid {p.pid} exited with {p.returncode}: "
                                   f"{err.strip()[-800:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        out, _ = w.communicate(timeout=60)      # closes the writer's stdin: it stops
        if w.returncode != 0:
            raise RuntimeError(f"writer pid {w.pid} exited with {w.returncode}")
        wres = json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs + [w]:
            if p.poll() is None:
                p.kill()
                p.wait()
        left = shm.list_objects(name)
        shm.cleanup(name)
    return {
        "reads": sum(r["reads"] for r in results),
        "inconsistent": sum(r["inconsistent"] for r in results),
        "busy": sum(r["busy"] for r in results),
        "snapshot_checks": sum(r["snapshot_checks"] for r in results),
        "snapshot_inconsistent": sum(r["snapshot_inconsistent"] for r in results),
        "reader_seconds": max(r["seconds"] for r in results),
        "generations": wres["generations"], "status_writes": wres["status_writes"],
        "readers": readers, "backend": backend, "unsynced": unsynced,
        "objects_left_before_cleanup": len(left[1]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=["driver", "writer", "reader"], default="driver")
    ap.add_argument("--name")
    ap.add_argument("--reads", type=float, default=1e8)
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--backend", choices=["python", "c"], default="python")
    ap.add_argument("--unsynced", action="store_true",
                    help="negative control: read without the seqlock (must see torn reads)")
    ap.add_argument("--publish-every", type=int, default=50,
                    help="status writes per published generation")
    ap.add_argument("--snapshot-every", type=int, default=2000,
                    help="control reads per snapshot map-and-check")
    args = ap.parse_args()
    if args.role == "writer":
        writer(args.name, args.publish_every)
        return 0
    if args.role == "reader":
        reader(args.name, int(args.reads), args.snapshot_every, args.backend, args.unsynced)
        return 0
    res = run(int(args.reads), args.readers, args.backend, args.unsynced, args.publish_every,
              args.snapshot_every, timeout=None)
    print(json.dumps(res))
    bad = res["inconsistent"] + res["snapshot_inconsistent"]
    return int(bad == 0) if args.unsynced else int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
