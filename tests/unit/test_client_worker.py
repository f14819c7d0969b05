"""The worker Client over shared memory, with shm.Publisher + SnapshotBuilder as the supervisor."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from shmflags import Client, Config, Context, TestData, shm
from shmflags.client.status import DataSourceState
from shmflags.evaluation.detail import EvaluationDetail
from shmflags.snapshot.builder import SnapshotBuilder

USER = Context.create("user-1")
NOT_READY = {"kind": "ERROR", "errorKind": "CLIENT_NOT_READY"}


def _flag(key: str, value: Any, version: int = 1, **extra: Any) -> Dict[str, Any]:
    flag = {"key": key, "version": version, "on": True, "variations": [value, "off"],
            "fallthrough": {"variation": 0}, "offVariation": 1}
    flag.update(extra)
    return flag


class Supervisor:
    """Just enough of a supervisor: a Publisher and an incremental builder."""

    def __init__(self, name: str) -> None:
        self.pub = shm.Publisher(name, grace=0.5)
        self.builder = SnapshotBuilder()
        self.pub.set_status("VALID")
        self.pub.heartbeat()

    def publish(self, flags: Dict[str, dict], segments: Dict[str, dict] = None) -> int:
        gen = self.pub.publish(self.builder.build(flags, segments or {}))
        self.pub.reap()
        return gen

    def close(self) -> None:
        self.pub.close()


@pytest.fixture
def name(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    ns = f"t-cli-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("SHMFLAGS_NAME", ns)
    yield ns
    shm.cleanup(ns)


def _config(name: str, **kw: Any) -> Config:
    kw.setdefault("send_events", False)
    return Config(name=name, environ={}, **kw)


def _wait(predicate: Any, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def test_no_supervisor_defaults_then_values_within_half_a_second(name: str) -> None:
    started = time.monotonic()
    client = Client(_config(name, start_wait=5))
    assert time.monotonic() - started < 0.5, "no supervisor at all: the constructor must not wait"
    assert not client.is_initialized()
    assert client.variation("f", USER, "dflt") == "dflt"
    assert client.variation_detail("f", USER, "dflt") == EvaluationDetail("dflt", None, NOT_READY)
    assert client.bool_variation_detail("f", USER, True).reason == NOT_READY
    assert not client.all_flags_state(USER).valid
    assert client.data_source_status_provider.status.state == DataSourceState.INITIALIZING
    sup = Supervisor(name)
    try:
        sup.publish({"f": _flag("f", "live")})
        published = time.monotonic()
        assert _wait(lambda: client.variation("f", USER, "dflt") == "live", 2.0)
        assert time.monotonic() - published < 0.5
        assert client.is_initialized()
        assert client.all_flags_state(USER).to_values_map() == {"f": "live"}
    finally:
        sup.close()
        client.close()


def test_constructor_waits_for_a_starting_supervisor(name: str) -> None:
    sup = Supervisor(name)
    try:
        timer = threading.Timer(0.3, lambda: sup.publish({"f": _flag("f", 1)}))
        timer.start()
        started = time.monotonic()
        client = Client(_config(name, start_wait=5))
        waited = time.monotonic() - started
        timer.join()
        assert 0.2 < waited < 2.0, waited
        assert client.is_initialized() and client.int_variation("f", USER, 0) == 1
        client.close()
    finally:
        sup.close()


def test_supervisor_gone_keeps_serving_and_turns_interrupted(name: str) -> None:
    sup = Supervisor(name)
    statuses: List[Any] = []
    try:
        sup.publish({"f": _flag("f", "kept")})
        client = Client(_config(name, heartbeat_timeout=0.4))
        client.data_source_status_provider.add_listener(statuses.append)
        assert client.data_source_status_provider.status.state == DataSourceState.VALID
        # the "supervisor" stops: no more heartbeats, nothing unlinked
        assert _wait(lambda: client.data_source_status_provider.status.state
                     == DataSourceState.INTERRUPTED, 2.0)
        assert client.variation("f", USER, "dflt") == "kept"
        assert _wait(lambda: [s.state for s in statuses] == [DataSourceState.INTERRUPTED], 1.0)
        time.sleep(0.3)
        assert len(statuses) == 1, "one notification per change, not one per poll"
        sup.pub.heartbeat()
        assert _wait(lambda: len(statuses) == 2 and statuses[-1].state == DataSourceState.VALID)
        client.close()
    finally:
        sup.close()


def test_typed_variations_and_wrong_type(name: str) -> None:
    sup = Supervisor(name)
    try:
        sup.publish({"s": _flag("s", "text"), "n": _flag("n", 2.5), "b": _flag("b", True)})
        client = Client(_config(name))
        assert client.string_variation("s", USER, "d") == "text"
        assert client.int_variation("n", USER, 0) == 2
        assert client.float_variation("n", USER, 0.0) == 2.5
        assert client.bool_variation("b", USER, False) is True
        wrong = client.bool_variation_detail("s", USER, False)
        assert wrong == EvaluationDetail(False, None, {"kind": "ERROR", "errorKind": "WRONG_TYPE"})
        assert client.json_variation("s", USER, None) == "text"
        client.close()
    finally:
        sup.close()


def test_secure_mode_hash_vectors() -> None:
    client = Client.from_data({"flags": {}}, config=Config(sdk_key="sdk-example-key",
                                                           send_events=False, environ={}))
    assert client.secure_mode_hash(Context.create("user-key-123")) == \
        "90b385992497c1189cbbe944fe7b3644bd0da3e3a314c22e57e983ed9645dbe3"
    assert client.secure_mode_hash(Context.create("acme:eu", "org")) == \
        "43bcad4973efd1d7dd01f689d676b7c08f7a3b0c9a97416745a9a9bc3e57d44b"
    assert client.secure_mode_hash(Context.create("")) == ""
    assert client.get_sdk_key() == "sdk-example-key"


class FakeRecorder:
    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def record_evaluation(self, key: str, context: Any, result: tuple, default: Any,
                          with_reason: bool) -> None:
        self.calls.append(("eval", key, context.key, result[:3], default, with_reason))

    def record_custom(self, key: str, context: Any, data: Any, metric: Any) -> None:
        self.calls.append(("custom", key, context.key, data, metric))

    def record_identify(self, context: Any) -> None:
        self.calls.append(("identify", context.key))

    def record_migration_op(self, event: dict) -> None:
        self.calls.append(("migration", event["operation"], event["evaluation"]["value"]))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def close(self) -> None:
        self.calls.append(("close",))


def test_events_go_to_the_recorder(name: str) -> None:
    rec = FakeRecorder()
    client = Client(_config(name), recorder=rec)
    client.variation("f", USER, "d")  # no snapshot: counted as CLIENT_NOT_READY
    client.variation("f", Context.create(""), "d")  # invalid context: no event
    sup = Supervisor(name)
    try:
        sup.publish({"f": _flag("f", "v"), "n": _flag("n", 3)})
        assert _wait(lambda: client.is_initialized())
        client.variation_detail("f", USER, "d")
        client.string_variation("n", USER, "d")  # wrong type: the event carries the default
        client.track("purchase", USER, {"sku": 1}, 2.5)
        client.track("purchase", Context.create(""))
        client.identify(USER)
        client.flush()
        client.close()
    finally:
        sup.close()
    assert rec.calls == [
        ("eval", "f", "user-1", (None, None, NOT_READY), "d", False),
        ("eval", "f", "user-1", ("v", 0, {"kind": "FALLTHROUGH"}), "d", True),
        ("eval", "n", "user-1", (None, None, {"kind": "ERROR", "errorKind": "WRONG_TYPE"}), "d",
         False),
        ("custom", "purchase", "user-1", {"sku": 1}, 2.5),
        ("identify", "user-1"),
        ("flush",),
        ("close",),
    ]


def test_hooks_from_config_and_add_hook() -> None:
    seen: List[Tuple[str, str]] = []

    class H:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @property
        def metadata(self) -> Any:
            return type("M", (), {"name": self.tag})()

        def before_evaluation(self, series: Any, data: dict) -> dict:
            seen.append((self.tag, series.method))
            return data

        def after_evaluation(self, series: Any, data: dict, detail: Any) -> dict:
            return data

    td = TestData()
    td.update(td.flag("f"))
    client = Client.from_test_data(td, config=Config(hooks=[H("cfg")], send_events=False,
                                                     environ={}))
    client.add_hook(H("added"))
    client.bool_variation("f", USER, False)
    client.variation_detail("f", USER, False)
    assert seen == [("cfg", "bool_variation"), ("added", "bool_variation"),
                    ("cfg", "variation_detail"), ("added", "variation_detail")]


def test_variation_never_raises_on_a_broken_backend() -> None:
    class Broken:
        def evaluate(self, key: str, context: Any) -> Any:
            raise RuntimeError("boom")

        def all_flags_state(self, *a: Any) -> Any:
            raise RuntimeError("boom")

    client = Client(Broken())  # a backend object, as the CLI passes
    detail = client.variation_detail("f", USER, 7)
    assert detail == EvaluationDetail(7, None, {"kind": "ERROR", "errorKind": "EXCEPTION"})
    assert client.variation("f", object(), 8) == 8
    assert not client.all_flags_state(USER).valid


def test_threads_evaluate_while_generations_switch(name: str) -> None:
    sup = Supervisor(name)
    try:
        sup.publish({"f": _flag("f", 0)})
        client = Client(_config(name))
        stop = threading.Event()
        errors: List[Any] = []
        seen: set = set()

        def worker() -> None:
            ctx = Context.create(f"u-{threading.get_ident()}")
            while not stop.is_set():
                detail = client.variation_detail("f", ctx, -1)
                if detail.variation_index != 0 or not isinstance(detail.value, int) \
                        or detail.value < 0:
                    errors.append(detail)
                    return
                seen.add(detail.value)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for i in range(1, 60):
            sup.publish({"f": _flag("f", i, version=i + 1)})
            time.sleep(0.002)
        assert _wait(lambda: 59 in seen)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert len(seen) > 5
        client.close()
    finally:
        sup.close()


def test_os_fork_after_evaluations(name: str) -> None:
    sup = Supervisor(name)
    try:
        sup.publish({"f": _flag("f", "before")})
        client = Client(_config(name))
        assert client.variation("f", USER, None) == "before"
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                results = [client.variation("f", USER, None)]
                os.write(w, b"R")
                os.read(go_r, 1)
                _wait(lambda: client.variation("f", USER, None) == "after", 2.0)
                results.append(client.variation("f", USER, None))
                os.write(w, ",".join(results).encode())
            finally:
                os._exit(0)
        assert os.read(r, 1) == b"R"
        sup.publish({"f": _flag("f", "after", version=2)})
        os.write(go_w, b"x")
        out = os.read(r, 100).decode()
        os.waitpid(pid, 0)
        assert out == "before,after"
        assert client.variation("f", USER, None) == "after"
        client.close()
    finally:
        sup.close()


# -- multiprocessing ---------------------------------------------------------------------
# Children use shmflags.get() with SHMFLAGS_NAME from the environment, as an app would.

def _child_values(queue: Any, expect: str) -> None:
    import shmflags
    client = shmflags.get()
    ok = _wait(lambda: client.variation("f", Context.create("c"), "dflt") == expect, 3.0)
    queue.put((os.getpid(), ok, client.variation("f", Context.create("c"), "dflt")))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_start_methods(name: str, method: str) -> None:
    import shmflags
    from shmflags.client import singleton
    sup = Supervisor(name)
    try:
        sup.publish({"f": _flag("f", f"via-{method}")})
        if method == "fork":
            shmflags.get()  # a client made before the fork, like gunicorn --preload
        ctx = multiprocessing.get_context(method)
        queue = ctx.Queue()
        procs = [ctx.Process(target=_child_values, args=(queue, f"via-{method}"))
                 for _ in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert all(ok and value == f"via-{method}" for _, ok, value in results), results
        assert {pid for pid, _, _ in results} == {p.pid for p in procs}
    finally:
        old = singleton._reset()
        if old is not None:
            old.close()
        sup.close()


def _child_listener(queue: Any) -> None:
    import shmflags
    client = shmflags.get()  # inherited from the parent, with its listener
    queue.put(("ready", os.getpid()))
    time.sleep(3)  # the listener reports from the watcher thread meanwhile
    del client


def test_listener_registered_in_parent_fires_in_forked_children(name: str) -> None:
    import shmflags
    from shmflags.client import singleton
    sup = Supervisor(name)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    try:
        sup.publish({"f": _flag("f", "v1")})
        client = shmflags.get()
        client.flag_tracker.add_flag_value_change_listener(
            "f", USER, lambda ch: queue.put(("change", os.getpid(), ch.old_value, ch.new_value)))
        procs = [ctx.Process(target=_child_listener, args=(queue,)) for _ in range(2)]
        for p in procs:
            p.start()
        ready = [queue.get(timeout=30) for _ in procs]
        assert [r[0] for r in ready] == ["ready", "ready"]
        sup.publish({"f": _flag("f", "v2", version=2)})
        changes = [queue.get(timeout=10) for _ in range(3)]  # two children and the parent
        for p in procs:
            p.join(timeout=30)
        pids = {c[1] for c in changes}
        assert pids == {p.pid for p in procs} | {os.getpid()}, changes
        assert all(c[0] == "change" and c[2:] == ("v1", "v2") for c in changes), changes
    finally:
        old = singleton._reset()
        if old is not None:
            old.close()
        sup.close()


def test_big_segment_status_without_a_mirror(name: str) -> None:
    client = Client(_config(name))
    status = client.big_segment_store_status_provider.status
    assert (status.available, status.stale) == (False, False)
    assert type(client.big_segment_store_status_provider).__module__ == \
        "shmflags.integrations.bigsegments"
    client.close()


def test_watcher_made_on_first_use_and_locks_renewed_after_fork(name: str) -> None:
    # A client made in a worker makes no watcher (nor its thread, event and at-fork hook)
    # until a listener needs one; the client's own locks are still renewed in a forked child.
    sup = Supervisor(name)
    try:
        sup.publish({"f": _flag("f", "v1")})
        client = Client(_config(name))
        assert client._watcher_ is None
        assert client.variation("f", USER, None) == "v1"
        assert client._watcher_ is None
        lock = client._lazy_lock
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                renewed = client._lazy_lock is not lock and client._pid == os.getpid()
                os.write(w, b"1" if renewed and client._watcher_ is None else b"0")
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.close(r)
        os.waitpid(pid, 0)
        changes: List[str] = []
        client.flag_tracker.add_listener(lambda ch: changes.append(ch.key))
        watcher = client._watcher_
        assert watcher is not None and watcher.running
        sup.publish({"f": _flag("f", "v2", version=2)})
        assert _wait(lambda: changes == ["f"])
        client.close()
        assert _wait(lambda: not watcher.running)
    finally:
        sup.close()


def test_watcher_made_after_close_never_runs(name: str) -> None:
    client = Client(_config(name, start_wait=0))
    client.close()
    client.flag_tracker.add_listener(lambda ch: None)
    assert client._watcher_ is not None and not client._watcher_.running
