"""Worker side: EventRecorder counting, full-event rules, buffering, splitting, socket trouble, fork."""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Dict, List

import pytest

from shmflags.config import Config
from shmflags.context import Context
from shmflags.events.datagram import MAX_DATAGRAM, decode
from shmflags.events.recorder import EventRecorder

FALLTHROUGH = {"kind": "FALLTHROUGH"}


class Sink:
    """A bound datagram socket standing in for the supervisor."""

    def __init__(self, path: str, timeout: float = 0.5) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(timeout)

    def read(self) -> List[Dict[str, Any]]:
        out = []
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM + 1)
            except socket.timeout:
                return out
            assert len(data) <= MAX_DATAGRAM
            out.append(decode(data))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink(tmp_path):
    s = Sink(str(tmp_path / "ev.sock"))
    yield s
    s.close()


def recorder(path: str, **kw: Any) -> EventRecorder:
    kw.setdefault("flush_interval", 3600)
    return EventRecorder(Config(socket=path, **kw))


def summary_of(datagrams: List[Dict[str, Any]]) -> Dict[str, Any]:
    """flag → {"default", "kinds", "counters": {(variation, version): (value, count)}}."""
    out: Dict[str, Any] = {}
    for d in datagrams:
        if "summary" not in d:
            continue
        for key, default, kinds, counters in d["summary"][2]:
            f = out.setdefault(key, {"default": default, "kinds": set(), "counters": {}})
            f["kinds"].update(kinds)
            for variation, version, value, count in counters:
                old = f["counters"].get((variation, version), (value, 0))
                f["counters"][(variation, version)] = (old[0], old[1] + count)
    return out


def events_of(datagrams: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [e for d in datagrams for e in d.get("events", ())]


def info(version: int = 1, bits: int = 0, debug: Any = None, sampling: Any = None) -> tuple:
    return (version, bits, debug, sampling)


U1 = Context.builder("u1").name("One").build()
ORG = Context.create("acme", "org")
MULTI = Context.create_multi(Context.create("u2"), ORG)


def test_summary_counts_defaults_kinds_and_unknown(sink):
    rec = recorder(sink.path)
    for _ in range(3):
        rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(5), ()), False, False)
    rec.record_evaluation("f", MULTI, (False, 0, FALLTHROUGH, info(5), ()), "other", False)
    rec.record_evaluation("f", U1, (None, None, {"kind": "OFF"}, info(5), ()), "dflt", False)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(6), ()), False, False)
    rec.record_evaluation("nope", ORG, (None, None, {"kind": "ERROR"}, None, ()), 7, False)
    rec.flush()
    s = summary_of(sink.read())
    assert s["f"]["default"] is False
    assert s["f"]["kinds"] == {"user", "org"}
    assert s["f"]["counters"] == {(1, 5): (True, 3), (0, 5): (False, 1), (None, 5): ("dflt", 1),
                                  (1, 6): (True, 1)}
    assert s["nope"] == {"default": 7, "kinds": {"org"}, "counters": {(None, None): (7, 1)}}


def test_untracked_flag_gives_no_full_event_but_a_context_sighting(sink):
    rec = recorder(sink.path)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    rec.flush()
    got = sink.read()
    assert events_of(got) == []
    contexts = [c for d in got for c in d.get("contexts", ())]
    assert len(contexts) == 1
    ctx, first, count, index = contexts[0]
    assert ctx == U1.to_dict() and count == 2 and index is True


