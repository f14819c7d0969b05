"""The client's C fast path with events on (native/fast.c handing results to native/events.c).

With an ``EventRecorder`` whose C core can take the call, ``Client.variation*`` evaluates and
counts in C; everything else (a first sighting, a new counter, full events, a held lock, a
pending slow check) returns ``_SLOW`` and takes the Python path. These tests check that the
datagrams are exactly those of the Python path, that counts survive threads and fork, which
cases are refused, and that nothing leaks.
"""
from __future__ import annotations

import os
import random
import sys
from typing import Any, Dict, List

import pytest

import shmflags
from shmflags.config import Config
from shmflags.context import Context
from shmflags.events import recorder as R
from shmflags.events import sender as S

from tests.unit.test_events_recorder_native import SlowCalls, Sink, untimed

native = pytest.mark.c_only   # deselected in the pure-Python pass; see tests/conftest.py
if os.environ.get("SHMFLAGS_REQUIRE_NATIVE") == "1":
    assert R.NATIVE and shmflags.evaluator_backend() == "c"

FAR = 4_000_000_000_000


def _flag(key: str, **kw: Any) -> Dict[str, Any]:
    f = {"key": key, "version": 3, "on": True, "variations": [True, False],
         "fallthrough": {"variation": 0}, "offVariation": 1, "salt": key, "rules": [],
         "targets": [], "contextTargets": [], "prerequisites": []}
    f.update(kw)
    return f


