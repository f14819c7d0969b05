"""Self-test of the fake LaunchDarkly service (tests/fakes/fake_ld.py) with plain requests."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from tests.fakes.fake_ld import FakeLD

FLAG = {"key": "f1", "version": 1, "on": True, "variations": [True, False]}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.1) as f:
        yield f


def _read_lines(lines: Iterator[bytes], n: int) -> List[str]:
    out: List[str] = []
    for line in lines:
        out.append(line.decode())
        if len(out) >= n:
            break
    return out


def test_stream_initial_put_push_heartbeat_and_filter(fake: FakeLD) -> None:
    fake.set_data({"f1": FLAG}, {})
    with requests.get(fake.url + "/all?filter=mine", stream=True, timeout=5,
                      headers={"Authorization": "sdk-key"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        it = resp.iter_lines()
        first = _read_lines(it, 2)
        assert first[0] == "event: put"
        put = json.loads(first[1][len("data: "):])
        assert put == {"path": "/", "data": {"flags": {"f1": FLAG}, "segments": {}}}
        assert fake.wait_for_streams(1)
        assert fake.push("patch", {"path": "/flags/f1", "data": dict(FLAG, version=2)}) == 1
        got = []
        for line in it:
            got.append(line.decode())
            if got[-1].startswith("data: {"):
                break
        assert "event: patch" in got
        assert json.loads(got[-1][6:])["data"]["version"] == 2
        assert _read_lines(it, 3).count(":") >= 1  # heartbeats keep coming
    req = fake.requests_to("/all")[0]
    assert req.query == {"filter": ["mine"]}
    assert req.headers["Authorization"] == "sdk-key"
    # the patch also updated what a reconnecting client gets
    assert fake.data["flags"]["f1"]["version"] == 2


def test_disconnect_streams_ends_the_response(fake: FakeLD) -> None:
    with requests.get(fake.url + "/all", stream=True, timeout=5) as resp:
        assert fake.wait_for_streams(1)
        assert fake.disconnect_streams() == 1
        start = time.monotonic()
        for _ in resp.iter_lines():
            pass  # ends when the server closes
        assert time.monotonic() - start < 3
    assert fake.wait_for(lambda: fake.stream_count == 0, 2)


def test_polling_etag_and_304(fake: FakeLD) -> None:
    fake.set_data({"f1": FLAG}, {})
    r1 = requests.get(fake.url + "/sdk/latest-all", timeout=5)
    assert r1.status_code == 200 and r1.json()["flags"]["f1"] == FLAG
    etag = r1.headers["ETag"]
    r2 = requests.get(fake.url + "/sdk/latest-all", headers={"If-None-Match": etag}, timeout=5)
    assert r2.status_code == 304
    fake.set_data({"f1": dict(FLAG, version=2)}, {})
    r3 = requests.get(fake.url + "/sdk/latest-all", headers={"If-None-Match": etag}, timeout=5)
    assert r3.status_code == 200 and r3.headers["ETag"] != etag


def test_scripted_failures_per_path_and_times(fake: FakeLD) -> None:
    fake.respond_with(401, path="/all")
    fake.respond_with(500, path="/sdk/latest-all", times=1)
    assert requests.get(fake.url + "/all", timeout=5).status_code == 401
    assert requests.get(fake.url + "/all", timeout=5).status_code == 401
    assert requests.get(fake.url + "/sdk/latest-all", timeout=5).status_code == 500
    assert requests.get(fake.url + "/sdk/latest-all", timeout=5).status_code == 200
    fake.respond_with(200, path="/sdk/latest-all", body=b"{not json")
    assert requests.get(fake.url + "/sdk/latest-all", timeout=5).content == b"{not json"
    fake.clear_failures()
    assert requests.get(fake.url + "/sdk/latest-all", timeout=5).json() == {"flags": {}, "segments": {}}


def test_relay_mode_503_until_data() -> None:
    with FakeLD(relay=True) as fake:
        assert requests.get(fake.url + "/all", timeout=5).status_code == 503
        assert requests.get(fake.url + "/sdk/latest-all", timeout=5).status_code == 503
        fake.set_data({}, {})
        assert requests.get(fake.url + "/sdk/latest-all", timeout=5).status_code == 200


def test_bulk_and_diagnostic_recorded_with_headers(fake: FakeLD) -> None:
    r = requests.post(fake.url + "/bulk", json=[{"kind": "custom", "key": "k"}],
                      headers={"X-LaunchDarkly-Event-Schema": "4"}, timeout=5)
    assert r.status_code == 202
    requests.post(fake.url + "/diagnostic", json={"kind": "diagnostic-init"}, timeout=5)
    assert fake.events[0].payload == [{"kind": "custom", "key": "k"}]
    assert fake.events[0].headers["X-LaunchDarkly-Event-Schema"] == "4"
    assert fake.diagnostics[0].payload == {"kind": "diagnostic-init"}
    fake.respond_with(503, path="/bulk", times=1)
    assert requests.post(fake.url + "/bulk", json=[], timeout=5).status_code == 503
    assert len(fake.events) == 1  # the failed one is logged in requests, not in events
    assert [r.status for r in fake.requests_to("/bulk")] == [202, 503]


def test_runnable_as_module() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_ld", "--port", "0"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on http://127.0.0.1:" in line
        url = line.strip().rsplit(" ", 1)[-1]
        assert requests.get(url + "/sdk/latest-all", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(5)


def test_scripted_stream_body_initial_put_off_and_clear_data(fake: FakeLD) -> None:
    fake.respond_with(200, path="/all", body=b"event: put\ndata: {}\n\n", times=1)
    with requests.get(fake.url + "/all", stream=True, timeout=5) as resp:
        assert resp.content == b"event: put\ndata: {}\n\n"  # then the fake closed it
    fake.initial_put = False
    fake.heartbeat_interval = None
    with requests.get(fake.url + "/all", stream=True, timeout=5) as resp:
        assert fake.wait_for_streams(1)
        fake.push_raw(b": hello\n")
        assert next(resp.iter_lines()) == b": hello"  # nothing was sent before it
    fake.clear_data()
    assert requests.get(fake.url + "/sdk/latest-all", timeout=5).status_code == 503
    assert fake.data is None
