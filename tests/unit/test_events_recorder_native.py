"""The C common path of record_evaluation (native/events.c) against the Python path.

``EventRecorder`` (C base ``RecorderCore`` when the extension is built) and
``PythonEventRecorder`` (the Python reference) must send the same datagrams for the same
calls; counts must survive threads, flushes running meanwhile and fork.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from typing import Any, Dict, List, Tuple

import pytest

from shmflags.config import Config
from shmflags.context import Context
from shmflags.events.datagram import decode
from shmflags.events import recorder as R
from tests.unit.test_events_recorder import Sink as RecorderSink

FALLTHROUGH = {"kind": "FALLTHROUGH"}

if os.environ.get("SHMFLAGS_REQUIRE_NATIVE") == "1":
    assert R.NATIVE, "SHMFLAGS_REQUIRE_NATIVE=1 but the recorder has no C common path"
native_only = pytest.mark.skipif(not R.NATIVE, reason="C extension not built")


class Sink(RecorderSink):
    """The recorder tests' socket sink, with a shorter read timeout (these tests read often)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, timeout=0.3)


@pytest.fixture
def sinks(tmp_path):
    a, b = Sink(str(tmp_path / "a.sock")), Sink(str(tmp_path / "b.sock"))
    yield a, b
    a.close()
    b.close()


def make(cls: type, path: str, **kw: Any) -> Any:
    kw.setdefault("flush_interval", 3600)
    return cls(Config(socket=path, **kw))


class SlowCalls:
    """Counts the calls the C path hands to the Python path (instance attribute override)."""

    def __init__(self, rec: Any) -> None:
        self.n = 0
        inner = rec._record_evaluation_py

        def wrapped(*a: Any, **k: Any) -> Any:
            self.n += 1
            return inner(*a, **k)
        rec._record_evaluation_py = wrapped


