"""Supervisor restarts: last-known-good after kill -9, corrupt cache, SIGTERM, cleanup, the lock."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from shmflags import shm
from shmflags.supervisor import lastgood
from supervisor_harness import Harness, wait_for
from tests.fakes.fake_ld import FakeLD


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_ld() -> dict:
    """Settings of a streaming source whose every endpoint refuses connections."""
    url = f"http://127.0.0.1:{closed_port()}"
    return {"SHMFLAGS_SDK_KEY": "sdk-test-key", "SHMFLAGS_STREAM_URI": url,
            "SHMFLAGS_BASE_URI": url, "SHMFLAGS_EVENTS_URI": url}


def lastgood_path(h: Harness) -> Path:
    return h.state_dir / f"{h.name}.lastgood"


def serve_file_then_kill9(h: Harness, tmp_path: Path) -> int:
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: cached-red\n")
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "cached-red", 10)
    wait_for(lambda: lastgood_path(h).exists(), 1.0)  # written within 1 s of the publish
    generation = h.ctl()["generation"]
    sup.kill9()
    return generation


def test_restart_after_kill9_serves_last_good_within_2s_from_cache(h, tmp_path):
    old_generation = serve_file_then_kill9(h, tmp_path)
    started = time.monotonic()
    sup = h.start(env={**unreachable_ld(), "SHMFLAGS_GENERATION_GRACE": "0.5"})
    wait_for(lambda: h.ctl()["supervisor_pid"] == sup.pid and h.ctl()["generation"]
             > old_generation, 2.0)
    assert time.monotonic() - started < 2.0
    assert h.flag_value("color") == "cached-red"
    status = h.status()
    assert status["from_cache"] is True
    assert status["source"] == "cache"
    assert status["supervisor_pid"] == sup.pid
    assert status["generation"] > old_generation
    assert "last-known-good" in sup.log()
    # What the dead supervisor left is unlinked after the grace period; the new one serves.
    wait_for(lambda: shm.list_objects(h.name)[1] == [status["generation"]], 3.0)


def test_offline_mode_serves_last_good_and_is_off(h, tmp_path):
    serve_file_then_kill9(h, tmp_path)
    sup = h.start(env={"SHMFLAGS_OFFLINE": "true"})
    wait_for(lambda: h.ctl()["supervisor_pid"] == sup.pid and h.ctl()["state"] == "OFF", 2.0)
    status = h.status()
    assert status["from_cache"] is True
    assert status["socket"] is None and status["events"] is None  # no events offline
    assert h.flag_value("color") == "cached-red"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_last_good_file_is_ignored_with_a_log_line(h, tmp_path, damage):
    serve_file_then_kill9(h, tmp_path)
    shm.cleanup(h.name)
    path = lastgood_path(h)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:])
    else:
        path.write_bytes(b"not a last-good file at all")
    sup = h.start(env={"SHMFLAGS_OFFLINE": "true"})
    wait_for(lambda: "ignoring last-known-good file" in sup.log(), 5.0)
    wait_for(lambda: h.ctl()["supervisor_pid"] == sup.pid, 5.0)
    time.sleep(0.3)
    assert h.ctl()["generation"] == 0  # nothing was published from the bad file
    assert sup.proc.poll() is None
    assert h.cli("status").returncode == 1


def test_sigterm_leaves_generation_and_cleanup_removes_it(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: red\n")
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    assert sup.stop() == 0
    assert "stopping (SIGTERM)" in sup.log()
    has_ctl, generations = shm.list_objects(h.name)
    assert has_ctl and generations
    assert h.flag_value("color") == "red"  # a worker keeps serving it
    status = h.status()
    assert status["serving"] and status["supervisor_alive"] is False
    out = h.cli("cleanup")
    assert out.returncode == 0, out.stderr
    assert shm.list_objects(h.name) == (False, [])
    assert h.cli("status").returncode == 1


def test_cleanup_refuses_while_supervisor_runs(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: red\n")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    out = h.cli("cleanup")
    assert out.returncode == 1 and "stop it first" in out.stderr
    assert shm.list_objects(h.name)[0]


def test_second_supervisor_on_same_namespace_exits_3(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: red\n")
    first = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    second = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    assert second.proc.wait(10) == 3
    assert f"pid {first.pid}" in second.log()
    assert first.proc.poll() is None
    assert h.ctl()["supervisor_pid"] == first.pid


def test_cache_then_live_data_from_the_stream(h, tmp_path):
    serve_file_then_kill9(h, tmp_path)
    live = {"color": {"key": "color", "version": 5, "on": True, "variations": ["live-blue"],
                      "fallthrough": {"variation": 0}}}
    with FakeLD() as fake:
        fake.set_data(live, {})
        fake.respond_with(503, path="/all", times=3)  # the stream fails a few times first
        url = fake.url
        sup = h.start(env={"SHMFLAGS_SDK_KEY": "sdk-test-key", "SHMFLAGS_STREAM_URI": url,
                           "SHMFLAGS_BASE_URI": url, "SHMFLAGS_EVENTS_URI": url,
                           "SHMFLAGS_INITIAL_RECONNECT_DELAY": "0.2"})
        wait_for(lambda: h.ctl()["supervisor_pid"] == sup.pid and h.ctl()["from_cache"], 2.0)
        assert h.flag_value("color") == "cached-red"
        wait_for(lambda: h.flag_value("color") == "live-blue", 10.0)
        status = h.status()
        assert status["from_cache"] is False and status["source"] == "streaming"
        assert status["state"] == "VALID"
        # The live data replaces the last-known-good file within a second.
        wait_for(lambda: lastgood.load(str(lastgood_path(h))).flags["color"]["version"] == 5,
                 1.5)
        assert sup.stop() == 0


def test_status_reports_interrupted_once_the_heartbeat_is_stale(h, tmp_path):
    generation = serve_file_then_kill9(h, tmp_path)
    env = {"SHMFLAGS_HEARTBEAT_TIMEOUT": "1"}
    wait_for(lambda: h.ctl()["heartbeat_age_s"] > 1.2, 5.0)
    out = h.cli("status", "--json", env=env)
    assert out.returncode == 0  # the last generation is still served
    status = json.loads(out.stdout)
    assert status["state"] == "INTERRUPTED" and status["supervisor_state"] == "VALID"
    assert "stopped its heartbeat" in status["last_error"]["message"]
    assert status["generation"] == generation and status["supervisor_alive"] is False
