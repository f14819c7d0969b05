"""Supervisor side: /bulk and /diagnostic delivery, diagnostics shapes, the socket, the service."""
from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import time
from typing import Any, List

import msgpack
import pytest

import shmflags

from shmflags.config import Config
from shmflags.errors import EventsError
from shmflags.events.delivery import EventDelivery, is_recoverable
from shmflags.events.diagnostics import Diagnostics
from shmflags.events.receiver import DatagramReceiver
from shmflags.events.service import EventService
from tests.fakes.fake_ld import FakeLD


@pytest.fixture
def fake():
    with FakeLD(heartbeat_interval=None) as f:
        yield f


def config(fake: FakeLD, **kw: Any) -> Config:
    kw.setdefault("diagnostic_opt_out", True)
    return Config(sdk_key="sdk-abcdef123456", events_uri=fake.url, **kw)


def bulk_requests(fake: FakeLD):
    return fake.requests_to("/bulk")


def test_recoverable_statuses_follow_ldclient():
    from ldclient.impl.util import is_http_error_recoverable

    for status in (400, 401, 403, 404, 405, 408, 413, 429, 500, 502, 503):
        assert is_recoverable(status) == is_http_error_recoverable(status), status


def test_retry_once_with_the_same_payload_id(fake):
    sleeps: List[float] = []
    fake.respond_with(503, "/bulk", times=1)
    d = EventDelivery(config(fake), sleep=sleeps.append)
    assert d.post_bulk([{"kind": "identify"}])
    reqs = bulk_requests(fake)
    assert len(reqs) == 2 and sleeps == [1.0]
    ids = [r.headers["X-LaunchDarkly-Payload-ID"] for r in reqs]
    assert ids[0] == ids[1]
    assert d.post_bulk([{"kind": "identify"}])
    assert bulk_requests(fake)[-1].headers["X-LaunchDarkly-Payload-ID"] != ids[0]


def test_second_failure_drops_the_payload_but_keeps_sending(fake):
    fake.respond_with(500, "/bulk", times=2)
    d = EventDelivery(config(fake), sleep=lambda s: None)
    assert not d.post_bulk([{"kind": "identify"}])
    assert not d.disabled
    assert d.post_bulk([{"kind": "identify"}])
    assert len(bulk_requests(fake)) == 3


def test_unrecoverable_status_disables_sending(fake):
    fake.respond_with(401, "/bulk", times=1)
    d = EventDelivery(config(fake), sleep=lambda s: None)
    assert not d.post_bulk([{"kind": "identify"}])
    assert d.disabled
    assert not d.post_bulk([{"kind": "identify"}])
    assert len(bulk_requests(fake)) == 1


def test_gzip_and_headers(fake):
    d = EventDelivery(config(fake, enable_event_compression=True,
                             application={"id": "my-app", "version": "bad version!"}))
    assert d.post_bulk([{"kind": "identify", "x": "é"}])
    req = bulk_requests(fake)[0]
    assert req.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(req.body)) == [{"kind": "identify", "x": "é"}]
    assert req.headers["Authorization"] == "sdk-abcdef123456"
    assert req.headers["X-LaunchDarkly-Event-Schema"] == "4"
    assert req.headers["X-LaunchDarkly-Tags"] == "application-id/my-app"
    assert req.headers["X-LaunchDarkly-Wrapper"].startswith("shmflags/")
    assert len(req.headers["X-LaunchDarkly-Instance-Id"]) == 36


def test_same_instance_id_as_the_stream_and_settings_per_request(fake, monkeypatch):
    """Events and the data sources of one supervisor report one instance id; the ``http_*``
    settings win over REQUESTS_CA_BUNDLE and environment proxies (passed per request)."""
    from shmflags.supervisor import http

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")   # would refuse the connection
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    d = EventDelivery(config(fake, http={"http_proxy": fake.url}))
    assert d.post_bulk([{"kind": "identify"}])
    req = bulk_requests(fake)[0]
    assert req.headers["X-LaunchDarkly-Instance-Id"] == http.process_instance_id()
    assert d.instance_id == http.process_instance_id()


def test_reconfigure_takes_a_new_key_and_resumes_after_401(fake):
    fake.respond_with(401, "/bulk", times=1)
    d = EventDelivery(config(fake), sleep=lambda s: None)
    assert not d.post_bulk([{"kind": "identify"}]) and d.disabled
    assert not d.reconfigure(config(fake))           # nothing changed: still disabled
    assert d.disabled
    assert d.reconfigure(config(fake).copy(sdk_key="sdk-fixed-000001"))
    assert not d.disabled
    assert d.post_bulk([{"kind": "identify"}])
    assert bulk_requests(fake)[-1].headers["Authorization"] == "sdk-fixed-000001"


def test_configured_wrapper_wins(fake):
    d = EventDelivery(config(fake, wrapper_name="Flask", wrapper_version="2"))
    d.post_diagnostic({"kind": "diagnostic"})
    req = fake.requests_to("/diagnostic")[0]
    # the shared header helper (shmflags/supervisor/http.py): the wrapper, then shmflags
    assert req.headers["X-LaunchDarkly-Wrapper"] == f"Flask/2 shmflags/{shmflags.__version__}"
    assert "X-LaunchDarkly-Payload-ID" not in req.headers
    assert "X-LaunchDarkly-Event-Schema" not in req.headers