def untimed(datagrams: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The datagrams with clock readings (which differ between two runs) set to 0."""
    out = []
    for d in datagrams:
        d = dict(d)
        d.pop("pid", None)
        if "summary" in d:
            d["summary"] = [0, 0, d["summary"][2]]
        if "contexts" in d:
            d["contexts"] = [[c, 0, n, idx] for c, _, n, idx in d["contexts"]]
        if "events" in d:
            d["events"] = [dict(e, creationDate=0) for e in d["events"]]
        out.append(d)
    return out


def random_calls(seed: int, n: int) -> List[Tuple[Any, ...]]:
    """A reproducible sequence of record_evaluation arguments covering the rules."""
    rng = random.Random(seed)
    users = [Context.create(f"u{i}") for i in range(6)]
    twins = [Context.create(f"u{i}") for i in range(6)]  # equal contexts, other objects
    others = [Context.create("acme", "org"),
              Context.create_multi(Context.create("u7"), Context.create("acme", "org"))]
    contexts = users + twins + others
    flags = [f"flag-{i}" for i in range(8)]
    far = 4_000_000_000_000  # debugEventsUntilDate far in the future
    calls = []
    for _ in range(n):
        key = rng.choice(flags + ["missing"])
        ctx = rng.choice(contexts) if rng.random() < 0.4 else contexts[0]
        default = rng.choice([None, False, "d", 3])
        if key == "missing":
            calls.append((key, ctx, (None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"},
                                     None, ()), default, False))
            continue
        r = rng.random()
        bits = 0 if r < 0.7 else rng.choice([1, 2, 4, 5])
        debug = far if rng.random() < 0.03 else (1 if rng.random() < 0.03 else None)
        version = 3 if rng.random() < 0.9 else rng.choice([4, 5])
        variation = rng.choice([0, 1, 1, None])
        value = None if variation is None else f"v{variation}"
        prereqs: tuple = ()
        if rng.random() < 0.1:
            prereqs = ((key, "pre-" + key, "p", 0, FALLTHROUGH,
                        (1, rng.choice([0, 0, 1, 4]), None, None)),)
        calls.append((key, ctx, (value, variation, FALLTHROUGH,
                                 (version, bits, debug, None), prereqs),
                      default, rng.random() < 0.2))
    return calls


@native_only
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_c_and_python_paths_send_the_same_datagrams(sinks, seed):
    a, b = sinks
    native = make(R.EventRecorder, a.path)
    python = make(R.PythonEventRecorder, b.path)
    assert isinstance(native, R._NativeCore) and not isinstance(python, R._NativeCore)
    slow = SlowCalls(native)
    calls = random_calls(seed, 3000)
    for i, call in enumerate(calls):
        native.record_evaluation(*call)
        python.record_evaluation(*call)
        if i % 1000 == 999:  # several flush windows
            native.flush()
            python.flush()
    native.close()
    python.close()
    got_native, got_python = a.read(), b.read()
    assert got_native and untimed(got_native) == untimed(got_python)
    # The comparison is not vacuous: about half the calls are common cases here, and they
    # took the C path (every call would reach the Python path without it).
    assert slow.n < len(calls) * 3 // 4, slow.n


@native_only
def test_c_path_counts_and_window_state(sinks):
    a, _ = sinks
    rec = make(R.EventRecorder, a.path)
    slow = SlowCalls(rec)
    u, twin = Context.create("u"), Context.create("u")
    t = ("on", 1, FALLTHROUGH, (9, 0, None, None), ())
    for _ in range(100):
        rec.record_evaluation("f", u, t, "off", False)
    rec.record_evaluation("f", twin, t, "off", False)  # same key, another object: C path
    assert slow.n <= 2  # the first call (slow checks) and the first count of "f"
    assert rec._summary["f"][2][1][0] == 101
    assert rec._contexts["u"][2] == 101
    assert rec._last_ctx is twin
    rec.flush()
    (d,) = a.read()
    assert d["summary"][2] == [["f", "off", ["user"], [[1, 9, "on", 101]]]]
    assert d["contexts"][0][2] == 101


@native_only
def test_twin_contexts_put_their_own_json_in_events_on_the_c_path(sinks):
    """Two context objects with one key but other attributes: each feature event carries
    its own context's JSON, on both paths, and after a twin's first event (which caches its
    JSON) its events take the C path too."""
    a, b = sinks
    native = make(R.EventRecorder, a.path)
    python = make(R.PythonEventRecorder, b.path)
    first = Context.builder("u").set("plan", "free").build()
    twin = Context.builder("u").set("plan", "pro").build()
    tracked = ("on", 1, FALLTHROUGH, (9, 1, None, None), ())
    native.record_evaluation("f", first, tracked, "off", False)   # slow checks, new flag
    native.record_evaluation("f", twin, tracked, "off", False)    # caches the twin's JSON
    slow = SlowCalls(native)
    for ctx in [first, twin] * 50:
        native.record_evaluation("f", ctx, tracked, "off", False)
    assert slow.n == 0
    for ctx in [first, twin] * 51:
        python.record_evaluation("f", ctx, tracked, "off", False)
    native.close()
    python.close()
    got_native, got_python = a.read(), b.read()
    assert untimed(got_native) == untimed(got_python)
    plans = [e["context"]["plan"] for d in got_native for e in d.get("events", [])]
    assert plans == ["free", "pro"] * 51


@native_only
def test_counts_kept_in_the_counter_cache_are_never_lost(sinks):
    """The C core keeps counts made through its counter cache as C integers until the
    summary is read: every read of ``_summary`` sees them, and a cache too small for the
    window's counters (slots dropped and reused) still delivers every count."""
    a, _ = sinks
    rec = make(R.EventRecorder, a.path)
    u = Context.create("u")
    keys = [f"flag-{i}" for i in range(6000)]   # more counters than the cache has slots
    t = ("on", 1, FALLTHROUGH, (9, 0, None, None), ())
    slow = SlowCalls(rec)
    for n in range(1, 4):
        for key in keys:
            rec.record_evaluation(key, u, t, "off", False)
        assert all(rec._summary[k][2][1][0] == n for k in keys[::97]), n
    assert slow.n < len(keys)   # most counts were the C path's
    rec.record_evaluation("flag-0", u, t, "off", False)
    rec._summary = dict(rec._summary)   # a window replaced: its counts are in it first
    rec.flush()
    got = a.read()
    counts = {row[0]: sum(c[3] for c in row[3]) for d in got for row in d["summary"][2]}
    assert counts == dict({k: 3 for k in keys}, **{"flag-0": 4})


@native_only
@pytest.mark.parametrize("seed", [1, 2])
def test_every_read_mid_window_sees_every_count(sinks, seed):
    """Counts and context uses kept pending in the C caches are all in every read of
    ``_summary`` and ``_contexts``, at any point of a window, however the slots are reused
    (more counters and contexts than the caches have slots, random order): each read is
    compared with counts kept here, and so is the window delivered at the end."""
    a, _ = sinks
    rec = make(R.EventRecorder, a.path, events_max_pending=100_000)
    rng = random.Random(seed)
    contexts = [Context.create(f"u{i}") for i in range(3000)]
    contexts += [Context.create_multi(Context.create(f"m{i}"), Context.create("acme", "org"))
                 for i in range(200)]
    keys = [f"flag-{i}" for i in range(5000)]
    results = [("on", 1, FALLTHROUGH, (9, 0, None, None), ()),
               ("off", 0, FALLTHROUGH, (9, 0, None, None), ())]
    counts: Dict[Tuple[str, int], int] = {}
    uses: Dict[str, int] = {}
    slow = SlowCalls(rec)
    calls = 0
    for _ in range(12):
        for _ in range(rng.choice([1, 50, 3000])):
            ctx = rng.choice(contexts)
            for _ in range(rng.choice([1, 1, 5])):   # the same context again, sometimes
                key, t = rng.choice(keys), rng.choice(results)
                rec.record_evaluation(key, ctx, t, "off", False)
                counts[key, t[1]] = counts.get((key, t[1]), 0) + 1
                fq = ctx.fully_qualified_key
                uses[fq] = uses.get(fq, 0) + 1
                calls += 1
        summary, sightings = rec._summary, rec._contexts
        assert {(k, v): c[0] for k, f in summary.items() for v, c in f[2].items()} == counts
        assert {fq: e[2] for fq, e in sightings.items()} == uses
    assert slow.n < calls // 2   # most calls were the C path's
    rec.flush()
    got = a.read()
    delivered = {(row[0], c[0]): c[3] for d in got for row in d.get("summary", [0, 0, []])[2]
                 for c in row[3]}
    assert delivered == counts
    as_json = {ctx.fully_qualified_key: json.dumps(ctx.to_dict(), sort_keys=True)
               for ctx in contexts}
    assert {json.dumps(c[0], sort_keys=True): c[2] for d in got
            for c in d.get("contexts", [])} == {as_json[fq]: n for fq, n in uses.items()}


@native_only
def test_c_path_counts_prerequisites(sinks):
    a, _ = sinks
    rec = make(R.EventRecorder, a.path)
    u = Context.create("u")
    pre = ("f", "p", "pv", 0, FALLTHROUGH, (2, 0, None, None))
    gone = ("f", "q", None, None, FALLTHROUGH, None)  # unknown prerequisite: not counted
    t = ("on", 1, FALLTHROUGH, (9, 0, None, None), (pre, gone, pre))
    rec.record_evaluation("f", u, t, "off", False)
    slow = SlowCalls(rec)
    for _ in range(10):
        rec.record_evaluation("f", u, t, "off", False)
    tracked = ("f", "p", "pv", 0, FALLTHROUGH, (2, 1, None, None))  # needs a feature event
    rec.record_evaluation("f", u, t[:4] + ((tracked,),), "off", False)
    assert slow.n == 1
    assert rec._summary["f"][2][1][0] == 12
    assert rec._summary["p"][2][0][0] == 2 * 11 + 1
    assert rec._contexts["u"][2] == 11 * 3 + 2
    assert len(rec._events) == 1 and rec._events[0]["prereqOf"] == "f"


def _counted_twice(path: str) -> Tuple[Any, Context, tuple]:
    """A recorder that has counted flag "f" twice for context "u" (the second time on the C
    path), the context, and the evaluation tuple used."""
    rec = make(R.EventRecorder, path)
    u = Context.create("u")
    t = ("on", 1, FALLTHROUGH, (9, 0, None, None), ())
    rec.record_evaluation("f", u, t, "off", False)
    rec.record_evaluation("f", u, t, "off", False)
    return rec, u, t


@native_only
def test_c_path_leaves_locked_windows_to_the_python_path(sinks):
    rec, u, t = _counted_twice(sinks[0].path)
    slow = SlowCalls(rec)
    done = threading.Event()
    with rec._lock:  # another thread inside a locked section: the call must wait for it
        th = threading.Thread(target=lambda: (rec.record_evaluation("f", u, t, "off", False),
                                              done.set()))
        th.start()
        assert not done.wait(0.2)
        assert rec._summary["f"][2][1][0] == 2
    th.join(5)
    assert done.is_set() and slow.n == 1 and rec._summary["f"][2][1][0] == 3


@native_only
def test_c_path_asks_any_lock_whether_it_is_held(sinks):
    """threading.Lock's locked() is called directly; a lock of another kind (here one whose
    locked() is Python code) is asked through a normal call: both are obeyed."""
    rec, u, t = _counted_twice(sinks[0].path)

    class Reported:
        """A lock that reports itself held without being so (locked() is Python code)."""

        def __init__(self) -> None:
            self.inner = threading.Lock()
            self.asked = 0

        def locked(self) -> bool:
            self.asked += 1
            return True

        def acquire(self, *a: Any) -> bool:
            return self.inner.acquire(*a)

        def release(self) -> None:
            self.inner.release()

        __enter__ = acquire

        def __exit__(self, *exc: Any) -> None:
            self.release()

    lock = rec._lock = Reported()
    slow = SlowCalls(rec)
    rec.record_evaluation("f", u, t, "off", False)
    assert lock.asked == 1 and slow.n == 1   # held, as it says: the Python path counted
    rec._lock = threading.Lock()
    rec.record_evaluation("f", u, t, "off", False)
    assert slow.n == 1 and rec._summary["f"][2][1][0] == 4


@pytest.mark.parametrize("cls", ["EventRecorder", "PythonEventRecorder"])
def test_threads_and_concurrent_flushes_lose_no_counts(tmp_path, cls):
    sink = Sink(str(tmp_path / "t.sock"))
    rec = make(getattr(R, cls), sink.path)
    got: List[Dict[str, Any]] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            got.extend(sink.read())

    contexts = [Context.create(f"c{i}") for i in range(5)]
    t = ("on", 0, FALLTHROUGH, (1, 0, None, None), ())
    n_threads, per = 4, 50000

    def work(i: int) -> None:
        for j in range(per):
            rec.record_evaluation(f"f{j % 3}", contexts[(i + j) % 5], t, "off", False)

    def flusher() -> None:
        while not stop.is_set():
            rec.flush()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    try:
        reader = threading.Thread(target=drain)
        reader.start()
        fl = threading.Thread(target=flusher)
        fl.start()
        workers = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        fl.join()
        rec.close()
        reader.join()
    finally:
        sys.setswitchinterval(old)
    got.extend(sink.read())
    sink.close()
    assert len(got) >= 2  # the flusher really ran during the work
    counted = sum(row[3] for d in got if "summary" in d for f in d["summary"][2] for row in f[3])
    uses = sum(c[2] for d in got for c in d.get("contexts", ()))
    assert counted == n_threads * per
    assert uses == n_threads * per


@pytest.mark.parametrize("cls", ["EventRecorder", "PythonEventRecorder"])
def test_counts_survive_fork(tmp_path, cls):
    sink = Sink(str(tmp_path / "f.sock"))
    rec = make(getattr(R, cls), sink.path)
    u = Context.create("u")
    t = ("on", 0, FALLTHROUGH, (1, 0, None, None), ())
    for _ in range(500):
        rec.record_evaluation("f", u, t, "off", False)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for _ in range(300):  # the child's own counts, from an empty window
                rec.record_evaluation("f", u, t, "off", False)
            rec.close()
            code = 0
        finally:
            os._exit(code)
    for _ in range(200):
        rec.record_evaluation("f", u, t, "off", False)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rec.flush()
    got = sink.read()
    sink.close()
    by_pid: Dict[int, int] = {}
    for d in got:
        for f in d.get("summary", (0, 0, ()))[2]:
            by_pid[d["pid"]] = by_pid.get(d["pid"], 0) + sum(row[3] for row in f[3])
    assert by_pid == {pid: 300, os.getpid(): 700}


def test_python_fallback_without_the_extension(tmp_path):
    """With shmflags._native unimportable, EventRecorder is the Python recorder and works."""
    sink = Sink(str(tmp_path / "p.sock"))
    code = (
        "import sys; sys.modules['shmflags._native'] = None\n"
        "from shmflags.config import Config\n"
        "from shmflags.context import Context\n"
        "from shmflags.events import recorder as R\n"
        "assert not R.NATIVE and R.EventRecorder is R.PythonEventRecorder\n"
        f"rec = R.EventRecorder(Config(socket={sink.path!r}, flush_interval=3600))\n"
        "u = Context.create('u')\n"
        "for _ in range(50):\n"
        "    rec.record_evaluation('f', u, ('on', 0, {'kind': 'OFF'}, (2, 0, None, None), ()),"
        " 'off', False)\n"
        "rec.close()\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHMFLAGS_REQUIRE_NATIVE", "SHMFLAGS_EVALUATOR")}
    env["SHMFLAGS_EVALUATOR"] = "python"  # the evaluator must not need the extension either
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    got = sink.read()
    sink.close()
    assert [d["summary"][2] for d in got] == [[["f", "off", ["user"], [[0, 2, "on", 50]]]]]


