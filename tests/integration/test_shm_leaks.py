"""Leaks: 10^4 publish/switch cycles leave no stale objects in /dev/shm, and a reader process
that switched every time has no more mappings, file descriptors or RSS than after warm-up.

``SHMFLAGS_LEAK_CYCLES`` sets the cycle count (default 10^4).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

from shmflags import shm
from shmflags.snapshot import format as fmt
from shmflags.snapshot.builder import SnapshotBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CYCLES = int(float(os.environ.get("SHMFLAGS_LEAK_CYCLES", "1e4")))

#: The readers' resource probe: shmflags mappings, open descriptors, RSS.
USAGE = textwrap.dedent("""\
    def usage():
        with open("/proc/self/maps") as f:
            maps = sum(1 for line in f if "/dev/shm/shmflags." in line)
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"shm_maps": maps, "fds": len(os.listdir("/proc/self/fd")), "rss": rss}
""").strip()

READER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from shmflags import shm
    from shmflags._pure import Snapshot
    from shmflags.context import Context

    {usage}

    att = shm.Attachment({name!r})
    ctx = Context.create("user-1")
    for line in sys.stdin:
        gen = int(line)
        if gen == 0:
            break
        snap = Snapshot(att.snapshot_buffer())
        ok = snap.generation == gen == att.mapped_generation
        value = snap.evaluate("f0", ctx)[0]
        ok = ok and value == gen
        del snap
        out = dict(usage(), ok=ok) if gen % 500 == 0 else {{"ok": ok}}
        sys.stdout.write(json.dumps(out) + "\\n")
        sys.stdout.flush()
    att.close()
    sys.stdout.write(json.dumps(dict(usage(), closed=True)) + "\\n")
""")


def _snap(builder: SnapshotBuilder, gen: int) -> bytes:
    flags = {f"f{i}": {"key": f"f{i}", "version": gen, "on": True, "variations": [gen],
                       "fallthrough": {"variation": 0}} for i in range(20)}
    return builder.build(flags, {})


