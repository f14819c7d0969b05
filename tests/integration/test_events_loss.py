"""Loss and junk: graceful worker exits deliver every evaluation; junk datagrams are counted and dropped.

Real processes and a real socket: workers are separate interpreters (atexit path) and
multiprocessing children (os._exit after finalizers); the supervisor side is
:class:`EventService` posting to the fake events service.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import textwrap
import time
from typing import Any, Dict, List

import msgpack
import pytest

from shmflags.config import Config
from shmflags.events.datagram import MAX_DATAGRAM, DatagramError, decode
from shmflags.events.service import EventService
from tests.fakes.fake_ld import FakeLD

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def summary_total(fake: FakeLD) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    for p in fake.events:
        for event in p.payload:
            if event["kind"] == "summary":
                for key, flag in event["features"].items():
                    totals[key] = totals.get(key, 0) + sum(c["count"] for c in flag["counters"])
    return totals


def _config(fake: FakeLD, tmp_path: Any, **extra: Any) -> Config:
    return Config(sdk_key="sdk-loss-test", events_uri=fake.url,
                  socket=str(tmp_path / "ev.sock"), flush_interval=60, diagnostic_opt_out=True,
                  **extra)


WORKER = textwrap.dedent("""
    import sys
    from shmflags.config import Config
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder
    sock, n, wid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rec = EventRecorder(Config(socket=sock, flush_interval=0.05, events_max_pending=500))
    ctxs = [Context.builder(f"w{wid}-u{i}").set("n", i).build() for i in range(40)]
    info = (4, 0, None, None)
    for i in range(n):
        rec.record_evaluation(f"flag-{i % 7}", ctxs[i % 40], (i % 2 == 0, i % 2, {"kind": "FALLTHROUGH"}, info, ()), False, False)
    # no close(): the interpreter's normal exit (atexit) must flush
