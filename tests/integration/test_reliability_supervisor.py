"""Reliability promises of DESIGN §12 on the supervisor side, with a real ``shmflags-supervisor``.

* malformed and oversized stream messages: the last good data stays served, the supervisor
  stays up, the stream reconnects, the state is INTERRUPTED (``INVALID_DATA``) until a valid
  ``put`` arrives; ``max_stream_message_bytes`` is the setting;
* modes under ``umask 0``: control block and data objects 0640 (``shm_mode``), event socket 0660
  (``socket_mode``), ``shm_group`` applied; an unprivileged user cannot open a data object
  unless it is in ``shm_group``, and can never open one for writing;
* a restarted supervisor publishes the last-known-good data before its first request to the
  source;
* after a 401 from the events service, a fixed ``sdk_key`` and SIGHUP resume event delivery;
* a flag file with data ldclient refuses keeps the previous data;
* Redis down in daemon mode: the last data stays, INTERRUPTED, recovery by itself;
* the stream's reconnect backoff starts over after a connection stayed up 60 s (the streaming
  source in-process against the fake service, its backoff clock under test control).

The other rows of §12 are proven where their module owners put them; the map is in
``docs/failure-modes.md``. Each test uses its own namespace, state directory, socket and
loopback ports, and stops every process it started by its pid.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from shmflags import shm
from supervisor_harness import Harness, wait_for
from tests.fakes.fake_ld import FakeLD, sse_frame

ROOT = str(Path(__file__).resolve().parents[2])


def flag(key: str, version: int, value: Any, **extra: Any) -> Dict[str, Any]:
    out = {"key": key, "version": version, "on": True, "variations": [value, "off"],
           "fallthrough": {"variation": 0}, "offVariation": 1, "targets": [], "rules": [],
           "prerequisites": [], "salt": key}
    out.update(extra)
    return out


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def ld_env(fake: FakeLD, **extra: str) -> Dict[str, str]:
    env = {"SHMFLAGS_SDK_KEY": "sdk-reliability", "SHMFLAGS_STREAM_URI": fake.url,
           "SHMFLAGS_BASE_URI": fake.url, "SHMFLAGS_EVENTS_URI": fake.url,
           "SHMFLAGS_INITIAL_RECONNECT_DELAY": "0.05"}
    env.update(extra)
    return env


def color(h: Harness) -> Any:
    f = h.raw_flag("color")
    return f and f["variations"][0]


# -- malformed and oversized stream messages -------------------------------------------------

LIMIT = 4096   # SHMFLAGS_MAX_STREAM_MESSAGE_BYTES of the test

BAD_MESSAGES = {
    "json": sse_frame("patch", "{not json"),
    "put-flags-not-object": sse_frame("put", {"path": "/", "data": {"flags": [], "segments": {}}}),
    "put-without-data": sse_frame("put", {"path": "/"}),
    "patch-without-version": sse_frame("patch", {"path": "/flags/color",
                                                 "data": {"key": "color", "on": False}}),
    "patch-not-an-object": sse_frame("patch", [1, 2, 3]),
    "patch-not-utf8": b"event: patch\ndata: {\"path\": \"/flags/\xff\xfe\"}\n\n",
    # shapes ldclient's store refuses (a list where an object is required, and so on)
    "put-flag-variations-not-a-list": sse_frame("put", {"path": "/", "data": {
        "flags": {"color": dict(flag("color", 9, "x"), variations="red")}, "segments": {}}}),
    "patch-flag-rules-not-a-list": sse_frame("patch", {"path": "/flags/color", "data": dict(
        flag("color", 9, "x"), rules={"clauses": []})}),
    "patch-segment-included-not-a-list": sse_frame("patch", {"path": "/segments/s", "data": {
        "key": "s", "version": 9, "included": "u1"}}),
    "oversized": sse_frame("patch", {"path": "/flags/color",
                                     "data": flag("color", 9, "huge", description="x" * 10000)}),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_stream_message_keeps_last_good_data_and_reconnects(h: Harness, case: str) -> None:
    with FakeLD(heartbeat_interval=0.5) as fake:
        fake.set_data({"color": flag("color", 1, "red")}, {})
        sup = h.start(env=ld_env(fake, SHMFLAGS_MAX_STREAM_MESSAGE_BYTES=str(LIMIT)))
        wait_for(lambda: color(h) == "red", 15)
        assert fake.wait_for_streams(1)
        fake.push("patch", {"path": "/flags/color", "data": flag("color", 2, "blue")})
        wait_for(lambda: color(h) == "blue", 5)
        generation = h.ctl()["generation"]
        connections = len(fake.requests_to("/all"))

        # The reconnection gets a stream without the initial put, so nothing valid arrives.
        fake.initial_put = False
        assert fake.push_raw(BAD_MESSAGES[case]) >= 1
        st = wait_for(lambda: (lambda s: s if s.get("state") == "INTERRUPTED" else None)(
            h.status()), 10)
        assert st["last_error"]["kind"] == "INVALID_DATA", st
        if case == "oversized":
            assert f"larger than {LIMIT}" in st["last_error"]["message"], st
        wait_for(lambda: len(fake.requests_to("/all")) > connections, 10)   # reconnected
        time.sleep(0.5)
        st = h.status()
        assert st["state"] == "INTERRUPTED", st              # until a valid put
        assert st["supervisor_pid"] == sup.pid and sup.proc.poll() is None
        assert st["generation"] == generation                 # nothing invalid was published
        assert color(h) == "blue"                             # the last good data
        assert h.cli("status").returncode == 0                # a snapshot is being served

        # A valid put on the reconnected stream: VALID again with the new data.
        fake.initial_put = True
        assert fake.wait_for_streams(1)
        fake.push("put", {"path": "/", "data": {"flags": {"color": flag("color", 3, "green")},
                                                "segments": {}}})
        wait_for(lambda: color(h) == "green", 5)
        wait_for(lambda: h.status().get("state") == "VALID", 5)
        assert h.status()["last_error"]["kind"] == "INVALID_DATA"   # kept for the operator
        assert sup.proc.poll() is None
        log = sup.log()
    assert "Traceback" not in log, log[-3000:]


# -- modes -----------------------------------------------------------------------------------

PROBE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    import posix_ipc
    from shmflags import shm             # import first: the venv may be unreadable to nobody
    from shmflags.snapshot.reader import SnapshotReader
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    out = {{}}
    for label, obj in (("ctl", {ctl!r}), ("data", {data!r})):
        for how, flags in (("read", dict(read_only=True)), ("write", dict())):
            try:
                posix_ipc.SharedMemory(obj, 0, **flags).close_fd()
                out[label + "_" + how] = "ok"
            except posix_ipc.PermissionsError:
                out[label + "_" + how] = "denied"
    try:
        att = shm.Attachment({name!r})
        out["flags"] = SnapshotReader(att.snapshot_buffer(), verify_checksum=False).n_flags
    except Exception as exc:
        out["flags"] = type(exc).__name__
    print(json.dumps(out))
""")