FLAGS = {f["key"]: f for f in [
    _flag("plain"),
    _flag("rule", rules=[{"id": "r1", "variation": 1, "clauses": [
        {"attribute": "key", "op": "in", "values": ["u1", "u2"], "contextKind": "user"}]}]),
    _flag("tracked", trackEvents=True),
    _flag("tracked-ft", trackEventsFallthrough=True),
    _flag("exp", fallthrough={"rollout": {"kind": "experiment", "variations": [
        {"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}}),
    _flag("pre", prerequisites=[{"key": "plain", "variation": 0}]),
    _flag("pre2", prerequisites=[{"key": "pre", "variation": 0},
                                 {"key": "rule", "variation": 0}]),
    _flag("pre-tracked", prerequisites=[{"key": "tracked", "variation": 0}]),
    _flag("off", on=False),
    _flag("off-none", on=False, offVariation=None),
    _flag("exclude", excludeFromSummaries=True, trackEvents=True),
    _flag("debug", debugEventsUntilDate=FAR),
    _flag("str", variations=["a", "b"]),
    _flag("fresh"),
    _flag("rule-tracked", rules=[{"id": "r2", "variation": 0, "trackEvents": True, "clauses": [
        {"attribute": "key", "op": "in", "values": ["u1", "u9"], "contextKind": "user"}]}]),
    _flag("sampled1", trackEvents=True, samplingRatio=1),
    _flag("excl-only", excludeFromSummaries=True),
    _flag("pre-excl", prerequisites=[{"key": "excl-only", "variation": 0}]),
    _flag("tracked-str", trackEvents=True, variations=["a", "b"]),
]}
# (a samplingRatio other than 1 draws random numbers, so two recorders' datagrams differ:
# that case is checked alone below)
KEYS = list(FLAGS) + ["missing"]


@pytest.fixture
def sink(tmp_path: Any) -> Any:
    """The supervisor's socket end: a Sink the test's recorders send to."""
    s = Sink(str(tmp_path / "s.sock"))
    yield s
    s.close()


def _client(cls: type, path: str, **kw: Any) -> Any:
    kw.setdefault("flush_interval", 3600)
    config = Config(send_events=True, socket=path, **kw)
    client = shmflags.Client.from_data({"flags": FLAGS}, config=config)
    client._recorder = cls(config)
    return client


def _primed(sink: Any) -> Any:
    """``(client, recorder, context)``: context u1 seen and flag "plain" counted once (the
    Python path), and no slow check due during the test: the next calls can take the C path."""
    client = _client(R.EventRecorder, sink.path)
    rec = client._recorder
    ctx = Context.create("u1")
    client.variation("plain", ctx, None)
    rec._deadline = rec._end + 3600
    return client, rec, ctx


def _contexts() -> List[Context]:
    users = [Context.create(f"u{i}") for i in range(5)]
    twins = [Context.create(f"u{i}") for i in range(5)]  # equal, other objects
    return users + twins + [Context.create("acme", "org"),
                            Context.create_multi(Context.create("u7"),
                                                 Context.create("acme", "org"))]


def _run(client: Any, seed: int, n: int, sink: Sink) -> List[Dict[str, Any]]:
    """Random evaluations with flushes in between; the datagrams received, in order (read
    after each flush, so the sink's queue never refuses one)."""
    got: List[Dict[str, Any]] = []
    rng = random.Random(seed)
    contexts = _contexts()
    for i in range(n):
        key = rng.choice(KEYS)
        ctx = rng.choice(contexts) if rng.random() < 0.4 else contexts[0]
        default = rng.choice([None, False, "d"])
        how = rng.random()
        if how < 0.6:
            client.variation(key, ctx, default)
        elif how < 0.75:
            client.variation_detail(key, ctx, default)
        elif how < 0.85:
            client.bool_variation(key, ctx, False)
        elif how < 0.95:
            client.string_variation(key, ctx, "s")
        else:
            client.string_variation_detail(key, ctx, "s")
        if rng.random() < 0.01:
            client.flush()
            got += sink.read()
    client.flush()
    return got + sink.read()


@native
@pytest.mark.parametrize("seed", range(6))
def test_fast_path_sends_the_python_paths_datagrams(tmp_path, seed):
    a, b = Sink(str(tmp_path / "a.sock")), Sink(str(tmp_path / "b.sock"))
    try:
        fast = _client(R.EventRecorder, a.path)
        ref = _client(R.PythonEventRecorder, b.path)
        a.sock.settimeout(0.02)
        b.sock.settimeout(0.02)
        slow = [0]
        evaluate = fast._evaluate

        def counted(*args: Any) -> Any:
            slow[0] += 1
            return evaluate(*args)
        fast._evaluate = counted
        got = untimed(_run(fast, seed, 3000, a))
        assert slow[0] < 3000 * 0.8, "most calls are counted on the fast path"
        want = untimed(_run(ref, seed, 3000, b))
        assert fast._fast.recorder is fast._recorder, "the fast path counts in the C core"
        assert ref._fast.recorder is None, "a Python recorder: the Python path only"
        assert got and got == want
        fast.close()
        ref.close()
    finally:
        a.close()
        b.close()


@native
def test_fast_path_takes_the_common_case(sink):
    client = _client(R.EventRecorder, sink.path)
    ctx = Context.create("u9")
    client.variation("plain", ctx, None)  # first sighting, first counter: Python path
    client.variation("pre2", ctx, None)
    rec = client._recorder
    rec._deadline = rec._end + 3600  # no slow check due during the test
    for key in ("plain", "pre2", "off", "off-none"):
        client.variation(key, ctx, None)
        assert client._fast_value(key, ctx, None, 0) is not client._SLOW, key
    d = client._fast_detail("fresh", ctx, None, 0)
    # a debug event, a prerequisite's full event, an unknown flag: Python path
    for key in ("debug", "pre-tracked", "missing"):
        assert client._fast_value(key, ctx, None, 0) is client._SLOW, key
    # feature events (trackEvents, experiment, rule trackEvents) and excluded flags are
    # recorded here once their counters exist: the same events as the Python path's
    before = len(rec._events)
    for key in ("tracked", "exp", "rule-tracked", "sampled1", "exclude", "excl-only",
                "pre-excl"):
        assert client._fast_value(key, ctx, None, 0) is not client._SLOW, key
    assert client._fast_detail("tracked", ctx, "dd", 0) == shmflags.EvaluationDetail(
        True, 0, {"kind": "FALLTHROUGH"})
    # typed: the caller gets the converted value, the event the evaluated one
    assert client._fast_value("tracked-str", ctx, "s", 4) == "a"
    new = rec._events[before:]
    assert [e["key"] for e in new] == ["tracked", "exp", "rule-tracked", "sampled1",
                                       "exclude", "tracked", "tracked-str"]
    # first counts of a flag in the window (a new flag, a new variation) are made here too
    assert rec._summary["tracked"][2] == {0: [2, True]}
    assert rec._summary["tracked-str"][2] == {0: [1, "a"]}
    assert "excl-only" not in rec._summary and "exclude" not in rec._summary
    assert rec._summary["fresh"][:2] == [None, {"user"}]
    assert all(e["context"] is rec._contexts[ctx.fully_qualified_key][0] for e in new)
    assert "reason" not in new[0] and new[5]["reason"] == {"kind": "FALLTHROUGH"}
    assert new[5]["default"] == "dd" and new[6]["value"] == "a"
    assert new[1]["reason"]["inExperiment"] is True
    assert new[2]["reason"] == {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "r2"}
    # a wrong type is recorded by the Python path (variation None)
    assert client._fast_value("str", ctx, None, 1) is client._SLOW
    # "fresh" was not counted yet in this window: a new flag, counted here
    assert d == shmflags.EvaluationDetail(True, 0, {"kind": "FALLTHROUGH"})
    # a new context in the window (its to_dict() is Python code): Python path
    assert client._fast_value("plain", Context.create("new"), None, 0) is client._SLOW
    # a context sighted before carries its JSON and kinds (_ev): its first sighting in
    # a later window is made here, as the Python path's
    rec._new_window()
    assert ctx._ev is not None
    assert client._fast_value("plain", ctx, None, 0) is True
    entry = rec._contexts[ctx.fully_qualified_key]
    assert entry[0] is ctx._ev[0] and entry[2:] == [1, True, ("user",), ctx]
    assert entry[1] == int(rec._end * 1000) and rec._last_entry is entry
    # ... unless the window's contexts bound would be reached (drop or flush: Python)
    rec._new_window()
    rec._capacity, capacity = 1, rec._capacity
    assert client._fast_value("plain", ctx, None, 0) is client._SLOW
    rec._capacity = capacity
    # a window whose first counted evaluation is made here gets its start here
    rec._new_window()
    client.variation("excl-only", ctx, None)   # a sighting, no count
    assert rec._start is None and rec._summary == {}
    assert client._fast_value("plain", ctx, None, 0) is True
    assert rec._start == rec._end and rec._summary["plain"][2] == {0: [1, True]}
    client.close()


@native
def test_sampled_or_buffer_filling_events_take_the_python_path(sink):
    config = Config(send_events=True, socket=sink.path, flush_interval=3600,
                     events_max_pending=4)
    flags = dict(FLAGS, sampled=_flag("sampled", trackEvents=True, samplingRatio=2))
    client = shmflags.Client.from_data({"flags": flags}, config=config)
    client._recorder = R.EventRecorder(config)
    rec = client._recorder
    ctx = Context.create("u9")
    for key in ("sampled", "tracked"):
        client.variation(key, ctx, None)
    rec._deadline = rec._end + 3600
    # samplingRatio 2 draws a random number (Python path); not even counted here
    assert client._fast_value("sampled", ctx, None, 0) is client._SLOW
    n = len(rec._events)
    assert n <= 2
    # the C path records while the buffer stays below its bound after the event ...
    while len(rec._events) + 1 < 4:
        assert client._fast_value("tracked", ctx, None, 0) is True
    # ... and leaves the event that fills it (drop or flush) to the Python path
    assert client._fast_value("tracked", ctx, None, 0) is client._SLOW
    rec._unsent_events = 1   # packed events not sent yet count against the bound too
    rec._events.pop()
    assert client._fast_value("tracked", ctx, None, 0) is client._SLOW
    rec._unsent_events = 0
    assert client._fast_value("tracked", ctx, None, 0) is True
    # a full buffer while a failed send waits for the flush thread's retry: the Python
    # path would drop the event, count it and leave the flush to that thread; so does C
    assert len(rec._events) == 3
    rec._events.append(dict(rec._events[-1]))
    assert client._fast_value("tracked", ctx, None, 0) is client._SLOW  # no retry pending
    assert rec._thread is not None
    rec._retry_at = rec._end + 3600
    # (counts are read through _summary, which folds in those the C core keeps pending)
    count, dropped, stat = rec._summary["tracked"][2][0][0], rec._dropped, rec.stats["dropped"]
    assert client._fast_value("tracked", ctx, None, 0) is True
    assert (rec._summary["tracked"][2][0][0], rec._dropped, rec.stats["dropped"]) == (
        count + 1, dropped + 1, stat + 1)
    assert len(rec._events) == 4
    ref = R.PythonEventRecorder(config)   # the reference, in the same state
    for name in ("_summary", "_contexts", "_events", "_last_ctx", "_last_entry",
                 "_thread", "_dropped", "_end"):
        setattr(ref, name, getattr(rec, name))
    ref.stats = dict(rec.stats)
    ref._retry_at, ref._deadline = rec._retry_at, rec._deadline
    ref.record_evaluation("tracked", ctx, client._current().evaluate("tracked", ctx),
                          None, False)
    assert (ref._summary["tracked"][2][0][0], ref._dropped, ref.stats["dropped"]) == (
        count + 2, dropped + 2, stat + 2)
    assert len(rec._events) == 4
    ref._new_window()   # the window is rec's: ref sends nothing of it
    ref._thread = None
    ref.close()
    rec._retry_at = None
    client.close()


@native
def test_counter_cache_follows_the_window(sink):
    """The core's counter cache never counts into a summary dict that is not the window's."""
    client, rec, ctx = _primed(sink)
    for _ in range(3):
        assert client._fast_value("plain", ctx, None, 0) is True   # cached after one
    old = rec._summary
    assert old["plain"][2] == {0: [4, True]}
    rec._summary = {}                  # replaced behind the cache's back (old kept)
    assert client._fast_value("plain", ctx, None, 0) is True
    assert old["plain"][2] == {0: [4, True]} and rec._summary["plain"][2] == {0: [1, True]}
    second = rec._summary
    rec._summary = {}                  # the cache now holds the only reference to second
    del second
    for _ in range(2):
        assert client._fast_value("plain", ctx, None, 0) is True
    assert rec._summary["plain"][2] == {0: [2, True]}
    rec._clear_caches()
    assert client._fast_value("plain", ctx, None, 0) is True
    assert rec._summary["plain"][2] == {0: [3, True]}
    rec._new_window()                  # the recorder's own window change
    client.variation("plain", ctx, None)  # a new sighting: Python path
    assert client._fast_value("plain", ctx, None, 0) is True
    assert rec._summary["plain"][2] == {0: [2, True]} and old["plain"][2] == {0: [4, True]}
    # an unsent window merged back replaces the live entry of a context: the context
    # cache must not keep counting into the replaced one
    other = Context.create("u2")
    client.variation("plain", other, None)
    assert client._fast_value("plain", ctx, None, 0) is True   # ctx cached, not last
    start, end, dropped, summary, contexts, events, seq = rec._take()
    packs, _ = S.pack_window(os.getpid(), seq, dropped, start, end, summary, contexts,
                             events)
    client.variation("plain", ctx, None)       # live entries for both ...
    client.variation("plain", other, None)
    assert client._fast_value("plain", ctx, None, 0) is True   # ... ctx's now cached
    rec._put_back(packs, start)                # then merged with the unsent ones
    fq = ctx.fully_qualified_key
    merged = rec._contexts[fq]
    assert merged[2] == 3 + 2
    client.variation("plain", other, None)     # ctx no longer the last context
    assert client._fast_value("plain", ctx, None, 0) is True
    assert rec._contexts[fq] is merged and merged[2] == 6
    client.close()


@native
def test_periodic_checks_run_first_and_the_call_is_recorded_in_c(sink, monkeypatch):
    """A call that finds ``_deadline`` passed makes the slow checks (``_checks_due``: the
    pid, the flush interval) and is then recorded by the C path, for both entry points;
    a deadline of 0 (first call, flush due now, disabled or closed) still goes to the
    Python path, and a closed recorder records nothing."""
    client, rec, ctx = _primed(sink)
    slow = SlowCalls(rec)
    pids = []
    real_pid = R._getpid
    monkeypatch.setattr(R, "_getpid", lambda: pids.append(1) or real_pid())
    t = client._current().evaluate("plain", ctx)   # the EvalTuple record_evaluation takes
    for n in range(1, 4):
        rec._deadline = 1.0                       # passed, not 0: periodic checks due
        assert client._fast_value("plain", ctx, None, 0) is True
        assert len(pids) == 2 * n - 1 and rec._deadline > R._time() - 1
        rec._deadline = 1.0
        rec.record_evaluation("plain", ctx, t, None, False)
        assert len(pids) == 2 * n
    assert slow.n == 0
    assert rec._summary["plain"][2][0][0] == 1 + 6 and rec._contexts["u1"][2] == 1 + 6
    rec._deadline = 1.0
    rec._flush_at = 0.0                           # the flush interval has passed
    rec._thread = None                            # no flush thread: the caller flushes
    assert client._fast_value("plain", ctx, None, 0) is True
    (d,) = sink.read()                            # the window before this call
    assert d["summary"][2][0][3][0][3] == 7
    assert rec._summary["plain"][2][0][0] == 1    # this call: in the new window
    rec._deadline = 0.0                           # (the first call's, or a full buffer's)
    assert client._fast_value("plain", ctx, None, 0) is client._SLOW
    rec._deadline = 1.0
    rec._enabled = False                          # disabled (or closed): not recorded
    count = rec._summary["plain"][2][0][0]
    assert client._fast_value("plain", ctx, None, 0) is client._SLOW
    rec.record_evaluation("plain", ctx, t, None, False)
    assert rec._summary["plain"][2][0][0] == count
    rec._enabled = True
    client.close()


@native
def test_held_lock_or_pending_check_takes_the_python_path(sink):
    client, rec, ctx = _primed(sink)
    assert client._fast_value("plain", ctx, None, 0) is True
    with rec._lock:
        assert client._fast_value("plain", ctx, None, 0) is client._SLOW
        assert client._fast_detail("plain", ctx, None, 0) is client._SLOW
    rec._deadline = 0.0  # a slow check (pid, flush) is due
    assert client._fast_value("plain", ctx, None, 0) is client._SLOW
    client.close()
    assert client._fast.recorder is None


@native
def test_full_buffer_goes_to_the_python_path(sink):
    client = _client(R.EventRecorder, sink.path, events_max_pending=3)
    rec = client._recorder
    a, b, c = Context.create("a"), Context.create("b"), Context.create("c")
    client.variation("plain", a, None)
    client.variation("plain", b, None)
    rec._deadline = rec._end + 3600
    assert client._fast_value("plain", b, None, 0) is True
    client.variation("plain", c, None)  # the 3rd context fills the buffer: flush due
    assert rec._deadline == 0.0
    assert client._fast_value("plain", c, None, 0) is client._SLOW
    client.variation("plain", c, None)  # the Python path flushes
    assert sink.read(), "the full buffer was flushed by the calling path"
    client.close()


def _counts(datagrams: List[Dict[str, Any]], key: str) -> int:
    total = 0
    for d in datagrams:
        for flag in (d.get("summary") or [0, 0, []])[2]:
            if flag[0] == key:
                total += sum(row[-1] for row in flag[3])
    return total


@native
def test_counts_survive_threads(sink):
    import threading
    client = _client(R.EventRecorder, sink.path)
    contexts = [Context.create(f"t{i}") for i in range(4)]
    n = 20000

    def work(ctx: Context) -> None:
        for i in range(n):
            client.variation("pre" if i % 3 else "plain", ctx, None)
            if i % 5000 == 0:
                client.flush()
    # The sink is read all along, as the supervisor reads: the flushes may send more
    # datagrams than its socket queue holds (10 by default), and a datagram the queue
    # refuses stays in the recorder, counted, until it goes; close() retries it.
    got: List[Dict[str, Any]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            got.extend(sink.read())
    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=work, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    stop.set()
    reader.join()
    got.extend(sink.read())
    pre = len(contexts) * sum(1 for i in range(n) if i % 3)
    plain = len(contexts) * n - pre
    assert _counts(got, "pre") == pre
    assert _counts(got, "plain") == plain + pre  # every "pre" counts its prerequisite


@native
def test_counts_survive_fork(sink):
    client = _client(R.EventRecorder, sink.path)
    ctx = Context.create("f")
    for _ in range(1000):
        client.variation("plain", ctx, None)
    pid = os.fork()
    if pid == 0:  # the child sends only its own evaluations
        code = 1
        try:
            for _ in range(777):
                client.variation("plain", ctx, None)
            client.flush()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = sink.read()
    assert _counts(child, "plain") == 777
    assert all(d["pid"] == pid for d in child if "pid" in d)
    client.flush()
    assert _counts(sink.read(), "plain") == 1000
    client.close()


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@native
def test_refcounts_and_rss_stable(sink):
    client = _client(R.EventRecorder, sink.path)
    ctx = Context.create("r")
    default = object()
    keys = ["plain", "pre2", "off-none", "rule"]
    for key in keys:
        client.variation(key, ctx, default)
        client.variation_detail(key, ctx, default)
    rec = client._recorder
    refs = [sys.getrefcount(o) for o in (ctx, default, rec, *keys)]
    rss = _rss_kib()
    for i in range(100_000):
        key = keys[i & 3]
        client.variation(key, ctx, default)
        if i % 7 == 0:
            client.variation_detail(key, ctx, default)
    assert [sys.getrefcount(o) for o in (ctx, default, rec, *keys)] == refs
    assert _rss_kib() - rss < 2048
    client.close()