""")


def test_graceful_exit_delivers_every_evaluation(tmp_path):
    n, procs = 20000, 6
    with FakeLD(heartbeat_interval=None) as fake:
        config = _config(fake, tmp_path)
        service = EventService(config)
        service.start()
        try:
            env = dict(os.environ, PYTHONPATH=ROOT)
            children = [subprocess.Popen([sys.executable, "-c", WORKER, config.socket_path,
                                          str(n), str(w)], env=env, cwd=ROOT)
                        for w in range(procs)]
            for child in children:
                assert child.wait(timeout=120) == 0
            service.flush()
        finally:
            service.stop(flush=True)
        totals = summary_total(fake)
    assert sum(totals.values()) == n * procs
    assert totals["flag-0"] == procs * len(range(0, n, 7))
    counters = service.counters()
    assert counters["invalid"] == 0 and counters["dropped"] == 0
    # one index event per distinct context on the whole host
    index = [e for p in fake.events for e in p.payload if e["kind"] == "index"]
    assert len(index) == 40 * procs


_HELD: List[Any] = []  # keeps a child's recorder alive until os._exit, like a client singleton


def _mp_child(sock: str, n: int, wid: int, hold: bool) -> None:
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder

    rec = EventRecorder(Config(socket=sock, flush_interval=60))
    if hold:
        _HELD.append(rec)
    ctx = Context.create(f"mp-{wid}")
    for i in range(n):
        rec.record_evaluation("mp-flag", ctx, (True, 1, {"kind": "FALLTHROUGH"},
                                               (1, 0, None, None), ()), False, False)
    # returns: a dropped recorder flushes in __del__; a held one in multiprocessing's
    # finalizers, which run before the child's os._exit (atexit does not run there)


@pytest.mark.parametrize("hold", [True, False])
def test_multiprocessing_children_flush_through_finalizers(tmp_path, hold):
    n, procs = 5000, 4
    with FakeLD(heartbeat_interval=None) as fake:
        config = _config(fake, tmp_path)
        service = EventService(config)
        service.start()
        try:
            mp = multiprocessing.get_context("fork")
            children = [mp.Process(target=_mp_child, args=(config.socket_path, n, w, hold))
                        for w in range(procs)]
            for c in children:
                c.start()
            for c in children:
                c.join(60)
                assert c.exitcode == 0
            service.flush()
        finally:
            service.stop(flush=True)
        assert summary_total(fake) == {"mp-flag": n * procs}


# -- fuzz --------------------------------------------------------------------------------


def _valid(seq: int) -> bytes:
    return msgpack.packb({"v": 1, "pid": 4242, "seq": seq,
                          "summary": [1000, 1000 + seq, [["fuzz", False, ["user"],
                                                          [[1, 2, True, 1]]]]]})


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _junk(rng: random.Random, i: int) -> bytes:
    choice = i % 10
    if choice == 0:
        return os.urandom(rng.randint(1, 300))
    if choice == 1:
        return msgpack.packb({"v": 1, "pid": 1, "seq": 0, "events": [
            {"kind": "custom", "creationDate": 1, "key": "k",
             "context": {"kind": "user", "key": "u", "deep": _deep(rng.randint(33, 200))}}]})
    if choice == 2:
        return _valid(i)[:rng.randint(1, 20)]
    if choice == 3:
        return _valid(i) + b"\x00"
    if choice == 4:
        return msgpack.packb({"v": 2, "pid": 1, "seq": 0})
    if choice == 5:
        return msgpack.packb({"v": 1, "pid": 1, "seq": 0, "summary": [5, 1, []]})
    if choice == 6:
        return msgpack.packb({"v": 1, "pid": 1, "seq": 0, "summary": [
            1, 2, [["f", None, ["user"], [[0, 1, True, -4]]]]]})
    if choice == 7:
        return msgpack.packb({"v": 1, "pid": 1, "seq": 0, "events": [
            {"kind": "feature", "creationDate": 1, "key": "k", "value": b"bytes", "default": 1,
             "context": {"kind": "user", "key": "u"}}]}, use_bin_type=True)
    if choice == 8:
        return msgpack.packb([1, 2, 3]) if i % 20 < 10 else msgpack.packb({"v": 1, "x": 1})
    return b"\x81" + os.urandom(rng.randint(0, 40))


def test_fuzz_junk_is_counted_and_valid_datagrams_still_delivered(tmp_path):
    import socket

    rng = random.Random(8)
    junk_count, valid_count = 100_000, 500
    with FakeLD(heartbeat_interval=None) as fake:
        config = _config(fake, tmp_path)
        service = EventService(config)
        service.start()
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sent_valid = 0
            oversized = b"\x80" * (MAX_DATAGRAM + 100)
            for i in range(junk_count):
                data = oversized if i % 1000 == 999 else _junk(rng, i)
                try:
                    decode(data)
                    raise AssertionError(f"junk case {i % 10} decoded as valid")
                except DatagramError:
                    pass
                sender.sendto(data, config.socket_path)  # blocking: the test never drops
                if i % (junk_count // valid_count) == 0:
                    sender.sendto(_valid(sent_valid), config.socket_path)
                    sent_valid += 1
            deadline = time.time() + 30
            while service.counters()["invalid"] + service.counters()["received"] \
                    < junk_count + sent_valid and time.time() < deadline:
                time.sleep(0.05)
            service.flush()
        finally:
            sender.close()
            service.stop(flush=True)
        counters = service.counters()
    assert sent_valid == valid_count
    assert counters["invalid"] == junk_count
    assert counters["received"] == valid_count
    assert summary_total(fake) == {"fuzz": valid_count}


KILLED = textwrap.dedent("""
    import os, signal, sys, time
    from shmflags.config import Config
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder
    sock, flushed, unflushed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rec = EventRecorder(Config(socket=sock, flush_interval=0.2))
    ctx = Context.create("killed")
    t = (True, 1, {"kind": "FALLTHROUGH"}, (1, 0, None, None), ())
    for _ in range(flushed):
        rec.record_evaluation("before", ctx, t, False, False)
    time.sleep(2.0)   # the daemon thread flushes this window (interval 0.2 s)
    for _ in range(unflushed):
        rec.record_evaluation("after", ctx, t, False, False)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill_9_loses_at_most_the_unflushed_window(tmp_path):
    with FakeLD(heartbeat_interval=None) as fake:
        config = _config(fake, tmp_path)
        service = EventService(config)
        service.start()
        try:
            env = dict(os.environ, PYTHONPATH=ROOT)
            child = subprocess.Popen([sys.executable, "-c", KILLED, config.socket_path,
                                      "3000", "500"], env=env, cwd=ROOT)
            assert child.wait(timeout=60) == -9
            service.flush()
        finally:
            service.stop(flush=True)
        totals = summary_total(fake)
    assert totals.get("before") == 3000
    assert totals.get("after", 0) < 500