def test_full_event_rules(sink):
    rec = recorder(sink.path)
    now = int(time.time() * 1000)
    rec.record_evaluation("tracked", U1, (True, 1, FALLTHROUGH, info(3, 1), ()), False, False)
    rec.record_evaluation("detail", U1, (True, 1, FALLTHROUGH, info(3, 1), ()), False, True)
    rec.record_evaluation("exp", U1, (True, 1, FALLTHROUGH, info(3, 2), ()), False, False)
    rec.record_evaluation("dbg", U1, (True, 1, FALLTHROUGH, info(3, 0, now + 60000), ()),
                          False, False)
    rec.record_evaluation("old", U1, (True, 1, FALLTHROUGH, info(3, 0, now - 60000), ()),
                          False, False)
    rec.record_evaluation("never", U1, (True, 1, FALLTHROUGH, info(3, 1, None, 0), ()),
                          False, False)
    rec.record_evaluation("excl", U1, (True, 1, FALLTHROUGH, info(3, 1 | 4), ()), False, False)
    rec.flush()
    got = sink.read()
    events = {(e["kind"], e["key"]): e for e in events_of(got)}
    assert set(events) == {("feature", "tracked"), ("feature", "detail"), ("feature", "exp"),
                           ("debug", "dbg"), ("feature", "excl")}
    assert "reason" not in events[("feature", "tracked")]
    assert events[("feature", "detail")]["reason"] == FALLTHROUGH
    assert events[("feature", "exp")]["reason"] == FALLTHROUGH
    assert events[("debug", "dbg")]["debugUntil"] == now + 60000
    assert events[("feature", "tracked")]["context"] == U1.to_dict()
    assert events[("feature", "tracked")]["version"] == 3
    assert "excl" not in summary_of(got)


def test_prerequisites_are_counted_and_tracked_ones_become_events(sink):
    rec = recorder(sink.path)
    prereqs = (("parent", "p1", "x", 0, FALLTHROUGH, info(9, 1)),
               ("parent", "p2", None, None, {"kind": "OFF"}, info(4, 0)))
    rec.record_evaluation("parent", U1, (True, 1, FALLTHROUGH, info(2), prereqs), False, False)
    rec.flush()
    got = sink.read()
    s = summary_of(got)
    assert s["p1"] == {"default": None, "kinds": {"user"}, "counters": {(0, 9): ("x", 1)}}
    assert s["p2"]["counters"] == {(None, 4): (None, 1)}
    assert s["parent"]["counters"] == {(1, 2): (True, 1)}
    (event,) = events_of(got)
    assert event["key"] == "p1" and event["prereqOf"] == "parent" and event["default"] is None
    contexts = [c for d in got for c in d.get("contexts", ())]
    assert contexts[0][2] == 3  # the evaluation and both prerequisite events


def test_custom_identify_and_migration(sink):
    rec = recorder(sink.path)
    rec.record_custom("buy", U1)
    rec.record_custom("buy", U1, {"sku": 1}, 2.5)
    rec.record_identify(ORG)
    rec.record_identify(Context.from_dict({"key": ""}))  # old user format, empty key: no event
    rec.record_migration_op({"kind": "migration_op", "creationDate": 5, "operation": "read",
                             "context": U1.to_dict(),
                             "evaluation": {"key": "m", "value": "off", "default": "off"},
                             "measurements": [{"key": "invoked", "values": {"old": True}}]})
    rec.flush()
    got = sink.read()
    events = events_of(got)
    assert [e["kind"] for e in events] == ["custom", "custom", "identify", "migration_op"]
    assert "data" not in events[0] and "metricValue" not in events[0]
    assert events[1]["data"] == {"sku": 1} and events[1]["metricValue"] == 2.5
    assert events[2]["context"] == ORG.to_dict()
    contexts = {c[0]["key"]: c for d in got for c in d.get("contexts", ())}
    assert contexts["acme"][3] is False  # identify first: primes the LRU, no index wanted
    assert contexts["u1"][3] is True and contexts["u1"][2] == 3


def test_missing_socket_keeps_the_summary_for_the_next_try(tmp_path):
    path = str(tmp_path / "later.sock")
    rec = recorder(path)
    for _ in range(5):
        rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    rec.flush()
    assert rec.stats["send_failures"] >= 1
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    sink = Sink(path)
    try:
        rec.flush()
        got = sink.read()
    finally:
        sink.close()
    assert summary_of(got)["f"]["counters"] == {(1, 1): (True, 6)}
    contexts = [c for d in got for c in d.get("contexts", ())]
    assert len(contexts) == 1 and contexts[0][2] == 6


