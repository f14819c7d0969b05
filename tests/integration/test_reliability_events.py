"""Reliability promises of DESIGN §12 on the event path, with a real ``shmflags-supervisor``
and worker processes on the public client API (``tests/integration/reliability_helpers.py``):

* 100,000 junk datagrams while a worker evaluates and tracks: the supervisor keeps
  publishing and delivering, every junk datagram is counted invalid (``status --json`` and
  ``/metrics``), the summary counts and custom events delivered are exact, no worker call waits;
* a full event socket (supervisor stopped): calls never wait, the summary stays exact, full
  events past ``events_max_pending`` are dropped and counted;
* an event socket missing while a worker evaluates (no supervisor yet): the summary waits in
  the worker and is delivered whole once a supervisor listens.

Every process is stopped by its pid.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List

import pytest

import shmflags
import reliability_helpers as rh
from reliability_helpers import closed_port, scrape, start_workers, value_flag
from supervisor_harness import wait_for
from tests.fakes.fake_ld import FakeLD

if not hasattr(shmflags, "get"):
    pytest.skip("the public worker client (shmflags.get) is not wired yet",
                allow_module_level=True)

h, workers, short_dir = rh.h, rh.workers, rh.short_dir          # fixtures


# -- junk datagrams ---------------------------------------------------------------------------

JUNK = 100_000

JUNK_SENDER = r"""
import msgpack, random, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(12)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
nested = [1]
for _ in range(40):
    nested = [nested]
kinds = [
    lambda i: rng.randbytes(rng.randint(0, 64)),
    lambda i: msgpack.packb({"v": 1, "pid": i})[:-1],                       # truncated
    lambda i: msgpack.packb({"v": 99, "pid": 1, "seq": i}),                 # unknown version
    lambda i: msgpack.packb([1, 2, 3]),                                     # not a map
    lambda i: msgpack.packb({"v": 1, "pid": 1, "seq": i, "events": [{"kind": "nope"}]}),
    lambda i: msgpack.packb({"v": 1, "pid": 1, "seq": i, "flags": "x" * 10}),
    lambda i: msgpack.packb({"v": 1, "pid": 1, "seq": i, "events": nested}),  # too deep
]
big = b"\x80" * 70000                                                      # over 64 KiB
for i in range(n):
    data = big if i % 5000 == 4999 else kinds[i % len(kinds)](i)
    s.sendto(data, path)        # blocking: every junk datagram arrives
