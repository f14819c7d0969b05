"""The streaming source against the fake LaunchDarkly service (real sockets on 127.0.0.1)."""
from __future__ import annotations

import time
from typing import Any, Dict, Iterator

import pytest

from shmflags import __version__
from shmflags.config import Config
from shmflags.supervisor.http import Backoff
from shmflags.supervisor.sources.streaming import StreamingSource
from tests.fakes.fake_ld import FakeLD, sse_frame
from tests.fakes.sink import RecordingSink


def flag(key: str, version: int = 1, **extra: Any) -> Dict[str, Any]:
    return dict({"key": key, "version": version, "on": True, "variations": [True, False],
                 "fallthrough": {"variation": 0}, "offVariation": 1}, **extra)


SEG = {"key": "s1", "version": 3, "included": ["a"]}


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.2) as f:
        f.set_data({"f1": flag("f1")}, {"s1": SEG})
        yield f


def make(fake: FakeLD, sink: RecordingSink, **settings: Any) -> StreamingSource:
    private = {k: settings.pop(k) for k in ("_read_timeout", "_backoff") if k in settings}
    cfg = Config("sdk-test-key", stream_uri=fake.url + "/", base_uri=fake.url,
                 events_uri=fake.url, initial_reconnect_delay=settings.pop("delay", 0.05),
                 environ={}, **settings)
    return StreamingSource(cfg, sink, instance_id="inst-1", **private)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def test_put_patch_delete_reach_the_sink(fake: FakeLD, sink: RecordingSink) -> None:
    src = make(fake, sink, payload_filter_key="my filter", wrapper_name="Wrap",
               wrapper_version="2", application={"id": "app-1", "version": "bad version!"})
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert sink.of("init")[0] == ("init", {"f1": flag("f1")}, {"s1": SEG})
        assert sink.statuses()[-1] == ("VALID", None)
        assert fake.wait_for_streams(1)
        fake.push("patch", {"path": "/flags/f2", "data": flag("f2", 4)})
        fake.push("patch", {"path": "/segments/s1", "data": dict(SEG, version=4)})
        fake.push("patch", {"path": "/other/x", "data": {"key": "x", "version": 1}})  # ignored
        fake.push("unknown-event", {"anything": True})  # ignored
        fake.push("delete", {"path": "/flags/f1", "version": 2})
        assert sink.wait_count("delete", 1)
        assert sink.data_calls()[1:] == [
            ("upsert", "flags", flag("f2", 4)),
            ("upsert", "segments", dict(SEG, version=4)),
            ("delete", "flags", "f1", 2),
        ]
        req = fake.requests_to("/all")[0]
        assert req.query == {"filter": ["my filter"]}
        h = req.headers
        assert h["Authorization"] == "sdk-test-key"
        assert h["User-Agent"] == f"shmflags/{__version__}"
        assert h["X-LaunchDarkly-Wrapper"] == f"Wrap/2 shmflags/{__version__}"
        assert h["X-LaunchDarkly-Tags"] == "application-id/app-1"  # invalid version dropped
        assert h["X-LaunchDarkly-Instance-Id"] == "inst-1"
        assert h["Accept"] == "text/event-stream"
        assert h["Cache-Control"] == "no-cache" and h["Accept-Encoding"] == "identity"
        assert sink.environment_ids == ["fake-env"]  # X-LD-EnvID of the stream response
    finally:
        src.stop()
    assert not src.running


def test_reconnects_after_server_disconnect(fake: FakeLD, sink: RecordingSink) -> None:
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        fake.set_data({"f1": flag("f1", 2)}, {})
        fake.disconnect_streams()
        assert sink.wait_count("init", 2)
        assert sink.of("init")[1][1] == {"f1": flag("f1", 2)}
        states = [s for s, _ in sink.statuses()]
        assert states == ["VALID", "INTERRUPTED", "VALID"]
        assert sink.statuses()[1][1]["kind"] == "NETWORK_ERROR"
        assert len(fake.requests_to("/all")) == 2
    finally:
        src.stop()


def test_401_turns_off_and_never_retries(fake: FakeLD, sink: RecordingSink) -> None:
    fake.respond_with(401, path="/all")
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_for(lambda s: any(st == "OFF" for st, _ in s.statuses()))
        state, error = sink.statuses()[-1]
        assert state == "OFF"
        assert error["kind"] == "ERROR_RESPONSE" and error["statusCode"] == 401
        assert "invalid SDK key" in error["message"]
        time.sleep(0.5)  # 10 backoff periods: a retry would have happened by now
        assert len(fake.requests_to("/all")) == 1
        assert not src.running
        assert sink.data_calls() == []
    finally:
        src.stop()


