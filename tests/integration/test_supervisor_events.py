"""The supervisor's event service: counters in `shmflags status`, SIGTERM flushes to LaunchDarkly."""
from __future__ import annotations

import socket

import pytest

from shmflags.config import Config
from shmflags.context import Context
from shmflags.events.recorder import EventRecorder
from supervisor_harness import Harness, wait_for
from tests.fakes.fake_ld import FakeLD


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_counters_in_status_and_sigterm_flushes_events(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: red\n")
    sock_path = str(tmp_path / "events.sock")
    with FakeLD() as fake:
        env = {"SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_SEND_EVENTS": "true",
               "SHMFLAGS_SDK_KEY": "sdk-events-test", "SHMFLAGS_EVENTS_URI": fake.url,
               "SHMFLAGS_SOCKET": sock_path, "SHMFLAGS_FLUSH_INTERVAL": "600",
               "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true"}
        sup = h.start(env=env)
        wait_for(lambda: h.flag_value("color") == "red", 10)
        status = h.status()
        assert status["socket"] == sock_path
        assert status["events"] == {"received": 0, "sent": 0, "dropped": 0, "invalid": 0}

        recorder = EventRecorder(Config(environ={}, socket=sock_path, send_events=True))
        recorder.record_custom("checkout-done", Context.create("user-1"), None, None)
        recorder.flush()
        junk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        junk.sendto(b"\xc1 not msgpack", sock_path)
        junk.close()
        events = wait_for(lambda: (lambda e: e if e["received"] >= 1 and e["invalid"] >= 1
                                   else None)(h.status()["events"]), 5.0, 0.2)
        assert events["invalid"] == 1
        assert fake.events == []  # flush_interval is 10 minutes: nothing sent yet

        assert sup.stop() == 0
        kinds = [e.get("kind") for payload in fake.events for e in payload.payload]
        assert "custom" in kinds
        custom = next(e for p in fake.events for e in p.payload if e.get("kind") == "custom")
        assert custom["key"] == "checkout-done"
        recorder.close()
