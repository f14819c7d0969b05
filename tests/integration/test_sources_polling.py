"""The polling source against the fake LaunchDarkly service (real sockets on 127.0.0.1)."""
from __future__ import annotations

import time
from typing import Any, Dict, Iterator

import pytest

from shmflags.config import Config
from shmflags.supervisor.sources.polling import PollingSource
from tests.fakes.fake_ld import FakeLD
from tests.fakes.sink import RecordingSink


def flag(key: str, version: int = 1) -> Dict[str, Any]:
    return {"key": key, "version": version, "on": False, "variations": [1, 2], "offVariation": 0}


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD() as f:
        f.set_data({"f1": flag("f1")}, {})
        yield f


def make(fake: FakeLD, sink: RecordingSink, interval: float = 0.1, **settings: Any) -> PollingSource:
    cfg = Config("sdk-poll-key", base_uri=fake.url + "/", stream_uri=fake.url,
                 events_uri=fake.url, stream=False, environ={}, **settings)
    return PollingSource(cfg, sink, instance_id="inst-2", _interval=interval)


def test_poll_interval_minimum_comes_from_config(fake: FakeLD) -> None:
    cfg = Config("k", base_uri=fake.url, poll_interval=1, environ={})
    assert PollingSource(cfg, RecordingSink()).interval == 30.0


def test_etag_304_and_change(fake: FakeLD) -> None:
    sink = RecordingSink()
    src = make(fake, sink, payload_filter_key="f")
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert sink.of("init")[0] == ("init", {"f1": flag("f1")}, {})
        assert fake.wait_for_requests("/sdk/latest-all", 3)
        reqs = fake.requests_to("/sdk/latest-all")
        assert reqs[0].status == 200 and "If-None-Match" not in reqs[0].headers
        assert reqs[1].status == 304 and reqs[1].headers["If-None-Match"].startswith('"')
        assert reqs[0].query == {"filter": ["f"]}
        assert reqs[0].headers["Authorization"] == "sdk-poll-key"
        assert reqs[0].headers["X-LaunchDarkly-Instance-Id"] == "inst-2"
        assert len(sink.of("init")) == 1  # 304s do not re-init
        assert sink.environment_ids[0] == "fake-env"
        assert sink.statuses()[-1] == ("VALID", None)
        fake.set_data({"f1": flag("f1", 2)}, {})
        assert sink.wait_count("init", 2)
        assert sink.of("init")[1][1] == {"f1": flag("f1", 2)}
    finally:
        src.stop()
    assert not src.running


def test_401_turns_off(fake: FakeLD) -> None:
    fake.respond_with(401, path="/sdk/latest-all")
    sink = RecordingSink()
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_for(lambda s: any(st == "OFF" for st, _ in s.statuses()))
        time.sleep(0.4)
        assert len(fake.requests_to("/sdk/latest-all")) == 1
        assert sink.statuses()[-1][1]["statusCode"] == 401
    finally:
        src.stop()


def test_500_then_recovery(fake: FakeLD) -> None:
    fake.respond_with(500, path="/sdk/latest-all", times=2)
    sink = RecordingSink()
    src = make(fake, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        states = [s for s, _ in sink.statuses()]
        assert states == ["INTERRUPTED", "INTERRUPTED", "VALID"]
        assert sink.statuses()[0][1]["kind"] == "ERROR_RESPONSE"
    finally:
        src.stop()


def test_malformed_body_keeps_data_and_etag(fake: FakeLD) -> None:
    sink = RecordingSink()
    src = make(fake, sink, interval=0.05)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        fake.respond_with(200, path="/sdk/latest-all", body=b'{"flags": ', times=1)
        assert sink.wait_for(lambda s: any(st == "INTERRUPTED" for st, _ in s.statuses()))
        err = [e for s, e in sink.statuses() if s == "INTERRUPTED"][0]
        assert err["kind"] == "INVALID_DATA"
        fake.respond_with(200, path="/sdk/latest-all", body=b'{"flags": {}}', times=1)  # no segments
        assert sink.wait_for(lambda s: len([1 for st, _ in s.statuses() if st == "INTERRUPTED"]) >= 2)
        assert len(sink.of("init")) == 1
        assert sink.wait_for(lambda s: s.statuses()[-1][0] == "VALID")
    finally:
        src.stop()


def test_body_over_limit_is_invalid(fake: FakeLD) -> None:
    fake.set_data({f"f{i}": flag(f"f{i}") for i in range(200)}, {})
    sink = RecordingSink()
    src = make(fake, sink, max_stream_message_bytes=2000)
    src.start()
    try:
        assert sink.wait_for(lambda s: len(s.statuses()) >= 1)
        err = sink.statuses()[0][1]
        assert err["kind"] == "INVALID_DATA" and "larger than 2000" in err["message"]
        assert sink.of("init") == []
    finally:
        src.stop()


def test_polling_through_relay_without_data(fake: FakeLD) -> None:
    with FakeLD(relay=True) as relay:
        sink = RecordingSink()
        src = make(relay, sink, interval=0.05)
        src.start()
        try:
            assert relay.wait_for_requests("/sdk/latest-all", 2)
            assert sink.statuses()[0][1]["statusCode"] == 503
            relay.set_data({"f1": flag("f1")}, {})
            assert sink.wait_count("init", 1)
        finally:
            src.stop()


def test_network_error_is_recoverable() -> None:
    fake = FakeLD().start()
    url = fake.url
    fake.stop()  # nothing listens on this port any more
    sink = RecordingSink()
    cfg = Config("k", base_uri=url, environ={})
    src = PollingSource(cfg, sink, _interval=0.05)
    src.start()
    try:
        assert sink.wait_for(lambda s: len(s.statuses()) >= 2)
        assert all(st == "INTERRUPTED" and e["kind"] == "NETWORK_ERROR" for st, e in sink.statuses())
    finally:
        src.stop()