@pytest.mark.parametrize("status", [500, 503, 429, 400, 408])
def test_recoverable_status_retries_with_backoff(fake: FakeLD, sink: RecordingSink,
                                                 status: int) -> None:
    fake.respond_with(status, path="/all", times=3)
    src = make(fake, sink, delay=0.1, _backoff=Backoff(0.1, rng=lambda: 0.0))
    start = time.monotonic()
    src.start()
    try:
        assert sink.wait_count("init", 1, timeout=5)
        elapsed = time.monotonic() - start
        reqs = fake.requests_to("/all")
        assert [r.status for r in reqs] == [status, status, status, 200]
        gaps = [b.time - a.time for a, b in zip(reqs, reqs[1:])]
        # no jitter (rng=0): delays 0.1, 0.2, 0.4 s
        for gap, want in zip(gaps, (0.1, 0.2, 0.4)):
            assert want - 0.02 <= gap <= want + 0.4, gaps  # lower bound: the doubling
        assert elapsed >= 0.65
        errors = [e for s, e in sink.statuses() if s == "INTERRUPTED"]
        assert len(errors) == 3 and all(e["statusCode"] == status for e in errors)
        assert sink.statuses()[-1] == ("VALID", None)
    finally:
        src.stop()


def test_malformed_json_reconnects_and_keeps_good_data(fake: FakeLD, sink: RecordingSink) -> None:
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        fake.push("patch", "{not json")
        assert sink.wait_for(lambda s: any(st == "INTERRUPTED" for st, _ in s.statuses()))
        err = [e for s, e in sink.statuses() if s == "INTERRUPTED"][0]
        assert err["kind"] == "INVALID_DATA"
        # nothing invalid reached the sink: the only data calls are puts of good data
        assert sink.wait_count("init", 2)
        assert all(c[0] == "init" and c[1] == {"f1": flag("f1")} for c in sink.data_calls())
        assert len(fake.requests_to("/all")) == 2
    finally:
        src.stop()


@pytest.mark.parametrize("bad", [
    {"path": "/"},                                                # put without data
    {"path": "/", "data": {"flags": {"f": {"key": "f"}}, "segments": {}}},  # no version
    {"path": "/", "data": {"flags": [], "segments": {}}},        # flags not an object
])
def test_put_with_wrong_shape_is_invalid_data(fake: FakeLD, sink: RecordingSink,
                                              bad: Dict[str, Any]) -> None:
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        fake.push_raw(sse_frame("put", bad))  # not applied to the fake's data
        assert sink.wait_for(lambda s: any(st == "INTERRUPTED" for st, _ in s.statuses()))
        err = [e for s, e in sink.statuses() if s == "INTERRUPTED"][0]
        assert err["kind"] == "INVALID_DATA"
        assert sink.wait_count("init", 2)
        assert len(sink.data_calls()) == 2
    finally:
        src.stop()


def test_oversized_message_drops_connection(fake: FakeLD, sink: RecordingSink) -> None:
    src = make(fake, sink, max_stream_message_bytes=4096)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        # push_raw: the fake does not keep it, so the reconnect's put is small again
        fake.push_raw(sse_frame("patch", {"path": "/flags/big",
                                          "data": flag("big", 2, description="x" * 10000)}))
        assert sink.wait_for(lambda s: any(st == "INTERRUPTED" for st, _ in s.statuses()))
        err = [e for s, e in sink.statuses() if s == "INTERRUPTED"][0]
        assert err["kind"] == "INVALID_DATA" and "larger than 4096" in err["message"]
        assert sink.wait_count("init", 2)
        assert sink.of("upsert") == []
    finally:
        src.stop()


def test_heartbeats_keep_stream_alive_and_silence_reconnects(sink: RecordingSink) -> None:
    with FakeLD(heartbeat_interval=0.1) as fake:
        src = make(fake, sink, _read_timeout=0.6)
        src.start()
        try:
            assert sink.wait_count("init", 1)
            time.sleep(1.5)  # 2.5 read timeouts, kept alive by heartbeats
            assert len(fake.requests_to("/all")) == 1
            fake.heartbeat_interval = None  # silence: the read timeout fires
            assert fake.wait_for(lambda: len(fake.requests) >= 2, timeout=3)
            err = [e for s, e in sink.statuses() if s == "INTERRUPTED"][0]
            assert err["kind"] == "NETWORK_ERROR"
        finally:
            src.stop()


