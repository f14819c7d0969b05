"""Operating the supervisor: sd_notify, /metrics and /status, config errors, JSON logs, heartbeat."""
from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor_harness import Harness, wait_for


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def flags(tmp_path) -> Path:
    path = tmp_path / "flags.yaml"
    path.write_text("flagValues:\n  color: red\n  size: 3\nsegments:\n  s1: {included: [a]}\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sd_notify_ready_status_watchdog_stopping(h, tmp_path, flags):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    messages = []

    def receive_until(pred):
        while not any(pred(m) for m in messages):
            messages.append(sock.recv(4096).decode())
        return next(m for m in messages if pred(m))

    try:
        sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags), "NOTIFY_SOCKET": path,
                           "WATCHDOG_USEC": "2000000"})
        ready = receive_until(lambda m: "READY=1" in m)
        assert h.ctl()["generation"] >= 1  # READY only after the first publish
        assert f"MAINPID={sup.pid}" in ready
        assert re.search(r"STATUS=(VALID|INITIALIZING), source file, generation [1-9]", ready)
        receive_until(lambda m: m == "WATCHDOG=1")
        receive_until(lambda m: m.startswith("STATUS="))
        sup.signal(signal.SIGTERM)
        receive_until(lambda m: m == "STOPPING=1")
        assert sup.proc.wait(10) == 0
    finally:
        sock.close()
    first_ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    first_stop = messages.index("STOPPING=1")
    assert first_ready < first_stop


def test_metrics_and_status_endpoints(h, flags):
    port = free_port()
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_METRICS_ADDR": f"127.0.0.1:{port}"})
    wait_for(lambda: h.flag_value("color") == "red", 10)

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.headers.get("Content-Type"), resp.read().decode()

    ctype, text = wait_for(lambda: _try(get, "/metrics"), 5.0, 0.05)
    assert ctype.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    generation = h.ctl()["generation"]
    assert samples[("shmflags_generation", ())] == generation
    assert samples[("shmflags_flags", ())] == 2
    assert samples[("shmflags_segments", ())] == 1
    assert samples[("shmflags_data_source_state", (("state", "VALID"),))] == 1
    assert samples[("shmflags_data_source_state", (("state", "OFF"),))] == 0
    assert samples[("shmflags_publishes_total", ())] >= 1
    assert samples[("shmflags_from_cache", ())] == 0
    assert ("shmflags_events_invalid_total", ()) in samples

    ctype, body = get("/status")
    assert ctype == "application/json"
    status = json.loads(body)
    assert status["state"] == "VALID" and status["generation"] == generation
    assert status["flags"] == 2 and status["source"] == "file"
    cli = h.status()
    assert {k: cli[k] for k in ("state", "generation", "flags", "segments", "source")} == \
           {k: status[k] for k in ("state", "generation", "flags", "segments", "source")}
    with pytest.raises(urllib.error.HTTPError):
        get("/nothing")


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return None


@pytest.mark.parametrize("env,args,setting", [
    ({"SHMFLAGS_POLL_INTERVAL": "soon"}, [], "SHMFLAGS_POLL_INTERVAL"),
    ({"SHMFLAGS_STREAM": "maybe"}, [], "SHMFLAGS_STREAM"),
    ({"SHMFLAGS_METRICS_ADDR": "nowhere"}, [], "SHMFLAGS_METRICS_ADDR"),
    ({}, ["--name", "bad name!"], "name"),
    ({}, ["--config", "CONFIG"], "flush_interval"),
    ({}, ["--config", "UNKNOWN"], "no_such_setting"),
    ({}, ["--config", "MISSING"], "config_file"),
])
def test_invalid_configuration_exits_2_naming_the_setting(h, tmp_path, env, args, setting):
    bad = tmp_path / "bad.toml"
    bad.write_text('[shmflags]\nflush_interval = "often"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("no_such_setting = 1\n")
    files = {"CONFIG": str(bad), "UNKNOWN": str(unknown), "MISSING": str(tmp_path / "none")}
    sup = h.start(*[files.get(a, a) for a in args], env=env)
    assert sup.proc.wait(10) == 2
    assert setting in sup.log()
    assert "invalid configuration" in sup.log()


def test_unusable_state_dir_exits_2(h, tmp_path, flags):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_STATE_DIR": str(not_a_dir)})
    assert sup.proc.wait(10) == 2
    assert "state_dir" in sup.log()


def test_toml_config_file_is_used(h, tmp_path, flags):
    config = tmp_path / "shmflags.toml"
    config.write_text(f'[shmflags]\ndata_file = ["{flags}"]\nlog_format = "json"\n')
    sup = h.start("--config", str(config))
    wait_for(lambda: h.flag_value("color") == "red", 10)
    wait_for(lambda: "published generation" in sup.log(), 2.0)
    records = [json.loads(line) for line in sup.log().splitlines() if line.startswith("{")]
    published = [r for r in records if "published generation" in r["message"]]
    assert published and published[0]["level"] == "INFO" and published[0]["pid"] == sup.pid


def test_heartbeat_advances_every_second(h, flags):
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    beats = set()
    deadline = time.monotonic() + 3.2
    while time.monotonic() < deadline:
        status = h.ctl()
        assert status["heartbeat_age_s"] < 1.5
        beats.add(status["heartbeat"])
        time.sleep(0.1)
    assert len(beats) >= 3