print("sent", n)
"""


def test_junk_datagrams_while_a_worker_evaluates_and_tracks(h, workers, tmp_path, short_dir):
    sock = short_dir / "ev.sock"
    with FakeLD(heartbeat_interval=0.5) as fake:
        fake.set_data({"f1": value_flag("f1", 1, "v1")}, {})
        url = fake.url
        metrics_port = closed_port()
        env = {"SHMFLAGS_SDK_KEY": "sdk-reliability", "SHMFLAGS_STREAM_URI": url,
               "SHMFLAGS_BASE_URI": url, "SHMFLAGS_EVENTS_URI": url,
               "SHMFLAGS_SEND_EVENTS": "true", "SHMFLAGS_SOCKET": str(sock),
               "SHMFLAGS_FLUSH_INTERVAL": "0.5", "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true"}
        sup = h.start(env={**env, "SHMFLAGS_METRICS_ADDR": f"127.0.0.1:{metrics_port}"})
        wait_for(lambda: h.raw_flag("f1") is not None, 15)
        wait_for(sock.exists, 10)
        assert fake.wait_for_streams(1)
        stop, go = tmp_path / "stop", tmp_path / "go"
        (worker,) = start_workers(workers, h, 1, "events", str(stop), str(go), "2000", env=env)
        wait_for(lambda: h.status().get("events", {}).get("received"), 20, 0.1)  # it is up
        junk = subprocess.Popen([sys.executable, "-c", JUNK_SENDER, str(sock), str(JUNK)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # the supervisor keeps publishing during the flood
            for version in range(2, 7):
                fake.push("patch", {"path": "/flags/f1",
                                    "data": value_flag("f1", version, f"v{version}")})
                wait_for(lambda: h.raw_flag("f1")["version"] == version, 5)
                time.sleep(0.2)
            out, err = junk.communicate(timeout=60)
        finally:
            if junk.poll() is None:
                junk.kill()
                junk.wait(5)
        assert junk.returncode == 0, err
        stop.write_text("")
        go.write_text("")
        result = worker.done(60)
        n_eval, n_track = result["evaluations"], result["tracks"]

        def delivered() -> Dict[str, int]:
            counts = {"f1": 0, "clicked": 0}
            for p in fake.events:
                for e in p.payload:
                    if e["kind"] == "summary":
                        counts["f1"] += sum(c["count"] for c in e["features"].get("f1", {})
                                            .get("counters", []))
                    elif e["kind"] == "custom" and e["key"] == "clicked":
                        counts["clicked"] += 1
            return counts
        wait_for(lambda: delivered() == {"f1": n_eval, "clicked": n_track}, 20, 0.1)
        events = wait_for(lambda: (lambda e: e if e and e["invalid"] >= JUNK
                                   and e["sent"] >= n_track else None)(h.status().get("events")),
                          10, 0.2)
        metrics = wait_for(lambda: (lambda m: m if m.get("shmflags_events_invalid_total", 0)
                                    >= JUNK else None)(scrape(metrics_port)), 10, 0.2)
        assert sup.proc.poll() is None
    assert metrics["shmflags_events_invalid_total"] == JUNK, metrics
    print(f"\n{JUNK} junk datagrams: events {events}; worker {result['evaluations']} "
          f"evaluations and {result['tracks']} tracks in {result['elapsed']:.1f} s, slowest "
          f"call {result['slowest'] * 1000:.1f} ms, values {result['values']}")
    assert events["invalid"] == JUNK, events
    assert n_track == 2000 and n_eval >= 20_000, result
    assert len(result["values"]) >= 3          # it saw publishes made during the flood
    assert result["slowest"] < 0.25, result    # a send never waits (bound: a loaded machine)


# -- full event socket ------------------------------------------------------------------------

def fill_socket(path: str) -> List[socket.socket]:
    """Queue datagrams at ``path`` until the receiver's queue is full (EAGAIN on a fresh
    socket: the limit is the receiver's ``net.unix.max_dgram_qlen``, not a sender's buffer)."""
    senders: List[socket.socket] = []
    for _ in range(1000):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        senders.append(s)
        sent = 0
        try:
            while True:
                s.sendto(b"filler", path)
                sent += 1
        except BlockingIOError:
            pass
        if sent == 0:
            return senders
    raise AssertionError("the socket never filled up")


def test_full_event_socket_never_blocks_and_keeps_summaries(h, workers, tmp_path, short_dir):
    sock = short_dir / "ev.sock"
    max_pending = 100
    with FakeLD(heartbeat_interval=0.5) as fake:
        fake.set_data({"f1": value_flag("f1", 1, "v1")}, {})
        url = fake.url
        env = {"SHMFLAGS_SDK_KEY": "sdk-reliability", "SHMFLAGS_STREAM_URI": url,
               "SHMFLAGS_BASE_URI": url, "SHMFLAGS_EVENTS_URI": url,
               "SHMFLAGS_SEND_EVENTS": "true", "SHMFLAGS_SOCKET": str(sock),
               "SHMFLAGS_FLUSH_INTERVAL": "0.1", "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true",
               "SHMFLAGS_EVENTS_MAX_PENDING": str(max_pending)}
        sup = h.start(env=env)
        wait_for(lambda: h.raw_flag("f1") is not None, 15)
        wait_for(sock.exists, 10)
        stop, go = tmp_path / "stop", tmp_path / "go"
        n_track = 300
        sup.signal(signal.SIGSTOP)        # the supervisor stops reading: the queue fills
        senders: List[socket.socket] = []
        try:
            senders = fill_socket(str(sock))
            (worker,) = start_workers(workers, h, 1, "events", str(stop), str(go),
                                      str(n_track), env=env)
            # evaluate and track while the socket stays full (the flush thread meets it)
            wait_for(lambda: worker.events("started"), 60, 0.05)
            time.sleep(1.5)
            stop.write_text("")
            looped = wait_for(lambda: worker.events("looped"), 60, 0.05)[0]
        finally:
            sup.signal(signal.SIGCONT)
            for s in senders:
                s.close()
        go.write_text("")
        result = worker.done(60)
        n_eval = result["evaluations"]
        assert result["tracks"] == n_track and looped["evaluations"] == n_eval, result

        def delivered() -> Dict[str, int]:
            counts = {"f1": 0, "clicked": 0}
            for p in fake.events:
                for e in p.payload:
                    if e["kind"] == "summary":
                        counts["f1"] += sum(c["count"] for c in e["features"].get("f1", {})
                                            .get("counters", []))
                    elif e["kind"] == "custom" and e["key"] == "clicked":
                        counts["clicked"] += 1
            return counts
        wait_for(lambda: delivered()["f1"] == n_eval, 20, 0.1)
        time.sleep(1.0)
        counts = delivered()
        events = wait_for(lambda: (lambda e: e if e and e["dropped"] >= n_track - max_pending
                                   else None)(h.status().get("events")), 10, 0.2)
        assert sup.proc.poll() is None
    print(f"\nfull socket: worker slowest call {result['slowest'] * 1000:.1f} ms; delivered "
          f"{counts}; supervisor counters {events}")
    assert counts["f1"] == n_eval, counts                 # the summary is kept whole
    # full events: the buffer's worth is delivered (the supervisor's window of
    # events_max_pending also holds the index event), every other one is counted
    assert max_pending - 1 <= counts["clicked"] <= max_pending, counts
    assert counts["clicked"] + events["dropped"] == n_track, (counts, events)
    assert result["slowest"] < 0.25, result




# -- event socket missing ----------------------------------------------------------------------

def test_missing_socket_then_supervisor_every_evaluation_counted(h, workers, tmp_path,
                                                                 short_dir):
    """A worker that evaluates before any supervisor listens keeps its summary and delivers
    it once the socket exists; its not-ready evaluations count too, as in ldclient."""
    sock = short_dir / "ev.sock"
    with FakeLD(heartbeat_interval=0.5) as fake:
        fake.set_data({"f1": value_flag("f1", 1, "v1")}, {})
        url = fake.url
        env = {"SHMFLAGS_SDK_KEY": "sdk-reliability", "SHMFLAGS_STREAM_URI": url,
               "SHMFLAGS_BASE_URI": url, "SHMFLAGS_EVENTS_URI": url,
               "SHMFLAGS_SEND_EVENTS": "true", "SHMFLAGS_SOCKET": str(sock),
               "SHMFLAGS_FLUSH_INTERVAL": "0.2", "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true",
               "SHMFLAGS_START_WAIT": "0"}
        stop, go = tmp_path / "stop", tmp_path / "go"
        (worker,) = start_workers(workers, h, 1, "events", str(stop), str(go), "0", env=env)
        wait_for(lambda: worker.events("started"), 60, 0.05)
        time.sleep(1.0)                   # flushes meet a missing socket meanwhile
        assert not sock.exists()
        h.start(env=env)
        wait_for(lambda: h.raw_flag("f1") is not None, 15)
        time.sleep(0.5)                   # the worker attaches and serves v1
        stop.write_text("")
        go.write_text("")
        result = worker.done(60)

        def counted() -> Dict[str, int]:
            out: Dict[str, int] = {}
            for p in fake.events:
                for e in p.payload:
                    if e["kind"] == "summary":
                        for c in e["features"].get("f1", {}).get("counters", []):
                            label = "unknown" if c.get("unknown") else c.get("value")
                            out[label] = out.get(label, 0) + c["count"]
            return out
        wait_for(lambda: sum(counted().values()) >= result["evaluations"], 20, 0.1)
        time.sleep(0.5)
        got = counted()
    print(f"\nmissing socket, then a supervisor: {result['evaluations']} evaluations, counted "
          f"{got}, values {result['values']}")
    assert result["values"] == ["default", "v1"], result
    assert sum(got.values()) == result["evaluations"], got
    assert got.get("unknown", 0) > 0 and got.get("v1", 0) > 0, got