def test_stop_returns_quickly_while_streaming(fake: FakeLD, sink: RecordingSink) -> None:
    src = make(fake, sink)
    src.start()
    assert sink.wait_count("init", 1)
    start = time.monotonic()
    src.stop()
    assert time.monotonic() - start < 1.0
    assert not src.running
    assert fake.wait_for(lambda: fake.stream_count == 0, 2)


def test_relay_proxy_without_data_is_recoverable(sink: RecordingSink) -> None:
    with FakeLD(relay=True) as relay:
        src = make(relay, sink, delay=0.05)
        src.start()
        try:
            assert relay.wait_for(lambda: len(relay.requests) >= 2, timeout=3)
            assert sink.of("init") == []
            assert all(e["statusCode"] == 503 for s, e in sink.statuses())
            relay.set_data({"f1": flag("f1")}, {})
            assert sink.wait_count("init", 1, timeout=5)
            assert sink.statuses()[-1] == ("VALID", None)
        finally:
            src.stop()


def test_sink_failure_is_store_error_and_restarts(fake: FakeLD, sink: RecordingSink) -> None:
    sink.fail_next = RuntimeError("disk on fire")
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        err = [e for s, e in sink.statuses() if s == "INTERRUPTED"][0]
        assert err["kind"] == "STORE_ERROR" and "disk on fire" in err["message"]
        assert len(fake.requests_to("/all")) == 2
    finally:
        src.stop()


def test_http_proxy_setting_routes_the_stream(fake: FakeLD, sink: RecordingSink) -> None:
    """The fake answers absolute-URI (proxy) requests, so it can play the proxy."""
    cfg = Config("sdk-test-key", stream_uri="http://stream.example.invalid",
                 http={"http_proxy": fake.url}, initial_reconnect_delay=0.05, environ={})
    src = StreamingSource(cfg, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.requests_to("/all")[0].headers["Host"] == "stream.example.invalid"
    finally:
        src.stop()


def test_proxy_environment_variable_is_honoured(fake: FakeLD, sink: RecordingSink,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", fake.url)  # requests: http_proxy for http:// targets
    cfg = Config("sdk-test-key", stream_uri="http://stream.example.invalid",
                 initial_reconnect_delay=0.05, environ={})
    src = StreamingSource(cfg, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
    finally:
        src.stop()


def test_http_proxy_setting_beats_proxy_environment(fake: FakeLD, sink: RecordingSink,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    cfg = Config("sdk-test-key", stream_uri="http://stream.example.invalid",
                 http={"http_proxy": fake.url}, initial_reconnect_delay=0.05, environ={})
    src = StreamingSource(cfg, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
    finally:
        src.stop()


def test_last_event_id_is_sent_on_reconnect(fake: FakeLD, sink: RecordingSink) -> None:
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        fake.push_raw(b'id: ev-42\nevent: patch\ndata: {"path": "/flags/f9", "data": '
                      b'{"key": "f9", "version": 1}}\n\n')
        assert sink.wait_count("upsert", 1)
        fake.disconnect_streams()
        assert sink.wait_count("init", 2)
        reqs = fake.requests_to("/all")
        assert "Last-Event-Id" not in reqs[0].headers
        assert reqs[1].headers["Last-Event-Id"] == "ev-42"
    finally:
        src.stop()


def test_stream_inits_reported_for_diagnostics(fake: FakeLD, sink: RecordingSink) -> None:
    fake.respond_with(503, path="/all", times=1)
    src = make(fake, sink)
    inits = []
    src.on_stream_init = lambda ts, ms, failed: inits.append((ts, ms, failed))
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        fake.push("patch", {"path": "/flags/f1", "data": flag("f1", 2)})
        assert sink.wait_count("upsert", 1)
    finally:
        src.stop()
    assert [f for _, _, f in inits] == [True, False]  # one failed attempt, one good one
    assert all(abs(ts - time.time() * 1000) < 10000 and 0 <= ms < 5000 for ts, ms, _ in inits)


@pytest.mark.parametrize("kind", ["streaming", "polling"])
def test_no_sdk_key_is_off_without_contacting_anyone(fake: FakeLD, sink: RecordingSink,
                                                     kind: str) -> None:
    from shmflags.supervisor.sources.polling import PollingSource
    cfg = Config(stream_uri=fake.url, base_uri=fake.url, environ={})
    src = StreamingSource(cfg, sink) if kind == "streaming" else PollingSource(cfg, sink)
    src.start()
    try:
        assert sink.wait_for(lambda s: bool(s.statuses()))
        state, err = sink.statuses()[0]
        assert state == "OFF" and "sdk_key is not set" in err["message"]
        time.sleep(0.1)
        assert fake.requests == [] and not src.running
    finally:
        src.stop()
