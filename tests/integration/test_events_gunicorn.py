"""Events under worker recycle: gunicorn with --preload and max_requests loses no evaluation.

The recorder is created in the gunicorn master (``--preload``), so every worker inherits it
through fork and must start with its own empty window and socket (the master's own evaluation is sent once,
by the master); workers recycle every few
requests and leave through a normal interpreter exit. One supervisor-side EventService
receives everything; the delivered summary must count every request exactly once, and the
single context must be indexed once for the whole host.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from shmflags.config import Config
from shmflags.events.service import EventService
from tests.fakes.fake_ld import FakeLD

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")

APP = textwrap.dedent("""
    import os
    if os.environ.get("EV_NO_FORK_HOOK"):  # fork as uWSGI does by default: no CPython handlers
        os.register_at_fork = lambda **kw: None
    from shmflags.config import Config
    from shmflags.context import Context
    from shmflags.events.recorder import EventRecorder

    REC = EventRecorder(Config(socket=os.environ["EV_SOCK"], flush_interval=60))
    CTX = Context.builder("gunicorn-user").set("plan", "pro").build()
    T = (True, 1, {"kind": "FALLTHROUGH"}, (1, 0, None, None), ())
    if not os.environ.get("EV_NO_FORK_HOOK"):
        REC.record_evaluation("master-flag", CTX, T, False, False)  # in the master, before fork

    def app(environ, start_response):
        REC.record_evaluation("g-flag", CTX, T, False, False)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    deadline = time.time() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists(GUNICORN), reason="gunicorn not installed")
@pytest.mark.parametrize("fork_hook", [True, False])
def test_worker_recycling_loses_no_evaluation(tmp_path, fork_hook):
    (tmp_path / "evapp.py").write_text(APP)
    requests_n = 150
    with FakeLD(heartbeat_interval=None) as fake:
        config = Config(sdk_key="sdk-gunicorn", events_uri=fake.url,
                        socket=str(tmp_path / "ev.sock"), flush_interval=60,
                        diagnostic_opt_out=True)
        service = EventService(config)
        service.start()
        port = _free_port()
        env = dict(os.environ, EV_SOCK=config.socket_path,
                   PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
        if not fork_hook:
            env["EV_NO_FORK_HOOK"] = "1"
        proc = subprocess.Popen(
            [GUNICORN, "--preload", "-w", "2", "--max-requests", "10", "-b", f"127.0.0.1:{port}",
             "--graceful-timeout", "10", "--log-level", "warning", "evapp:app"],
            env=env, cwd=str(tmp_path))
        try:
            pids = {_get(f"http://127.0.0.1:{port}/") for _ in range(requests_n)}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            service.flush()
            service.stop()
        counts = [c["count"] for p in fake.events for e in p.payload if e["kind"] == "summary"
                  for c in e["features"].get("g-flag", {"counters": []})["counters"]]
        master = [c["count"] for p in fake.events for e in p.payload if e["kind"] == "summary"
                  for c in e["features"].get("master-flag", {"counters": []})["counters"]]
        index = [e for p in fake.events for e in p.payload if e["kind"] == "index"]
    assert len(pids) >= requests_n // 10  # workers really were recycled
    assert sum(counts) == requests_n
    # sent by the master at its exit, never again by a worker
    assert sum(master) == (1 if fork_hook else 0)
    assert len(index) == 1 and index[0]["context"]["key"] == "gunicorn-user"
    assert service.counters()["invalid"] == 0