def probe_as_nobody(name: str, generation: int) -> Dict[str, Any]:
    code = PROBE.format(root=ROOT, name=name, ctl=shm.ctl_name(name),
                        data=shm.data_name(name, generation))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def shm_path(obj: str) -> str:
    return os.path.join("/dev/shm", obj.lstrip("/"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
@pytest.mark.parametrize("group", [None, "nogroup"])
def test_modes_whatever_the_umask_and_unprivileged_access(h: Harness, tmp_path: Path,
                                                          group: Any) -> None:
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: red\n")
    sock = tmp_path / "ev.sock"
    env = {"SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_SOCKET": str(sock),
           "SHMFLAGS_SEND_EVENTS": "true", "SHMFLAGS_SDK_KEY": "sdk-modes",
           "SHMFLAGS_EVENTS_URI": "http://127.0.0.1:9", "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true"}
    if group:
        env["SHMFLAGS_SHM_GROUP"] = group
    old = os.umask(0)          # inherited by the supervisor
    try:
        sup = h.start(env=env)
    finally:
        os.umask(old)
    wait_for(lambda: h.flag_value("color") == "red", 10)
    wait_for(sock.exists, 5)
    generation = h.ctl()["generation"]
    ctl, data = shm.ctl_name(h.name), shm.data_name(h.name, generation)
    gid = 65534 if group else os.getgid()
    for obj in (ctl, data):
        st = os.stat(shm_path(obj))
        assert stat.S_IMODE(st.st_mode) == 0o640, (obj, oct(st.st_mode))
        assert st.st_gid == gid, (obj, st.st_gid)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)

    seen = probe_as_nobody(h.name, generation)
    # Never writable by anyone but the supervisor's user.
    assert seen["ctl_write"] == seen["data_write"] == "denied", seen
    if group:       # in shm_group: reads the snapshot
        assert seen["ctl_read"] == seen["data_read"] == "ok", seen
        assert seen["flags"] == 1, seen
    else:           # other users: cannot even open it
        assert seen["ctl_read"] == seen["data_read"] == "denied", seen
        assert seen["flags"] == "SnapshotUnavailable", seen
    assert sup.proc.poll() is None


# -- last-known-good before any source -------------------------------------------------------

def test_restart_publishes_last_good_before_contacting_the_source(h: Harness,
                                                                  tmp_path: Path) -> None:
    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: cached-red\n")
    first = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "cached-red", 10)
    wait_for(lambda: (h.state_dir / f"{h.name}.lastgood").exists(), 1.0)
    old_generation = h.ctl()["generation"]
    first.kill9()
    with FakeLD(heartbeat_interval=0.5) as fake:
        fake.set_data({"color": flag("color", 7, "live-blue")}, {})
        fake.respond_with(503, path="/all")           # LaunchDarkly having a bad day
        sup = h.start(env=ld_env(fake))
        wait_for(lambda: h.ctl()["supervisor_pid"] == sup.pid
                 and h.ctl()["generation"] > old_generation, 2.0)
        published = h.ctl()["last_update"]
        assert fake.wait_for_requests("/all", 1)
        contacted = min(r.time for r in fake.requests_to("/all"))
        assert published <= contacted, (published, contacted)
        assert h.flag_value("color") == "cached-red"
        st = h.status()
        assert st["source"] == "cache" and st["from_cache"] is True, st
        fake.clear_failures()
        wait_for(lambda: h.flag_value("color") == "live-blue", 15)
        st = h.status()
        assert st["source"] == "streaming" and st["from_cache"] is False, st