@pytest.mark.parametrize("cls", ["EventRecorder", "PythonEventRecorder"])
def test_full_buffer_is_not_repacked_on_every_call_while_the_supervisor_is_away(
        tmp_path, monkeypatch, cls):
    packs = []
    real = R.pack_window
    monkeypatch.setattr(R, "pack_window", lambda *a: packs.append(1) or real(*a))
    rec = make(getattr(R, cls), str(tmp_path / "away.sock"), events_max_pending=20)
    u = Context.create("u")
    tracked = ("on", 0, FALLTHROUGH, (1, 1, None, None), ())
    for _ in range(20):  # fills the buffer: one flush, which fails (no socket)
        rec.record_evaluation("t", u, tracked, "off", False)
    assert len(packs) == 1 and rec._retry_at is not None
    for _ in range(500):  # the daemon thread retries on its back-off, not every call
        rec.record_evaluation("t", u, tracked, "off", False)
    assert len(packs) < 20
    assert rec._summary["t"][2][0][0] == 520  # nothing counted is lost
    assert len(rec._events) == 20 and rec.stats["dropped"] >= 480
    rec._closed = True  # nothing to deliver at exit


def test_events_sharing_a_context_encode_exactly_as_msgpack_packb():
    """pack_window encodes each context dict once and splices it: the same bytes as before."""
    import msgpack

    from shmflags.events import sender
    from shmflags.events.datagram import DatagramError, check_event

    rng = random.Random(7)
    good = [Context.create(f"u{i}").to_dict() for i in range(3)] + [
        {"kind": "user", "key": "x", "nested": {"a": [1, 2.5, None]}}]
    bad = [{"kind": "user", "key": "nan", "score": float("nan")}, {}]
    events = []
    for i in range(400):
        ctx = rng.choice(good + bad if rng.random() < 0.1 else good)
        e: Dict[str, Any] = {"kind": "feature", "creationDate": i, "key": f"f{i % 5}",
                             "value": rng.choice([True, "v", 2 ** 70, {"x": 1}]),
                             "default": None, "version": 3}
        if rng.random() < 0.5:
            e["variation"] = 1
        if rng.random() < 0.2:
            e["reason"] = {"kind": "OFF"}
        e["context"] = ctx
        if rng.random() < 0.1:  # context not last: the general path
            e = {"context": ctx, **{k: v for k, v in e.items() if k != "context"}}
        events.append(e)
    expected, refused = [], 0
    for e in events:
        try:
            check_event(e)
            expected.append(msgpack.packb(e, use_bin_type=True))
        except (DatagramError, OverflowError):
            refused += 1
    packets, unsendable = sender.pack_window(1, 0, 0, 0, 0, {}, {}, events)
    assert unsendable == refused > 0
    got = []
    for p in packets:
        d = decode(p.data)
        got += [msgpack.packb(e, use_bin_type=True) for e in d["events"]]
    assert got == expected
    # and the spliced bytes are what goes on the wire
    wire = b"".join(p.data for p in packets)
    assert all(x in wire for x in expected[:20])


