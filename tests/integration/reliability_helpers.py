"""Test helper for ``tests/integration/test_reliability_*.py``: worker processes on the public
client API beside a real ``shmflags-supervisor``.

* the worker side: this module run as a script, ``python reliability_helpers.py MODE ARGS``,
  is one worker process that uses only ``shmflags.get()`` (configured by ``SHMFLAGS_*``
  variables) or ``shmflags.Client(shmflags.Config(...))`` and prints one JSON object per line
  on stdout (see :data:`WORKERS` for the modes);
* the test side: :class:`Worker` (one such process, its stdout collected by a thread),
  :func:`start_workers`, the fixtures ``h`` (a :class:`supervisor_harness.Harness`),
  ``workers`` (every worker started, killed by pid at the end) and ``short_dir`` (a short
  directory for an event socket), flag builders and small utilities.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

TARGETED = [f"u{i}" for i in range(10)]
USERS = [f"u{i}" for i in range(40)]
SECONDS = float(os.environ.get("SHMFLAGS_RELIABILITY_SECONDS", "5"))


def tier_flag(version: int = 1) -> Dict[str, Any]:
    """``tier``: ``gold`` for the targeted users, ``basic`` for everyone else."""
    return {"key": "tier", "version": version, "on": True, "variations": ["basic", "gold"],
            "targets": [{"variation": 1, "values": TARGETED}], "contextTargets": [],
            "rules": [], "fallthrough": {"variation": 0}, "offVariation": 0,
            "prerequisites": [], "salt": "tier"}


def value_flag(key: str, version: int, value: Any) -> Dict[str, Any]:
    return {"key": key, "version": version, "on": True, "variations": [value],
            "targets": [], "rules": [], "fallthrough": {"variation": 0}, "offVariation": 0,
            "prerequisites": [], "salt": key}


def expected_tier(user: str) -> str:
    return "gold" if user in TARGETED else "basic"


# ---------------------------------------------------------------------------- worker side

def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def worker_watch(stop_file: str) -> None:
    """Evaluate ``tier`` and ``color`` for 40 users until ``stop_file`` exists; report every
    change of the data source state and, at the end, the evaluations and wrong values."""
    import shmflags
    client = shmflags.get()
    evaluations = wrong = 0
    bad: List[Any] = []
    last_state = None
    next_status = 0.0
    while not os.path.exists(stop_file):
        for user in USERS:
            ctx = {"kind": "user", "key": user}
            tier = client.variation("tier", ctx, "default")
            color = client.variation("color", ctx, "default")
            evaluations += 2
            if tier != expected_tier(user) or color != "red":
                wrong += 1
                if len(bad) < 5:
                    bad.append([user, tier, color, time.time()])
        now = time.monotonic()
        if now >= next_status:
            next_status = now + 0.02
            state = client.data_source_status_provider.status.state.name
            if state != last_state:
                last_state = state
                _emit(ev="state", state=state, t=time.time(), evaluations=evaluations)
        time.sleep(0.001)
    _emit(ev="done", evaluations=evaluations, wrong=wrong, bad=bad)


def worker_before(name: str, deadline_s: str) -> None:
    """Started before any supervisor, through ``Client(Config(name=...))``: evaluate until a
    real value has been served for a while; report the first detail and when values turned
    real."""
    import logging

    import shmflags
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    client = shmflags.Client(shmflags.Config(name=name, start_wait=0))
    ctx = {"kind": "user", "key": "u1"}
    first = client.variation_detail("color", ctx, "default")
    _emit(ev="first", value=first.value, reason=first.reason,
          initialized=client.is_initialized(), t=time.time())
    deadline = time.monotonic() + float(deadline_s)
    real_at: Optional[float] = None
    defaults = 0
    went_back = False
    while time.monotonic() < deadline:
        detail = client.variation_detail("color", ctx, "default")
        if detail.value == "red":
            if real_at is None:
                real_at = time.time()
            elif time.time() - real_at > 0.3:
                break
        else:
            if real_at is not None:
                went_back = True
            defaults += 1
            if detail.reason != {"kind": "ERROR", "errorKind": "CLIENT_NOT_READY"}:
                _emit(ev="unexpected", reason=detail.reason, value=detail.value)
        time.sleep(0.001)
    _emit(ev="done", real_at=real_at, defaults=defaults, went_back=went_back,
          initialized=client.is_initialized())
    client.close()


def worker_torn(stop_file: str) -> None:
    """``all_flags_state`` in a loop: every flag must carry the same generation tag (value and
    version), and the tag never goes back."""
    import shmflags
    client = shmflags.get()
    ctx = {"kind": "user", "key": "torn"}
    checks = inconsistent = went_back = 0
    tags = set()
    last = 0
    bad: List[Any] = []
    while not os.path.exists(stop_file):
        state = client.all_flags_state(ctx).to_json_dict()
        values = {v for k, v in state.items() if not k.startswith("$")}
        versions = {m.get("version") for m in state["$flagsState"].values()}
        checks += 1
        n_flags = sum(1 for k in state if not k.startswith("$"))
        if len(values) != 1 or versions != values or n_flags != 20:
            inconsistent += 1
            if len(bad) < 3:
                bad.append(sorted(map(str, values | versions)))
            continue
        tag = values.pop()
        if tag < last:
            went_back += 1
        last = tag
        tags.add(tag)
    _emit(ev="done", checks=checks, inconsistent=inconsistent, went_back=went_back,
          tags=len(tags), bad=bad)


def worker_events(stop_file: str, go_file: str, max_tracks: str) -> None:
    """Evaluate ``f1`` and track ``clicked`` (every 10th call, at most ``max_tracks`` times)
    until ``stop_file`` exists, timing each call; report the counts, then wait for
    ``go_file`` and flush and close (every event must then get through)."""
    import shmflags
    client = shmflags.get()
    ctx = {"kind": "user", "key": "events-worker"}
    slowest = 0.0
    values = set()
    evaluations = tracks = 0
    started = time.monotonic()
    while not os.path.exists(stop_file):
        t0 = time.perf_counter()
        values.add(client.variation("f1", ctx, "default"))
        evaluations += 1
        if evaluations % 10 == 0 and tracks < int(max_tracks):
            client.track("clicked", ctx)
            tracks += 1
        slowest = max(slowest, time.perf_counter() - t0)
        if evaluations == 1:
            _emit(ev="started")
        if evaluations % 100 == 0:
            time.sleep(0.002)      # spread the calls over the test
    elapsed = time.monotonic() - started
    _emit(ev="looped", evaluations=evaluations, tracks=tracks)
    while not os.path.exists(go_file):
        time.sleep(0.01)
    client.flush()
    client.close()
    _emit(ev="done", evaluations=evaluations, tracks=tracks, slowest=slowest,
          elapsed=elapsed, values=sorted(map(str, values)))


def worker_maps(stop_file: str) -> None:
    """Evaluate ``color`` until ``stop_file`` exists; sample how many objects of the
    namespace this process maps (``/proc/self/maps``) after each evaluation."""
    import shmflags
    client = shmflags.get()
    prefix = f"/dev/shm/shmflags.{os.environ['SHMFLAGS_NAME']}."
    ctx = {"kind": "user", "key": "maps"}
    most = samples = 0
    values = set()
    while not os.path.exists(stop_file):
        values.add(client.variation("color", ctx, "default"))
        with open("/proc/self/maps") as maps:
            objects = {line.split(None, 5)[-1].strip() for line in maps if prefix in line}
        most = max(most, len(objects))
        samples += 1
    _emit(ev="done", most=most, samples=samples, values=len(values))


def worker_follow(stop_file: str) -> None:
    """Evaluate ``color`` until ``stop_file`` exists; report every change of value (with the
    reason) and of the data source state."""
    import shmflags
    client = shmflags.get()
    ctx = {"kind": "user", "key": "follow"}
    last_value: Any = object()
    last_state = None
    evaluations = 0
    while not os.path.exists(stop_file):
        detail = client.variation_detail("color", ctx, "default")
        evaluations += 1
        if detail.value != last_value:
            last_value = detail.value
            _emit(ev="value", value=detail.value, reason=detail.reason, t=time.time())
        if evaluations % 20 == 0:
            status = client.data_source_status_provider.status
            error = status.error
            state = (status.state.name, error and error.kind.name,
                     error and error.status_code)
            if state != last_state:
                last_state = state
                _emit(ev="state", state=state[0], error_kind=state[1], status_code=state[2],
                      message=error and error.message, t=time.time())
        time.sleep(0.001)
    _emit(ev="done", evaluations=evaluations)


WORKERS = {"follow": worker_follow, "watch": worker_watch, "before": worker_before,
           "torn": worker_torn, "events": worker_events, "maps": worker_maps}

if __name__ == "__main__":
    WORKERS[sys.argv[1]](*sys.argv[2:])
    sys.exit(0)


# ---------------------------------------------------------------------------- test side

import socket  # noqa: E402

import pytest  # noqa: E402

from supervisor_harness import Harness  # noqa: E402

class Worker:
    """One worker interpreter; its stdout lines are collected by a thread."""

    def __init__(self, mode: str, args: List[str], env: Dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__)), mode, *args],
                                     env={**env, "PYTHONPATH": os.pathsep.join(
                                         filter(None, [str(ROOT), env.get("PYTHONPATH")]))},
                                     stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines: List[Dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"ev": "garbage", "line": line})

    def events(self, ev: str) -> List[Dict[str, Any]]:
        return [x for x in list(self.lines) if x.get("ev") == ev]

    def done(self, timeout: float = 30.0) -> Dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"worker {self.proc.pid} did not finish: {self.stderr()}")
        self._reader.join(5)
        got = self.events("done")
        assert got, f"worker {self.proc.pid} exited {self.proc.returncode}: {self.stderr()}"
        return got[-1]

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def workers() -> Iterator[List[Worker]]:
    started: List[Worker] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for the event socket (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="shmrel"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def start_workers(workers: List[Worker], h: Harness, n: int, mode: str, *args: str,
                  env: Optional[Dict[str, str]] = None) -> List[Worker]:
    new = [Worker(mode, list(args), {**h.env, **(env or {})},
                  h.tmp / f"worker-{mode}-{len(workers) + i}.log") for i in range(n)]
    workers.extend(new)
    return new


def flags_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {"tier": tier_flag(), "color": value_flag("color", 1,
                                                                                   "red")}}))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> Dict[str, float]:
    """The supervisor's /metrics samples without labels (empty when it does not answer)."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: Dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            out[parts[0]] = float(parts[1])
    return out


