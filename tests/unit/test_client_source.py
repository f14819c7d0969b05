"""ShmSource: attach without a supervisor, switch generations, fork, heartbeat status."""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Dict, Iterator

import pytest

from shmflags import shm
from shmflags.client.source import ShmSource, StaticSource, TestDataSource, status_from_control
from shmflags.client.status import DataSourceState
from shmflags.config import Config
from shmflags.context import Context
from shmflags.snapshot.builder import SnapshotBuilder
from shmflags.testing import TestData

USER = Context.create("user-1")


def _flag(key: str, value: Any, version: int = 1) -> Dict[str, Any]:
    return {"key": key, "version": version, "on": True, "variations": [value],
            "fallthrough": {"variation": 0}}


@pytest.fixture
def name() -> Iterator[str]:
    ns = f"t-src-{uuid.uuid4().hex[:10]}"
    yield ns
    shm.cleanup(ns)


def _config(name: str, **kw: Any) -> Config:
    return Config(name=name, environ={}, **kw)


def _publish(pub: shm.Publisher, builder: SnapshotBuilder, value: Any, version: int = 1) -> int:
    return pub.publish(builder.build({"f": _flag("f", value, version)}, {}))


def test_no_supervisor_then_publish_within_half_a_second(name: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    source = ShmSource(_config(name))
    with caplog.at_level(logging.ERROR, logger="shmflags.client.source"):
        for _ in range(20):
            assert source.current() is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "one loud line per process, not one per call"
    assert source.status().state == DataSourceState.INITIALIZING
    pub = shm.Publisher(name, grace=0.2)
    try:
        assert source.current() is None  # control block but no snapshot yet
        _publish(pub, SnapshotBuilder(), "v1")
        start = time.monotonic()
        snap = None
        while snap is None and time.monotonic() - start < 2:
            snap = source.current()
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        assert snap is not None and elapsed < 0.5, elapsed
        assert snap.evaluate("f", USER)[0] == "v1"
    finally:
        pub.close()


def test_attach_rechecks_at_most_every_interval(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ShmSource(_config(name, attach_interval=0.2))
    calls = []
    real = source._attach
    monkeypatch.setattr(source, "_attach", lambda: calls.append(1) or real())
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        source.current()
    assert 2 <= len(calls) <= 4, calls


def test_generation_switch_and_same_object_while_unchanged(name: str) -> None:
    pub = shm.Publisher(name, grace=0.2)
    builder = SnapshotBuilder()
    try:
        _publish(pub, builder, "a")
        source = ShmSource(_config(name))
        first = source.current()
        assert first is source.current(), "unchanged generation must reuse the snapshot"
        assert first.evaluate("f", USER)[0] == "a"
        gen = _publish(pub, builder, "b", 2)
        second = source.current()
        assert second is not first and second.evaluate("f", USER)[0] == "b"
        assert source.generation() == gen
        # the old snapshot object stays usable for a thread still holding it
        assert first.evaluate("f", USER)[0] == "a"
    finally:
        pub.close()


def test_corrupt_generation_keeps_previous(name: str, caplog: pytest.LogCaptureFixture) -> None:
    pub = shm.Publisher(name, grace=0.2)
    builder = SnapshotBuilder()
    try:
        _publish(pub, builder, "good")
        source = ShmSource(_config(name))
        assert source.current().evaluate("f", USER)[0] == "good"
        gen = _publish(pub, builder, "next", 2)
        # corrupt the published object behind the supervisor's back
        path = os.path.join("/dev/shm", shm.data_name(name, gen)[1:])
        os.chmod(path, 0o600)
        with open(path, "r+b") as fh:
            fh.seek(200)
            fh.write(b"\xff" * 16)
        with caplog.at_level(logging.ERROR):
            for _ in range(50):
                snap = source.current()
        assert snap.evaluate("f", USER)[0] == "good"
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) <= 2
    finally:
        pub.close()


def test_heartbeat_stale_turns_interrupted_and_keeps_serving(name: str) -> None:
    pub = shm.Publisher(name, grace=0.2)
    try:
        _publish(pub, SnapshotBuilder(), "kept")
        pub.set_status("VALID")
        pub.heartbeat()
        source = ShmSource(_config(name, heartbeat_timeout=0.3))
        assert source.current() is not None
        assert source.status().state == DataSourceState.VALID
        time.sleep(0.45)
        status = source.status()
        assert status.state == DataSourceState.INTERRUPTED
        assert "heartbeat" in (status.error.message or "")
        assert status == source.status(), "stale status must be stable between polls"
        assert source.current().evaluate("f", USER)[0] == "kept"
        pub.heartbeat()
        assert source.status().state == DataSourceState.VALID
    finally:
        pub.close()


def test_status_from_control_error_and_initializing() -> None:
    info = {"state": "INITIALIZING", "state_since": 100.0, "heartbeat_age_s": 0.5,
            "last_error": {"kind": "ERROR_RESPONSE", "statusCode": 401, "time": 99.0,
                           "message": "bad key"}}
    status = status_from_control(info, 5.0, serving=False)
    assert status.state == DataSourceState.INITIALIZING and status.since == 100.0
    assert status.error.kind.name == "ERROR_RESPONSE" and status.error.status_code == 401
    stale = status_from_control(dict(info, heartbeat_age_s=9.0, heartbeat=50.0), 5.0, False)
    assert stale.state == DataSourceState.INITIALIZING  # never had data: not INTERRUPTED
    assert stale.error.time == 55.0


def test_fork_child_revalidates_and_switches(name: str) -> None:
    pub = shm.Publisher(name, grace=5)
    builder = SnapshotBuilder()
    try:
        _publish(pub, builder, "parent")
        source = ShmSource(_config(name))
        assert source.current().evaluate("f", USER)[0] == "parent"
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(r)
                os.close(go_w)
                os.close(ready_r)
                first = source.current().evaluate("f", USER)[0]
                os.write(ready_w, b"x")  # the parent publishes only after this first read
                os.read(go_r, 1)  # wait for the parent's publish
                second = source.current().evaluate("f", USER)[0]
                os.write(w, f"{first},{second}".encode())
            finally:
                os._exit(0)
        os.close(w)
        os.close(go_r)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        os.close(ready_r)
        _publish(pub, builder, "after-fork", 2)
        os.write(go_w, b"x")
        out = os.read(r, 100).decode()
        os.waitpid(pid, 0)
        assert out == "parent,after-fork"
    finally:
        pub.close()


def test_many_threads_while_generations_switch(name: str) -> None:
    pub = shm.Publisher(name, grace=0.05)
    builder = SnapshotBuilder()
    try:
        _publish(pub, builder, 0)
        source = ShmSource(_config(name))
        errors: list = []
        stop = threading.Event()
        seen: set = set()

        def reader() -> None:
            while not stop.is_set():
                try:
                    snap = source.current()
                    value = snap.evaluate("f", USER)[0]
                    assert isinstance(value, int) and value >= 0
                    seen.add(value)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=reader) for _ in range(6)]
        for t in threads:
            t.start()
        for i in range(1, 40):
            _publish(pub, builder, i, i + 1)
            pub.reap()
            time.sleep(0.003)
        time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors
        assert 39 in seen and len(seen) > 3
    finally:
        pub.close()


