"""A real supervisor process on the network sources: fake LaunchDarkly (stream, poll), Redis."""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator

import pytest

from supervisor_harness import Harness, wait_for
from tests.fakes.fake_ld import FakeLD
from tests.fakes.redis_server import RedisServer, redis_server_available


def flag(key: str, version: int, value: Any) -> Dict[str, Any]:
    return {"key": key, "version": version, "on": True, "variations": [value, "off"],
            "fallthrough": {"variation": 0}, "offVariation": 1, "targets": [], "rules": [],
            "prerequisites": [], "salt": key}


@pytest.fixture
def h(tmp_path: Any) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.5) as f:
        f.set_data({"color": flag("color", 1, "red")}, {})
        yield f


def ld_env(fake: FakeLD, **extra: str) -> Dict[str, str]:
    env = {"SHMFLAGS_SDK_KEY": "sdk-supervisor-test", "SHMFLAGS_STREAM_URI": fake.url,
           "SHMFLAGS_BASE_URI": fake.url, "SHMFLAGS_EVENTS_URI": fake.url,
           "SHMFLAGS_INITIAL_RECONNECT_DELAY": "0.05"}
    env.update(extra)
    return env


def color(h: Harness) -> Any:
    f = h.raw_flag("color")
    return f and f["variations"][0]


def test_streaming_supervisor_publishes_put_and_patch(h: Harness, fake: FakeLD) -> None:
    h.start(env=ld_env(fake))
    wait_for(lambda: color(h) == "red", 15)
    st = h.status()
    assert st["state"] == "VALID" and st["source"] == "streaming"
    assert fake.wait_for_streams(1)
    fake.push("patch", {"path": "/flags/color", "data": flag("color", 2, "blue")})
    wait_for(lambda: color(h) == "blue", 2)
    fake.push("delete", {"path": "/flags/color", "version": 3})
    wait_for(lambda: h.raw_flag("color") is None, 2)
    # malformed data: last good data stays, state INTERRUPTED with INVALID_DATA, then back
    fake.heartbeat_interval = None
    fake.push("patch", {"path": "/flags/color", "data": flag("color", 4, "yellow")})
    wait_for(lambda: color(h) == "yellow", 2)
    generation = h.status()["generation"]
    fake.push("patch", "{oops")
    wait_for(lambda: (h.status().get("last_error") or {}).get("kind") == "INVALID_DATA", 10)
    wait_for(lambda: len(fake.requests_to("/all")) >= 2, 5)  # reconnected
    assert color(h) == "yellow" and h.status()["generation"] >= generation
    req = fake.requests_to("/all")[0]
    assert req.headers["Authorization"] == "sdk-supervisor-test"


def test_environment_id_reaches_worker_hooks(h: Harness, fake: FakeLD) -> None:
    """X-LD-EnvID of the stream response travels through the control block to the
    ``environment_id`` a worker's hooks see, as ldclient's hooks see it."""
    from shmflags import Client, Config, Context
    from shmflags.client.hooks import Hook, Metadata

    seen = []

    class Recorder(Hook):
        @property
        def metadata(self) -> Metadata:
            return Metadata(name="recorder")

        def before_evaluation(self, series: Any, data: Any) -> Any:
            seen.append(series.environment_id)
            return data

    h.start(env=ld_env(fake))
    wait_for(lambda: color(h) == "red", 15)
    wait_for(lambda: h.ctl().get("environment_id") == "fake-env", 5)
    assert h.status()["environment_id"] == "fake-env"
    client = Client(Config(name=h.name, send_events=False, hooks=[Recorder()], environ={}))
    try:
        assert client.variation("color", Context.create("u"), "none") == "red"
        assert seen == ["fake-env"]
    finally:
        client.close()


def test_streaming_401_reports_off(h: Harness, fake: FakeLD) -> None:
    fake.respond_with(401, path="/all")
    h.start(env=ld_env(fake))
    st = wait_for(lambda: (lambda s: s if s.get("state") == "OFF" else None)(h.status()), 15)
    assert st["last_error"]["statusCode"] == 401
    assert "invalid SDK key" in st["last_error"]["message"]
    assert len(fake.requests_to("/all")) == 1


def test_polling_supervisor(h: Harness, fake: FakeLD) -> None:
    h.start(env=ld_env(fake, SHMFLAGS_STREAM="false"))
    wait_for(lambda: color(h) == "red", 15)
    assert h.status()["source"] == "polling"
    assert fake.requests_to("/sdk/latest-all")[0].status == 200


@pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed")
def test_daemon_mode_and_write_through(h: Harness, fake: FakeLD, tmp_path: Any) -> None:
    redis = pytest.importorskip("redis")
    with RedisServer() as srv:
        # supervisor A streams from "LaunchDarkly" and writes Redis ...
        h.start(env=ld_env(fake, SHMFLAGS_REDIS_URL=srv.url, SHMFLAGS_REDIS_WRITE="true",
                           SHMFLAGS_REDIS_PREFIX="env1"))
        wait_for(lambda: color(h) == "red", 15)
        client = redis.Redis.from_url(srv.url)
        wait_for(lambda: client.exists("env1:$inited"), 5)
        assert json.loads(client.hget("env1:features", "color"))["variations"][0] == "red"
        # ... supervisor B, in daemon mode, serves what A wrote, in its own namespace
        (tmp_path / "b").mkdir()
        other = Harness(tmp_path / "b")
        try:
            other.start(env={"SHMFLAGS_USE_LDD": "true", "SHMFLAGS_REDIS_URL": srv.url,
                             "SHMFLAGS_REDIS_PREFIX": "env1",
                             "SHMFLAGS_REDIS_REFRESH_INTERVAL": "0.2"})
            wait_for(lambda: color(other) == "red", 15)
            assert other.status()["source"] == "redis"
            fake.push("patch", {"path": "/flags/color", "data": flag("color", 2, "green")})
            wait_for(lambda: color(other) == "green", 5)
        finally:
            other.close()
            client.close()