def test_buffer_overflow_drops_full_events_counts_them_and_keeps_summaries(tmp_path):
    path = str(tmp_path / "none.sock")
    rec = recorder(path, events_max_pending=10)
    for _ in range(25):
        rec.record_evaluation("t", U1, (True, 1, FALLTHROUGH, info(1, 1), ()), False, False)
    assert rec.stats["dropped"] == 15
    sink = Sink(path)
    try:
        rec.flush()
        got = sink.read()
    finally:
        sink.close()
    assert len(events_of(got)) == 10
    assert sum(d.get("dropped", 0) for d in got) == 15
    assert summary_of(got)["t"]["counters"] == {(1, 1): (True, 25)}


def test_large_windows_are_split_into_valid_datagrams(sink):
    rec = recorder(sink.path, events_max_pending=100000)
    blob = "x" * 2000
    for i in range(300):
        ctx = Context.builder(f"user-{i}").set("blob", blob).build()
        rec.record_evaluation(f"flag-{i % 50}", ctx, (i, 0, FALLTHROUGH, info(1, 1), ()), 0, False)
    rec.flush()
    got = sink.read()
    assert len(got) > 10  # each context is ~2 KB and goes twice (sighting + event)
    seqs = [d["seq"] for d in got]
    assert seqs == sorted(set(seqs))  # increasing; a retried window gets new numbers
    assert len(events_of(got)) == 300
    assert sum(len(d.get("contexts", ())) for d in got) == 300
    s = summary_of(got)
    assert sum(c[1] for f in s.values() for c in f["counters"].values()) == 300


def test_unencodable_data_is_dropped_and_counted(sink):
    rec = recorder(sink.path)
    rec.record_custom("bad", U1, {"when": object()})
    rec.record_custom("good", U1, {"n": 1})
    rec.flush()
    got = sink.read()
    assert [e["key"] for e in events_of(got)] == ["good"]
    assert rec.stats["dropped"] == 1
    rec.flush()  # the loss is reported to the supervisor with the next datagram
    assert sum(d.get("dropped", 0) for d in sink.read()) == 1


def test_flush_interval_checked_on_calls(sink):
    rec = recorder(sink.path, flush_interval=0.05)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    got: List[Dict[str, Any]] = []
    deadline = time.time() + 5
    while not got and time.time() < deadline:  # the daemon thread flushes an idle worker
        got = sink.read()
    assert summary_of(got)["f"]["counters"] == {(1, 1): (True, 1)}


def test_send_events_false_records_nothing(sink):
    rec = recorder(sink.path, send_events=False)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(1, 1), ()), False, False)
    rec.record_custom("c", U1)
    rec.flush()
    rec.close()
    assert sink.read() == []


