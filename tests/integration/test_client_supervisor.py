"""The worker Client against a real supervisor process (flag-file source)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List

import pytest

from supervisor_harness import Harness, wait_for

from shmflags import Client, Config, Context
from shmflags.client.status import DataSourceState

USER = Context.create("u1")
NOT_READY = {"kind": "ERROR", "errorKind": "CLIENT_NOT_READY"}


@pytest.fixture
def h(tmp_path: Path) -> Any:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def _client(h: Harness, **kw: Any) -> Client:
    return Client(Config(name=h.name, send_events=False, environ={}, **kw))


def _write(path: Path, color: str) -> None:
    path.write_text(f"flagValues:\n  color: {color}\n")


def test_defaults_until_the_supervisor_publishes_then_values_within_half_a_second(
        h: Harness, tmp_path: Path) -> None:
    client = _client(h)
    assert client.variation_detail("color", USER, "none").reason == NOT_READY
    flags = tmp_path / "flags.yaml"
    _write(flags, "red")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    first_value = None
    deadline = time.monotonic() + 20
    while first_value is None and time.monotonic() < deadline:
        if client.variation("color", USER, "none") == "red":
            first_value = time.time()
        time.sleep(0.002)
    assert first_value is not None, "the client never attached"
    published = h.ctl()["last_update"]  # wall time the supervisor published (Unix seconds)
    assert 0 <= first_value - published < 0.5, (published, first_value)
    assert client.data_source_status_provider.status.state == DataSourceState.VALID
    client.close()


def test_supervisor_killed_keeps_serving_turns_interrupted_and_recovers(
        h: Harness, tmp_path: Path) -> None:
    flags = tmp_path / "flags.yaml"
    _write(flags, "red")
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 15)
    client = _client(h, heartbeat_timeout=1.0)
    statuses: List[Any] = []
    client.data_source_status_provider.add_listener(lambda s: statuses.append(s.state))
    assert client.variation("color", USER, None) == "red"
    sup.kill9()
    killed = time.monotonic()
    wait_for(lambda: client.data_source_status_provider.status.state
             == DataSourceState.INTERRUPTED, 10)
    assert time.monotonic() - killed > 0.5  # not before the heartbeat timeout
    assert client.variation("color", USER, None) == "red", "last generation keeps serving"
    wait_for(lambda: DataSourceState.INTERRUPTED in statuses, 5)
    # a new supervisor takes over the namespace and publishes newer data
    _write(flags, "blue")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: client.variation("color", USER, None) == "blue", 20)
    wait_for(lambda: client.data_source_status_provider.status.state == DataSourceState.VALID,
             10)
    client.close()


def test_flag_tracker_sees_file_edits(h: Harness, tmp_path: Path) -> None:
    flags = tmp_path / "flags.yaml"
    _write(flags, "red")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 15)
    client = _client(h)
    changes: List[Any] = []
    client.flag_tracker.add_flag_value_change_listener(
        "color", USER, lambda ch: changes.append((ch.old_value, ch.new_value)))
    _write(flags, "green")
    wait_for(lambda: changes == [("red", "green")], 10)
    client.close()


def test_events_reach_launchdarkly_through_the_socket_the_supervisor_announces(
        h: Harness, tmp_path: Path) -> None:
    from tests.fakes.fake_ld import FakeLD
    flags = tmp_path / "flags.json"
    flags.write_text('{"flags": {"tracked": {"key": "tracked", "version": 3, "on": true, '
                     '"trackEvents": true, "variations": ["a", "b"], '
                     '"fallthrough": {"variation": 1}}}}')
    sock_path = str(tmp_path / "sup-only.sock")
    with FakeLD() as fake:
        sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_SEND_EVENTS": "true",
                           "SHMFLAGS_SDK_KEY": "sdk-client-test",
                           "SHMFLAGS_EVENTS_URI": fake.url, "SHMFLAGS_SOCKET": sock_path,
                           "SHMFLAGS_FLUSH_INTERVAL": "600",
                           "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true"})
        wait_for(lambda: h.raw_flag("tracked"), 15)
        # the worker is not told the socket path: it reads it from the control block
        client = Client(Config(name=h.name, send_events=True, environ={}))
        assert client.variation("tracked", USER, "dflt") == "b"
        client.track("checkout", USER, {"n": 1}, 3.5)
        client.identify(Context.create("acme", "org"))
        client.close()  # flushes to the supervisor
        wait_for(lambda: h.status()["events"]["received"] >= 1, 10, 0.1)
        assert sup.stop() == 0  # SIGTERM flushes to LaunchDarkly
        events = [e for payload in fake.events for e in payload.payload]
        kinds = sorted({e["kind"] for e in events})
        assert kinds == ["custom", "feature", "identify", "index", "summary"], kinds
        feature = next(e for e in events if e["kind"] == "feature")
        assert (feature["key"], feature["value"], feature["variation"], feature["version"],
                feature["default"]) == ("tracked", "b", 1, 3, "dflt")
        custom = next(e for e in events if e["kind"] == "custom")
        assert (custom["key"], custom["data"], custom["metricValue"]) == ("checkout", {"n": 1},
                                                                          3.5)