# -- SDK key rejected, fixed, reloaded ---------------------------------------------------------

def test_sighup_with_a_fixed_sdk_key_resumes_event_delivery(h: Harness, tmp_path: Path) -> None:
    """The events service rejected the key (401 disables sending, as in ldclient); the operator
    fixes ``sdk_key`` in the configuration file and reloads: events flow again, with the new
    key, without a restart."""
    import signal
    import tempfile

    from shmflags.config import Config
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder

    flags = tmp_path / "flags.yaml"
    flags.write_text("flagValues:\n  color: red\n")
    config = tmp_path / "shmflags.toml"
    config.write_text('[shmflags]\nsdk_key = "sdk-revoked"\n')
    sock_dir = Path(tempfile.mkdtemp(prefix="shmrel"))
    sock = sock_dir / "ev.sock"
    try:
        with FakeLD(heartbeat_interval=None) as fake:
            fake.respond_with(401, path="/bulk", times=1)
            sup = h.start("--config", str(config), env={
                "SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_EVENTS_URI": fake.url,
                "SHMFLAGS_SEND_EVENTS": "true", "SHMFLAGS_SOCKET": str(sock),
                "SHMFLAGS_FLUSH_INTERVAL": "0.2", "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true"})
            wait_for(lambda: h.flag_value("color") == "red", 10)
            wait_for(sock.exists, 10)
            recorder = EventRecorder(Config(socket=str(sock), flush_interval=0.1))
            recorder.record_custom("before-fix", Context.create("u1"))
            recorder.flush()
            wait_for(lambda: "event sending is disabled" in sup.log(), 10)

            config.write_text('[shmflags]\nsdk_key = "sdk-fixed"\n')
            sup.signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: configuration reloaded" in sup.log(), 10)
            recorder.record_custom("after-fix", Context.create("u1"))
            recorder.flush()

            def accepted() -> list:
                return [r for r in fake.requests_to("/bulk") if r.status < 300
                        and r.headers.get("Authorization") == "sdk-fixed"]
            wait_for(accepted, 10)
            recorder.close()
            keys = [e.get("key") for p in fake.events for e in p.payload]
            assert "after-fix" in keys, keys
            assert sup.proc.poll() is None
    finally:
        for child in sock_dir.iterdir():
            child.unlink()
        sock_dir.rmdir()