def test_forked_child_starts_empty_and_parent_keeps_its_data(sink):
    rec = recorder(sink.path)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            rec.record_evaluation("child", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
            rec.close()
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = sink.read()
    assert set(summary_of(child)) == {"child"}
    assert all(d["pid"] == pid for d in child)
    rec.flush()
    parent = sink.read()
    assert set(summary_of(parent)) == {"f"}
    assert all(d["pid"] == os.getpid() for d in parent)


def test_pid_change_without_fork_hook_resets(sink):
    rec = recorder(sink.path)
    rec.record_evaluation("f", U1, (True, 1, FALLTHROUGH, info(), ()), False, False)
    rec._pid = 1  # as if this process were a child forked without the at-fork hook
    rec.record_evaluation("g", ORG, (True, 1, FALLTHROUGH, info(1, 1), ()), False, False)
    rec.flush()  # detects the new pid: the inherited window ("f") is never sent
    assert sink.read() == []
    rec.record_evaluation("h", ORG, (True, 1, FALLTHROUGH, info(1, 1), ()), False, False)
    rec.flush()
    got = sink.read()
    assert set(summary_of(got)) == {"h"} and all(d["pid"] == os.getpid() for d in got)


def test_many_distinct_contexts_trigger_a_flush(sink):
    rec = recorder(sink.path, events_max_pending=50)
    for i in range(120):
        rec.record_evaluation("f", Context.create(f"c{i}"), (True, 1, FALLTHROUGH, info(), ()),
                              False, False)
    got = sink.read()  # no flush() call: the window flushed itself when full
    assert sum(len(d.get("contexts", ())) for d in got) >= 100
    assert rec.stats["dropped"] == 0


def test_buffer_stays_bounded_while_the_supervisor_is_away(tmp_path):
    rec = recorder(str(tmp_path / "away.sock"), events_max_pending=20)
    for round_ in range(5):
        for i in range(30):
            ctx = Context.create(f"r{round_}-c{i}")
            rec.record_evaluation("t", ctx, (True, 1, FALLTHROUGH, info(1, 1), ()), False, False)
        rec.flush()
    assert len(rec._contexts) <= 20 and len(rec._events) <= 20
    assert rec.stats["dropped"] > 0
    assert rec._summary["t"][2][1][0] == 150  # every evaluation still counted


def test_sampling_ratio_keeps_one_in_n_with_a_fresh_rng_per_process(sink):
    rec = recorder(sink.path, events_max_pending=100000)
    # the parent samples first, so an RNG inherited across fork would repeat its stream
    rec.record_evaluation("warm", U1, (True, 1, FALLTHROUGH, info(1, 1, None, 2), ()), False, False)
    patterns = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for i in range(64):
                    rec.record_evaluation("s", U1, (i, 0, FALLTHROUGH, info(1, 1, None, 2), ()),
                                          False, False)
                rec.close()
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        got = sink.read()
        assert sum(c[1] for c in summary_of(got)["s"]["counters"].values()) == 64
        patterns.append(sorted(e["value"] for e in events_of(got) if e["key"] == "s"))
    # 1 in 2 kept: 64 draws land in [10, 54] with overwhelming probability
    assert all(10 <= len(p) <= 54 for p in patterns)
    assert patterns[0] != patterns[1]
    for _ in range(2000):
        rec.record_evaluation("s", U1, (True, 1, FALLTHROUGH, info(1, 1, None, 4), ()), False, False)
    rec.flush()
    kept = len([e for e in events_of(sink.read()) if e["key"] == "s"])
    assert 350 <= kept <= 650


def test_a_datagram_the_kernel_refuses_as_too_big_is_dropped_not_retried(sink, monkeypatch):
    from shmflags.events import sender as sender_mod

    rec = recorder(sink.path)
    real_send = rec._sender.send
    calls = []

    def send(data: bytes) -> int:
        calls.append(len(data))
        return sender_mod.SEND_TOO_BIG if len(calls) == 1 else real_send(data)

    monkeypatch.setattr(rec._sender, "send", send)
    rec.record_custom("c", U1)
    rec.flush()
    assert sink.read() == [] and rec.stats["dropped"] == 2  # the event and the sighting
    rec.record_custom("d", U1)
    rec.flush()
    got = sink.read()
    assert [e["key"] for e in events_of(got)] == ["d"]
    assert got[0]["dropped"] == 2


def test_non_finite_numbers_are_dropped_at_the_worker(sink):
    rec = recorder(sink.path)
    rec.record_custom("nan", U1, {"x": float("nan")})
    rec.record_custom("inf", U1, None, float("inf"))
    rec.record_custom("ok", U1, {"x": 1.5}, 2.0)
    rec.flush()
    got = sink.read()  # decode() in Sink.read rejects NaN, so this also checks the datagrams
    assert [e["key"] for e in events_of(got)] == ["ok"]
    assert rec.stats["dropped"] == 2


def test_items_the_schema_refuses_are_dropped_alone(sink):
    rec = recorder(sink.path)
    rec.record_custom("", U1)                                                  # empty key
    rec.record_evaluation("", U1, (True, 1, FALLTHROUGH, info(1, 1), ()), False, False)
    rec.record_evaluation("f", U1, (True, 1, None, info(1, 1), ()), False, True)  # no reason
    rec.record_custom("ok", U1)
    rec.flush()
    got = sink.read()
    assert sorted(e["key"] for e in events_of(got)) == ["f", "ok"]
    assert "reason" not in [e for e in events_of(got) if e["key"] == "f"][0]
    assert set(summary_of(got)) == {"f"}
    assert rec.stats["dropped"] == 3  # the custom event, the feature event, the summary item