def test_server_date_feeds_the_debug_cutoff(fake):
    seen: List[int] = []
    d = EventDelivery(config(fake), on_server_time=seen.append)
    d.post_bulk([])
    assert len(seen) == 1 and abs(seen[0] - time.time() * 1000) < 5000


def test_diagnostic_event_shapes_match_ldclient():
    from ldclient.config import Config as LDConfig
    from ldclient.impl.events.diagnostics import (
        _DiagnosticAccumulator,
        create_diagnostic_id,
        create_diagnostic_init
    )

    ld_cfg = LDConfig("sdk-abcdef123456", events_uri="http://localhost:1")
    ld_init = create_diagnostic_init(1, create_diagnostic_id(ld_cfg), ld_cfg)
    ld_periodic = _DiagnosticAccumulator(create_diagnostic_id(ld_cfg)).create_event_and_reset(0, 0)
    ours = Diagnostics(Config(sdk_key="sdk-abcdef123456", events_uri="http://localhost:1"))
    init = ours.init_event()
    assert set(init) == set(ld_init)
    assert set(init["configuration"]) == set(ld_init["configuration"])
    assert set(init["platform"]) == set(ld_init["platform"])
    same = {k: v for k, v in ld_init["configuration"].items()}
    assert init["configuration"] == same
    assert init["id"]["sdkKeySuffix"] == "123456"
    ours.record_events_in_batch(4)
    ours.record_stream_init(1, 2, False)
    periodic = ours.periodic_event(3, 5)
    assert set(periodic) == set(ld_periodic)
    assert (periodic["droppedEvents"], periodic["deduplicatedUsers"],
            periodic["eventsInLastBatch"]) == (3, 5, 4)
    assert periodic["streamInits"] == [{"timestamp": 1, "durationMillis": 2, "failed": False}]
    assert ours.periodic_event(0, 0)["streamInits"] == []


# -- socket ------------------------------------------------------------------------------


def test_socket_mode_is_explicit_and_stale_socket_replaced(tmp_path):
    path = str(tmp_path / "sub" / "ev.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    os.makedirs(os.path.dirname(path))
    old.bind(path)
    old.close()  # a stale socket file
    previous = os.umask(0o077)
    try:
        r = DatagramReceiver(path, 0o660, lambda d: None)
        r.bind()
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        r.close()
    assert not os.path.exists(path)


def test_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "ev.sock"
    path.write_text("not a socket")
    with pytest.raises(EventsError):
        DatagramReceiver(str(path), 0o660, lambda d: None).bind()
    assert path.read_text() == "not a socket"


def test_oversized_datagram_counted_invalid(tmp_path):
    got: List[Any] = []
    r = DatagramReceiver(str(tmp_path / "ev.sock"), 0o600, got.append)
    r.bind()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        valid = msgpack.packb({"v": 1, "pid": 1, "seq": 0})
        s.sendto(valid + b" " * 70000, r.path)
        s.sendto(valid, r.path)
        assert r.drain() == 2
    finally:
        s.close()
        r.close()
    assert r.invalid == 1 and r.received == 1 and len(got) == 1


def test_service_counters_and_send_events_off(fake, tmp_path):
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder

    shared: dict = {}
    cfg = config(fake, socket=str(tmp_path / "ev.sock"), flush_interval=60)
    service = EventService(cfg, shared)
    service.start()
    try:
        rec = EventRecorder(cfg)
        rec.record_custom("c", Context.create("u"))
        rec.close()
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"junk", cfg.socket_path)
        assert service.flush()
    finally:
        service.stop()
    assert shared == service.counters()
    assert shared["received"] == 1 and shared["invalid"] == 1 and shared["sent"] == 2
    assert [e["kind"] for e in fake.events[0].payload] == ["index", "custom"]
    assert not os.path.exists(cfg.socket_path)

    off = EventService(config(fake, socket=str(tmp_path / "off.sock"), send_events=False))
    off.start()
    try:
        rec = EventRecorder(config(fake, socket=str(tmp_path / "off.sock")))
        rec.record_custom("c", Context.create("u"))
        rec.close()
        assert not off.flush()
    finally:
        off.stop()
    assert len(fake.events) == 1 and off.counters()["dropped"] == 2


def test_service_sends_diagnostics(fake, tmp_path):
    cfg = Config(sdk_key="sdk-abcdef123456", events_uri=fake.url,
                 socket=str(tmp_path / "ev.sock"), flush_interval=60)
    service = EventService(cfg)
    service.start()
    try:
        assert fake.wait_for(lambda: len(fake.diagnostics) >= 1, timeout=5)
    finally:
        service.stop()
    assert fake.diagnostics[0].payload["kind"] == "diagnostic-init"


def test_service_and_idle_worker_flush_on_their_intervals(fake, tmp_path):
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder

    cfg = config(fake, socket=str(tmp_path / "ev.sock"), flush_interval=0.2)
    service = EventService(cfg)
    service.start()
    try:
        rec = EventRecorder(cfg)
        rec.record_evaluation("f", Context.create("idle"),
                              (True, 1, {"kind": "FALLTHROUGH"}, (1, 0, None, None), ()),
                              False, False)
        # no flush(), no close(): the worker's daemon thread and the service's flush thread
        assert fake.wait_for(lambda: len(fake.events) >= 1, timeout=5)
    finally:
        service.stop()
    kinds = [e["kind"] for p in fake.events for e in p.payload]
    assert kinds == ["index", "summary"]