def test_static_and_testdata_sources() -> None:
    static = StaticSource({"f": _flag("f", 3)}, {})
    assert static.current().evaluate("f", USER)[0] == 3
    assert static.status().state == DataSourceState.VALID
    td = TestData()
    td.update(td.flag("b").variation_for_all(False))
    source = TestDataSource(td)
    first = source.current()
    assert first.evaluate("b", USER)[0] is False
    td.update(td.flag("b").variation_for_all(True))
    assert source.generation() == 2 and source.current() is not first
    assert source.current().evaluate("b", USER)[0] is True
    source.close()
    td.update(td.flag("b").variation_for_all(False))
    assert source.current().evaluate("b", USER)[0] is True


def test_reattaches_when_the_namespace_is_cleaned_up_and_recreated(name: str) -> None:
    old = shm.Publisher(name, grace=0.1)
    _publish(old, SnapshotBuilder(), "first")
    source = ShmSource(_config(name))
    assert source.current().evaluate("f", USER)[0] == "first"
    old.close()
    shm.cleanup(name)  # on purpose; workers keep their mapping
    assert source.current().evaluate("f", USER)[0] == "first"
    new = shm.Publisher(name, grace=0.1)
    try:
        _publish(new, SnapshotBuilder(), "second")
        end = time.monotonic() + 3
        value = None
        while time.monotonic() < end and value != "second":
            value = source.current().evaluate("f", USER)[0]
        assert value == "second"
    finally:
        new.close()