@pytest.mark.parametrize("cls", ["EventRecorder", "PythonEventRecorder"])
def test_datagrams_refused_by_a_full_queue_are_sent_later_without_repacking(
        tmp_path, monkeypatch, cls):
    packs = []
    real = R.pack_window
    monkeypatch.setattr(R, "pack_window", lambda *a: packs.append(1) or real(*a))
    sink = Sink(str(tmp_path / "q.sock"))
    rec = make(getattr(R, cls), sink.path, events_max_pending=5000)
    big = Context.builder("u").set("blob", "x" * 2000).build()  # ~1/30 datagram per event
    tracked = ("on", 0, FALLTHROUGH, (1, 1, None, None), ())
    n = 1500  # ~50 datagrams: more than the socket queue takes without a reader
    for _ in range(n):
        rec.record_evaluation("t", big, tracked, "off", False)
    rec.flush()
    assert len(packs) == 1 and rec._unsent and rec._unsent_events > 0  # queue full
    for _ in range(100):  # recorded while the supervisor is behind: kept in the live window
        rec.record_evaluation("t", big, tracked, "off", False)
    rec.flush()
    assert len(packs) == 1 and rec._summary["t"][2][0][0] == 100
    got: List[Dict[str, Any]] = []
    for _ in range(200):  # the supervisor catches up; each flush sends what fits
        got.extend(sink.read())
        rec.flush()
        if not rec._unsent and not rec._summary:
            break
    got.extend(sink.read())
    sink.close()
    assert not rec._unsent and rec._unsent_events == 0
    assert len(packs) == 2  # the first window packed once, then the one recorded meanwhile
    assert sum(len(d.get("events", ())) for d in got) == n + 100
    assert sum(row[3] for d in got if "summary" in d for f in d["summary"][2]
               for row in f[3]) == n + 100
    assert sorted(d["seq"] for d in got) == list(range(len(got)))
    rec._closed = True