def test_publish_switch_cycles_do_not_leak():
    name = f"leak-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    builder = SnapshotBuilder()
    pub = shm.Publisher(name, grace=0.0)
    script = READER.format(root=ROOT, name=name, usage=USAGE)
    reader = subprocess.Popen([sys.executable, "-c", script],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    samples = []
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        started = time.monotonic()
        for _ in range(CYCLES):
            gen = pub.publish(_snap(builder, pub.generation + 1))
            reader.stdin.write(f"{gen}\n")
            reader.stdin.flush()
            reply = json.loads(reader.stdout.readline())
            assert reply["ok"], f"reader saw the wrong generation at {gen}"
            if "rss" in reply:
                samples.append(reply)
            if gen % 1000 == 0:
                # Superseded generations are unlinked as soon as their (zero) grace is over.
                assert shm.list_objects(name) == (True, [gen])
        elapsed = time.monotonic() - started
        fds_after = len(os.listdir("/proc/self/fd"))
        pending = pub.pending()
        reader.stdin.write("0\n")
        reader.stdin.flush()
        final = json.loads(reader.stdout.readline())
        reader.wait(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        pub.close()
        left = shm.list_objects(name)
        shm.cleanup(name)
    print(f"\n{CYCLES} cycles in {elapsed:.1f} s; first {samples[0]}, last {samples[-1]}")
    assert left == (True, [CYCLES])
    assert pending == [] and fds_after == fds_before      # the publisher keeps nothing either
    warm, last = samples[1], samples[-1]
    assert last["shm_maps"] <= 2          # control block + the current generation
    assert last["shm_maps"] <= warm["shm_maps"]
    assert last["fds"] <= warm["fds"]
    assert last["rss"] - warm["rss"] < 4 * 1024 * 1024, (warm, last)
    assert final["closed"] and final["shm_maps"] == 0


def test_grace_period_objects_are_all_reaped():
    name = f"leak-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    builder = SnapshotBuilder(use_default_compilers=False)
    try:
        with shm.Publisher(name, grace=3600) as pub:
            for g in range(1, 301):
                pub.publish(_snap(builder, g))
            # issue 12: only the previous generation waits for its grace period; older ones
            # are unlinked at the next publish, so a burst never piles up objects
            assert shm.list_objects(name) == (True, [299, 300])
            assert pub.pending() == [shm.data_name(name, 299)]
            pub.reap(now=time.monotonic() + 3601)
            assert shm.list_objects(name) == (True, [300])
            assert pub.pending() == []
    finally:
        shm.cleanup(name)
    assert shm.list_objects(name) == (False, [])


LAYERED_READER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from shmflags import shm
    from shmflags.backend import open_snapshot
    from shmflags.context import Context

    {usage}

    att = shm.Attachment({name!r})
    ctx = Context.create("user-1")
    for line in sys.stdin:
        gen, key, want = line.split()
        if gen == "0":
            break
        parts = att.snapshot_parts()
        snap = open_snapshot(**parts)
        ok = snap.generation == int(gen) == att.mapped_generation
        ok = ok and snap.evaluate(key, ctx)[0] == int(want)
        ok = ok and snap.evaluate("f19", ctx)[0] is not None
        layered = parts["base"] is not None
        del snap, parts
        out = dict(usage(), ok=ok, layered=layered) if int(gen) % 500 == 0 else \\
            {{"ok": ok, "layered": layered}}
        sys.stdout.write(json.dumps(out) + "\\n")
        sys.stdout.flush()
    att.close()
    sys.stdout.write(json.dumps(dict(usage(), closed=True)) + "\\n")
""")


def test_layered_publish_cycles_do_not_leak():
    """10^4 publishes mixing one-flag overlays, compactions and puts: no stale objects (only
    the current generation and its base stay), no mapping, descriptor or RSS growth."""
    name = f"leak-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    builder = SnapshotBuilder(compact_fraction=0.5)
    flags = {f"f{i}": {"key": f"f{i}", "version": 1, "on": True, "variations": [0, "x" * 200],
                       "fallthrough": {"variation": 0}, "salt": "s" * 100} for i in range(20)}
    pub = shm.Publisher(name, grace=0.0)
    script = LAYERED_READER.format(root=ROOT, name=name, usage=USAGE)
    reader = subprocess.Popen([sys.executable, "-c", script],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    samples = []
    kinds = {"full": 0, "overlay": 0}
    layered_seen = 0
    try:
        for cycle in range(1, CYCLES + 1):
            key = f"f{cycle % 20}"
            flags = dict(flags)
            flags[key] = dict(flags[key], version=flags[key]["version"] + 1,
                              variations=[cycle, "x" * 200])
            if cycle % 997 == 0:
                data = builder.build(flags, {})                      # a put
            else:
                data = builder.build(flags, {}, changed=([key], []))  # a patch
            kinds[builder.last_kind] += 1
            gen = pub.publish(data)
            reader.stdin.write(f"{gen} {key} {cycle}\n")
            reader.stdin.flush()
            reply = json.loads(reader.stdout.readline())
            assert reply["ok"], f"reader saw the wrong data at generation {gen}"
            layered_seen += reply["layered"]
            if "rss" in reply:
                samples.append(reply)
            objs = shm.list_objects(name)[1]
            with open(os.path.join(shm.SHM_DIR, shm.data_name(name, gen)[1:]), "rb") as f:
                base = fmt.unpack_header(f.read(fmt.HEADER_SIZE)).base_generation
            assert objs == sorted({gen, base} - {0}), (gen, base, objs)
        pending = pub.pending()
        reader.stdin.write("0 x 0\n")
        reader.stdin.flush()
        final = json.loads(reader.stdout.readline())
        reader.wait(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        pub.close()
        shm.cleanup(name)
    print(f"\n{kinds}; first {samples[0]}, last {samples[-1]}")
    assert kinds["overlay"] > CYCLES // 2 and kinds["full"] > CYCLES // 1000
    assert layered_seen == kinds["overlay"]
    assert pending == []
    warm, last = samples[1], samples[-1]
    assert max(s["shm_maps"] for s in samples) <= 3   # control block + generation + its base
    assert last["fds"] <= warm["fds"]
    assert last["rss"] - warm["rss"] < 4 * 1024 * 1024, (warm, last)
    assert final["closed"] and final["shm_maps"] == 0