# -- flag file with data ldclient refuses ------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"flags": {"color": {"key": "color", "version": 2, "on": True, "variations": "blue",
                         "fallthrough": {"variation": 0}}}},
    {"flags": {"color": {"key": "color", "version": 2, "on": True, "variations": ["blue"],
                         "fallthrough": {"variation": 0}, "targets": {"values": ["u1"]}}}},
    {"flagValues": {"color": "blue"}, "segments": {"s": {"included": "u1"}}},
], ids=["variations-not-a-list", "targets-not-a-list", "segment-included-not-a-list"])
def test_flag_file_with_data_ldclient_refuses_keeps_the_previous_data(
        h: Harness, tmp_path: Path, bad: Dict[str, Any]) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flagValues": {"color": "red"}}))
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(path)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    generation = h.ctl()["generation"]
    path.write_text(json.dumps(bad))
    st = wait_for(lambda: (lambda s: s if s.get("state") == "INTERRUPTED" else None)(
        h.status()), 5)
    assert st["last_error"]["kind"] == "INVALID_DATA", st
    assert st["generation"] == generation and h.flag_value("color") == "red"
    assert "cannot load flag data" in sup.log()
    path.write_text(json.dumps({"flagValues": {"color": "green"}}))   # fixed: picked up
    wait_for(lambda: h.flag_value("color") == "green", 5)
    wait_for(lambda: h.status().get("state") == "VALID", 5)


# -- Redis down (daemon mode) ------------------------------------------------------------------

def test_redis_down_keeps_the_data_and_recovers(h: Harness) -> None:
    from tests.fakes.redis_server import RedisServer, redis_server_available
    if not redis_server_available():
        pytest.skip("redis-server not installed")
    redis = pytest.importorskip("redis")
    prefix = f"rel{os.getpid()}"

    def fill(url: str, value: str, version: int) -> None:
        client = redis.Redis.from_url(url)
        client.hset(f"{prefix}:features", "color", json.dumps(flag("color", version, value)))
        client.set(f"{prefix}:$inited", "")
        client.close()

    with RedisServer() as server:
        port = server.port
        fill(server.url, "red", 1)
        sup = h.start(env={"SHMFLAGS_USE_LDD": "true", "SHMFLAGS_REDIS_URL": server.url,
                           "SHMFLAGS_REDIS_PREFIX": prefix,
                           "SHMFLAGS_REDIS_REFRESH_INTERVAL": "0.2"})
        wait_for(lambda: color(h) == "red", 15)
        generation = h.ctl()["generation"]
        server.stop()                                   # Redis goes away
        st = wait_for(lambda: (lambda s: s if s.get("state") == "INTERRUPTED" else None)(
            h.status()), 10)
        assert st["last_error"]["kind"] == "NETWORK_ERROR" and "Redis" in \
            st["last_error"]["message"], st
        time.sleep(0.5)
        assert color(h) == "red" and h.ctl()["generation"] == generation
        assert "Redis read failed" in sup.log()
    with RedisServer(port=port) as server:              # back, with newer data
        fill(server.url, "blue", 2)
        wait_for(lambda: color(h) == "blue", 10)
        wait_for(lambda: h.status().get("state") == "VALID", 5)
        assert sup.proc.poll() is None


# -- stream backoff resets after 60 s connected -------------------------------------------------

def test_stream_backoff_resets_after_60s_connected() -> None:
    """The streaming source against the fake service, with the backoff's clock under test
    control: a connection dropped soon after it was made keeps doubling the delay; one that
    stayed up 60 s starts over from ``initial_reconnect_delay`` (DESIGN §12)."""
    from shmflags.config import Config
    from shmflags.supervisor.http import Backoff
    from shmflags.supervisor.sources.streaming import StreamingSource
    from tests.fakes.sink import RecordingSink

    now = [1000.0]
    backoff = Backoff(0.1, rng=lambda: 0.0, clock=lambda: now[0])
    with FakeLD(heartbeat_interval=0.2) as fake:
        fake.set_data({"color": flag("color", 1, "red")}, {})
        fake.respond_with(503, path="/all", times=3)        # delays 0.1, 0.2, 0.4 s
        sink = RecordingSink()
        cfg = Config("sdk-test-key", stream_uri=fake.url, base_uri=fake.url,
                     events_uri=fake.url, initial_reconnect_delay=0.1, environ={})
        src = StreamingSource(cfg, sink, _backoff=backoff)
        src.start()
        try:
            assert sink.wait_count("init", 1, timeout=10)
            assert fake.disconnect_streams() == 1          # dropped at once: 4th failure
            assert sink.wait_count("init", 2, timeout=10)
            now[0] += 61.0                                  # this connection lasts 61 s
            assert fake.disconnect_streams() == 1          # counted afresh: 1st failure
            assert sink.wait_count("init", 3, timeout=10)
        finally:
            src.stop()
        times = [r.time for r in fake.requests_to("/all")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"\nreconnect gaps: {[round(g, 2) for g in gaps]}")
    assert len(gaps) == 5, gaps
    assert gaps[3] >= 0.75, gaps            # 0.8 s: the doubling went on
    assert gaps[4] < 0.5, gaps              # 0.1 s: reset after 60 s connected
