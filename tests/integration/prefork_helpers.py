"""Test helper: real preforking servers (gunicorn, uWSGI) beside a real supervisor.

Used by ``tests/integration/test_prefork_*.py``. It holds:

* :func:`app` — the WSGI application the servers run (``tests.integration.prefork_helpers:app``).
  Every request calls ``shmflags.get()`` — no ``post_fork`` hook, no ``postfork()`` — and
  evaluates one flag ``n`` times, answering the worker pid and the value as JSON;
* :class:`Namespace` — one test's shmflags namespace: a short private directory (the event
  socket path must stay under 108 bytes), state directory, the environment shared by the
  supervisor and the servers, and every process started in it;
* process starters: :meth:`Namespace.supervisor` (``shmflags-supervisor`` on the fake
  LaunchDarkly service or a flag file), :meth:`Namespace.gunicorn`, :meth:`Namespace.uwsgi`,
  each in its own session so that :meth:`Proc.stop` can signal the process group of a server
  master, plus polling helpers (:func:`wait_for`, :meth:`Server.collect`, :func:`load`);
* the measurements: :func:`switch_times` (when each worker switched to a new value, and that
  none went back), :func:`summary_counts` (evaluations counted in the fake's ``/bulk``);
* drivers for pools that have no HTTP front: ``python -m tests.integration.prefork_helpers
  mp|celery ...`` (:func:`mp_driver`, :func:`celery_driver`, driven by :class:`Driver`).

Every process is stopped by its pid (or its own process group) in :meth:`Namespace.close`.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
BIN = Path(PY).parent

#: the variation a worker answers when the flag cannot be evaluated
DEFAULT = "default"



def require_worker_client() -> None:
    """Skip the calling test module while ``shmflags.get()`` (the public worker client) is
    not wired: every test here runs it in real workers. The skip reason says so in the test
    report, so the gap stays visible."""
    import pytest

    import shmflags
    if not hasattr(shmflags, "get"):
        pytest.skip("the public worker client (shmflags.get) is not wired yet",
                    allow_module_level=True)


# --------------------------------------------------------------------------- the WSGI app

_IMPORT_EVAL: Dict[str, Any] = {}
if os.environ.get("PREFORK_EVAL_AT_IMPORT"):
    # With --preload (gunicorn) or without lazy-apps (uWSGI) this runs in the master before
    # the fork: the workers inherit an attached client (mapping, event recorder) and must
    # neither lose it nor report the master's pending events twice.
    import shmflags as _shmflags
    _IMPORT_EVAL["pid"] = os.getpid()
    _IMPORT_EVAL["value"] = _shmflags.get().variation(
        os.environ["PREFORK_EVAL_AT_IMPORT"], {"kind": "user", "key": "import"}, DEFAULT)


def _json(start_response: Callable, body: Any, status: str = "200 OK") -> List[bytes]:
    payload = json.dumps(body, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(payload)))])
    return [payload]


def app(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    """``/eval?flag=K&user=U&n=N&hold=S``: evaluate K ``n`` times for user U; ``hold`` seconds
    of sleep afterwards keep this worker busy so that concurrent requests spread over every
    worker. ``/flush`` flushes the worker's events. ``/sleep?s=S`` only sleeps (harakiri).
    ``/import`` tells what the module evaluated at import, and in which pid. ``/status``
    answers the worker's ``data_source_status_provider.status``."""
    from urllib.parse import parse_qs

    import shmflags

    path = environ.get("PATH_INFO", "/")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    pid = os.getpid()
    if path == "/sleep":
        time.sleep(float(query.get("s", "1")))
        return _json(start_response, {"pid": pid})
    if path == "/import":
        return _json(start_response, {"pid": pid, **_IMPORT_EVAL})
    client = shmflags.get()
    if path == "/flush":
        client.flush()
        return _json(start_response, {"pid": pid})
    if path == "/status":
        status = client.data_source_status_provider.status
        error = status.error
        return _json(start_response, {
            "pid": pid, "state": status.state.value.upper(),
            "error": None if error is None else str(getattr(error, "message", error)),
            "initialized": client.is_initialized()})
    context = {"kind": "user", "key": query.get("user", "u1")}
    flag = query.get("flag", "f1")
    t0 = time.time()
    values = [client.variation(flag, context, DEFAULT) for _ in range(int(query.get("n", "1")))]
    t = time.time()
    hold = float(query.get("hold", "0"))
    if hold:
        time.sleep(hold)
    return _json(start_response, {"pid": pid, "value": values[-1],
                                  # a patch may land between two of the n evaluations,
                                  # but a value never comes back once replaced
                                  "consistent": _changes(values) <= 1,
                                  "n": len(values), "t0": t0, "t": t})


def _changes(values: List[Any]) -> int:
    return sum(1 for a, b in zip(values, values[1:]) if a != b)


def django_app() -> Callable:
    """A minimal Django project using ``examples/django_middleware.py`` (gunicorn factory:
    ``tests.integration.prefork_helpers:django_app()``). ``/`` answers the pid, the value of
    ``new-checkout`` through ``request.flags`` and every flag through the template processor's
    object."""
    import django
    from django.conf import settings
    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="prefork-test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
            MIDDLEWARE=["examples.django_middleware.FeatureFlagsMiddleware"],
            INSTALLED_APPS=[], DATABASES={})
        django.setup()
    from django.core.wsgi import get_wsgi_application
    return get_wsgi_application()


def _django_view(request: Any) -> Any:
    from django.http import JsonResponse
    from examples.django_middleware import flags
    return JsonResponse({"pid": os.getpid(), "key": request.ld_context.key,
                         "new_checkout": request.flags.variation("new-checkout", False),
                         "maintenance": flags(request)["flags"].maintenance_mode})


def __getattr__(name: str) -> Any:
    # Django's ROOT_URLCONF lookup: ``urlpatterns`` is made on first use, so that importing
    # this module (in gunicorn, uWSGI, pytest) does not need Django.
    if name == "urlpatterns":
        from django.urls import path
        return [path("", _django_view)]
    raise AttributeError(name)


# --------------------------------------------------------------------------- polling


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
             what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released: good enough on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(port: int, path: str, timeout: float = 5.0) -> Tuple[int, Any]:
    """``GET path`` on 127.0.0.1:port with a fresh connection (no keep-alive, so consecutive
    requests are free to land on any worker). Returns (status, decoded JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body.decode("utf-8", "replace")


def flag(key: str, value: Any, version: int = 1) -> Dict[str, Any]:
    """An LD flag that is on and serves ``value`` to everyone (variation 0), ``"off"`` when
    off."""
    return {"key": key, "version": version, "on": True, "variations": [value, "off"],
            "fallthrough": {"variation": 0}, "offVariation": 1, "salt": key,
            "targets": [], "rules": [], "prerequisites": [], "trackEvents": False}


def summary_counts(payloads: Iterable[Any]) -> Dict[str, Dict[Any, int]]:
    """Sum the summary counters of ``/bulk`` payloads: flag key -> {value: count}."""
    out: Dict[str, Dict[Any, int]] = {}
    for received in payloads:
        body = getattr(received, "payload", received)
        for event in body or []:
            if not isinstance(event, dict) or event.get("kind") != "summary":
                continue
            for key, feature in (event.get("features") or {}).items():
                per = out.setdefault(key, {})
                for counter in feature.get("counters") or []:
                    value = json.dumps(counter.get("value"), sort_keys=True)
                    per[value] = per.get(value, 0) + int(counter.get("count", 0))
    return {k: {json.loads(v): n for v, n in per.items()} for k, per in out.items()}


def total(counts: Dict[str, Dict[Any, int]], key: str) -> int:
    """All evaluations of ``key`` in :func:`summary_counts` output."""
    return sum(counts.get(key, {}).values())


# --------------------------------------------------------------------------- processes


class Proc:
    """A subprocess started in its own session, output captured to a log file."""

    def __init__(self, name: str, cmd: List[str], env: Dict[str, str], log_path: Path,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send(self, sig: int) -> None:
        """Send ``sig`` to this process only."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Signal the process (only it: a server master stops its own workers) and wait;
        SIGKILL its whole process group if it does not exit in time. Returns the exit
        status."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        if self.proc.poll() is None:
            self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL this process only (its children, if any, stay)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)

    def _kill_group(self) -> None:
        # start_new_session made pid the process group id; whatever is left in it (workers
        # orphaned by a killed master) goes too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Server(Proc):
    """A gunicorn or uWSGI master serving :func:`app` on ``port``."""

    def __init__(self, name: str, cmd: List[str], env: Dict[str, str], log_path: Path,
                 port: int) -> None:
        super().__init__(name, cmd, env, log_path)
        self.port = port

    def get(self, path: str, timeout: float = 5.0) -> Tuple[int, Any]:
        return http_json(self.port, path, timeout)

    def worker_pids(self) -> List[int]:
        """The live child processes of the master (its workers)."""
        import psutil
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return sorted(c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE)

    def wait_ready(self, workers: int, timeout: float = 20.0, path: str = "/import"
                   ) -> List[int]:
        """Wait until the master has ``workers`` children and answers 200 on ``path``."""
        def ready() -> Optional[List[int]]:
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n"
                                     f"{self.log()[-3000:]}")
            pids = self.worker_pids()
            if len(pids) < workers:
                return None
            try:
                status, _ = self.get(path, timeout=1.0)
            except OSError:
                return None
            return pids if status == 200 else None
        return wait_for(ready, timeout, 0.05, f"{self.name} ready with {workers} workers")

    def collect(self, query: str, done: Callable[[Dict[int, List[Any]]], bool],
                timeout: float, concurrency: int = 4,
                on_answer: Optional[Callable[[Dict[str, Any]], None]] = None,
                path: str = "/eval", value_of: Optional[Callable[[Any], Any]] = None
                ) -> Dict[int, List[Any]]:
        """Send ``PATH?QUERY`` concurrently until ``done(answers)`` holds.

        :param done: called with pid -> list of answers (dicts, in arrival order per pid).
        :param value_of: for apps other than :func:`app`: computes an answer's ``value`` from
            its JSON (its ``t`` is then the time the answer arrived, ``n`` 1).
        :returns: the answers by pid.
        :raises AssertionError: on a non-200 answer or on timeout.
        """
        answers: Dict[int, List[Any]] = {}
        lock = threading.Lock()
        stop = threading.Event()
        errors: List[str] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    status, body = self.get(f"{path}?{query}")
                except OSError as exc:  # a recycled worker may drop a connection
                    with lock:
                        errors.append(f"connection: {exc!r}")
                    time.sleep(0.01)
                    continue
                if status != 200 or not isinstance(body, dict) or "pid" not in body:
                    with lock:
                        errors.append(f"HTTP {status}: {str(body)[:300]}")
                    stop.set()
                    return
                body["received"] = time.monotonic()
                if value_of is not None:
                    try:
                        body.update(value=value_of(body), t=time.time(), n=1,
                                    consistent=True)
                    except (KeyError, TypeError, ValueError) as exc:
                        with lock:
                            errors.append(f"unexpected answer {body!r}: {exc!r}")
                        stop.set()
                        return
                with lock:
                    answers.setdefault(body["pid"], []).append(body)
                    if on_answer is not None:
                        on_answer(body)
                    if done(answers):
                        stop.set()

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        stop.wait(timeout)
        stop.set()
        for t in threads:
            t.join(10)
        bad = [e for e in errors if not e.startswith("connection")]
        if bad:
            raise AssertionError(f"{self.name}: bad answer: {bad[0]}\n{self.log()[-3000:]}")
        with lock:
            if not done(answers):
                raise AssertionError(
                    f"{self.name}: condition not met after {timeout} s; answers by pid: "
                    f"{ {p: [a.get('value') for a in v][-3:] for p, v in answers.items()} }; "
                    f"workers now {self.worker_pids()}; errors {errors[:3]}")
            return answers


def load(server: Server, query: str, requests: int, concurrency: int = 4,
         timeout: float = 60.0) -> Tuple[int, List[Dict[str, Any]]]:
    """Send exactly ``requests`` ``/eval?QUERY`` requests (retrying connection errors, which
    recycled workers can cause before a request is read). Returns (connection retries,
    answers)."""
    lock = threading.Lock()
    remaining = [requests]
    retries = [0]
    answers: List[Dict[str, Any]] = []
    deadline = time.monotonic() + timeout

    def one() -> None:
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            while True:
                try:
                    status, body = server.get("/eval?" + query)
                    break
                except OSError:
                    with lock:
                        retries[0] += 1
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if status != 200:
                raise AssertionError(f"HTTP {status}: {str(body)[:300]}")
            with lock:
                answers.append(body)

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for fut in [pool.submit(one) for _ in range(concurrency)]:
            fut.result()
    assert len(answers) == requests, (len(answers), requests)
    return retries[0], answers


#: seconds: generous, the design goal is a few ms; the measurement includes the test's polling
LATENCY_BOUND = 1.0


def every_worker(server: Server, value: Any, since: float = 0.0) -> Callable[..., bool]:
    """``done`` predicate: every live worker pid has evaluated ``value`` in an evaluation
    that started at or after the wall-clock time ``since``."""
    def done(answers: Dict[int, List[Any]]) -> bool:
        pids = server.worker_pids()
        return bool(pids) and all(
            any(a["value"] == value and a.get("t0", a["t"]) >= since
                for a in answers.get(p, ()))
            for p in pids)
    return done


def evaluations(answers: Dict[int, List[Dict[str, Any]]], value: Any = None) -> int:
    """How many evaluations the answers performed (of ``value`` only, if given)."""
    return sum(a["n"] for per in answers.values() for a in per
               if value is None or a["value"] == value)


def switch_times(answers: Dict[int, List[Dict[str, Any]]], value: Any, since: float
                 ) -> Dict[int, Tuple[float, float]]:
    """Per worker pid, when it switched to ``value`` relative to ``since`` (wall clock), as
    (start of its last evaluation of another value, end of its first evaluation of
    ``value``): the switch happened in between.

    Asserts that no worker went back: no evaluation that *started* after an evaluation of
    ``value`` had *ended* in the same process returned another value (threads of one worker
    may overlap, so only evaluations strictly after the switch count).
    """
    out: Dict[int, Tuple[float, float]] = {}
    for pid, per in answers.items():
        for a in per:
            assert a["consistent"], a
        new_ends = [a["t"] for a in per if a["value"] == value]
        if not new_ends:
            continue
        switched = min(new_ends)
        olds = [a for a in per if a["value"] != value]
        back = [a for a in olds if a.get("t0", a["t"]) > switched]
        assert not back, (f"worker {pid} served {back[0]['value']!r} in an evaluation that "
                          f"started {back[0].get('t0', 0) - switched:.4f} s after it had "
                          f"served {value!r}")
        last_old = max((a.get("t0", a["t"]) for a in olds), default=float("-inf"))
        out[pid] = (last_old - since, switched - since)
    return out


def propagate_patch(fake: Any, server: Server, key: str, value: Any, version: int
                    ) -> Dict[str, Any]:
    """Push a patch on the fake stream and poll until every worker serves it.

    :returns: ``latency``: seconds from the push to the first evaluation of the new value in
        the slowest worker (an upper bound: it includes the test's polling), ``per_worker``:
        :func:`switch_times`, ``answers``.
    """
    assert fake.wait_for_streams(1)
    pushed = time.time()
    fake.push("patch", {"path": f"/flags/{key}", "data": flag(key, value, version)})
    answers = server.collect(f"flag={key}&hold=0.005", every_worker(server, value, pushed),
                             timeout=10.0, concurrency=6)
    per_worker = switch_times(answers, value, pushed)
    live = server.worker_pids()
    return {"latency": max(per_worker[p][1] for p in live), "per_worker": per_worker,
            "answers": answers}


def fmt_switch(per_worker: Dict[int, Tuple[float, float]]) -> str:
    """``pid: old..new ms`` for a test's printout."""
    return ", ".join(f"{pid}: {max(a, 0) * 1000:.1f}..{b * 1000:.1f} ms"
                     for pid, (a, b) in sorted(per_worker.items()))


def wait_counts(fake: Any, key: str, expected: int, timeout: float = 8.0) -> int:
    """Wait until the /bulk summaries count ``expected`` evaluations of ``key``; return the
    last count seen (so that an excess also shows)."""
    end = time.monotonic() + timeout
    got = 0
    while time.monotonic() < end:
        got = total(summary_counts(fake.events), key)
        if got >= expected:
            time.sleep(0.7)  # one more supervisor flush window: catch duplicates too
            return total(summary_counts(fake.events), key)
        time.sleep(0.05)
    return got



def supervisor_kill9_and_restart(fake: Any, ns: "Namespace", sup: Proc, server: Server,
                                 label: str) -> None:
    """SIGKILL the supervisor under a steady load, restart it, push a patch: the values never
    change until the patch, the workers report INTERRUPTED after ``heartbeat_timeout`` and
    VALID again, the patch reaches every worker, and the events the workers held while no
    supervisor was there reach the new one."""
    warmup = server.collect("flag=f1&hold=0.005", every_worker(server, "v1"), timeout=10.0,
                            concurrency=6)
    _, st = server.get("/status")
    assert st["state"] == "VALID", st

    # a steady load through the whole kill / restart sequence: every answer is recorded
    stop = threading.Event()
    steady: Dict[str, Any] = {}

    def background() -> None:
        steady["answers"] = server.collect("flag=f1&n=2&hold=0.01",
                                           lambda a: stop.is_set(), timeout=60.0,
                                           concurrency=2)
    loader = threading.Thread(target=background, daemon=True)
    loader.start()
    time.sleep(0.3)

    sup.kill9()
    killed = time.monotonic()
    time.sleep(1.0)
    status = ns.status()
    print(f"{label}: status --json 1 s after SIGKILL: state {status.get('state')}, "
          f"supervisor_alive {status.get('supervisor_alive')}, heartbeat_age_s "
          f"{status.get('heartbeat_age_s')}")
    assert status["serving"] and status["flags"] == 2 and not status["supervisor_alive"], status

    # past heartbeat_timeout (5 s) the workers report INTERRUPTED, and still serve v1
    def interrupted() -> bool:
        code, body = server.get("/status")
        return code == 200 and body["state"] == "INTERRUPTED"
    wait_for(interrupted, 8.0, 0.2, "a worker reporting INTERRUPTED")
    print(f"a worker reported INTERRUPTED {time.monotonic() - killed:.1f} s after the kill")

    sup2 = ns.supervisor(fake, wait=False)
    restarted = time.monotonic()
    wait_for(lambda: (ns.control() or {}).get("supervisor_pid") == sup2.pid, 10.0, 0.02,
             "the new supervisor's generation")
    wait_for(lambda: ns.status().get("state") == "VALID" and ns.status().get("source")
             == "streaming", 10.0, 0.1, "the new supervisor streaming")
    wait_for(lambda: server.get("/status")[1]["state"] == "VALID", 5.0, 0.1,
             "a worker back to VALID")
    print(f"the new supervisor served, streamed, and workers were VALID again "
          f"{time.monotonic() - restarted:.1f} s after its start")
    time.sleep(0.3)
    stop.set()
    loader.join(15)
    answers = steady["answers"]
    values = [a["value"] for per in answers.values() for a in per]
    print(f"steady load through kill and restart: {len(values)} answers from "
          f"{len(answers)} workers, values {sorted(set(values))}")
    assert set(values) == {"v1"} and len(values) > 50
    assert set(server.worker_pids()) <= set(answers)

    # the workers follow the new supervisor's generations
    result = propagate_patch(fake, server, "f1", "v3", 3)
    print(f"after the restart a patch reached all workers in {result['latency'] * 1000:.1f} ms")
    assert result["latency"] < LATENCY_BOUND

    # events: what the workers held while no supervisor was there is delivered to the new
    # one; what the killed supervisor had received but not yet posted is lost (one window)
    performed = evaluations(warmup) + evaluations(answers) + evaluations(result["answers"])
    after_restart = evaluations(result["answers"])
    assert server.stop(signal.SIGTERM) == 0
    got = wait_counts(fake, "f1", performed, timeout=5.0)
    print(f"events across the supervisor kill: {performed} evaluations performed, {got} "
          f"counted ({performed - got} lost with the killed supervisor)")
    assert after_restart <= got <= performed


class Namespace:
    """One test's namespace, directory, environment and processes.

    :param label: a short word for the directory and the namespace name.
    """

    def __init__(self, label: str = "pf") -> None:
        self.name = f"pf-{label}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # a short path: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path is long
        self.dir = Path(tempfile.mkdtemp(prefix=f"sf{label}."))
        self.state_dir = self.dir / "state"
        self.socket = self.dir / "ev.sock"
        self.procs: List[Proc] = []
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SHMFLAGS_") or k in ("SHMFLAGS_EVALUATOR",
                                                         "SHMFLAGS_REQUIRE_NATIVE")}
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(k, None)
        env.update({
            "SHMFLAGS_NAME": self.name,
            "SHMFLAGS_STATE_DIR": str(self.state_dir),
            "SHMFLAGS_SOCKET": str(self.socket),
            "SHMFLAGS_FLUSH_INTERVAL": "0.5",
            "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "true",
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        })
        self.env = env

    # -- supervisor ---------------------------------------------------------------------

    def supervisor(self, fake: Any = None, data_file: Optional[Path] = None,
                   env: Optional[Dict[str, str]] = None, wait: bool = True,
                   timeout: float = 10.0) -> Proc:
        """Start ``shmflags-supervisor`` on the fake LD service (streaming, events to its
        ``/bulk``) or on a flag file (events off unless ``env`` says otherwise); wait for the
        first generation unless ``wait`` is false."""
        sup_env = dict(self.env)
        if fake is not None:
            sup_env.update({"SHMFLAGS_SDK_KEY": "sdk-prefork-test",
                            "SHMFLAGS_STREAM_URI": fake.url, "SHMFLAGS_BASE_URI": fake.url,
                            "SHMFLAGS_EVENTS_URI": fake.url,
                            "SHMFLAGS_INITIAL_RECONNECT_DELAY": "0.1"})
        if data_file is not None:
            sup_env.update({"SHMFLAGS_DATA_FILE": str(data_file)})
        sup_env.update(env or {})
        n = sum(1 for p in self.procs if p.name.startswith("supervisor"))
        proc = Proc(f"supervisor-{n}", [str(BIN / "shmflags-supervisor")], sup_env,
                    self.dir / f"supervisor-{n}.log")
        self.procs.append(proc)
        if wait:
            wait_for(lambda: self._published(proc, n), timeout, 0.02,
                     "the supervisor's first generation")
        return proc

    def _published(self, proc: Proc, n: int) -> bool:
        if not proc.alive():
            raise AssertionError(f"supervisor exited ({proc.proc.returncode}):\n"
                                 f"{proc.log()[-3000:]}")
        ctl = self.control()
        return bool(ctl and ctl.get("generation") and ctl.get("supervisor_pid") == proc.pid)

    def control(self) -> Optional[Dict[str, Any]]:
        """The control block's status, read directly (``None`` before there is one)."""
        from shmflags import shm
        try:
            att = shm.Attachment(self.name)
        except Exception:  # noqa: BLE001 - not created yet
            return None
        try:
            st = att.status()
            return dict(st) if isinstance(st, dict) else dict(vars(st))
        finally:
            att.close()

    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """``shmflags ARGS`` in this namespace."""
        return subprocess.run([str(BIN / "shmflags"), *args], env=self.env, cwd=str(ROOT),
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> Dict[str, Any]:
        """``shmflags status --json``, parsed."""
        out = self.cli("status", "--json")
        try:
            return json.loads(out.stdout)
        except ValueError:
            raise AssertionError(f"status --json: rc {out.returncode}\n{out.stdout}\n"
                                 f"{out.stderr}") from None

    # -- servers --------------------------------------------------------------------------

    def _server_env(self, env: Optional[Dict[str, str]]) -> Dict[str, str]:
        out = dict(self.env)
        out.update(env or {})
        return out

    def gunicorn(self, workers: int = 3, worker_class: str = "sync", threads: int = 1,
                 preload: bool = False, max_requests: int = 0, jitter: int = 0,
                 env: Optional[Dict[str, str]] = None, wait: bool = True,
                 app: str = "tests.integration.prefork_helpers:app") -> Server:
        """Start gunicorn serving :func:`app` (``-w workers -k worker_class``)."""
        port = free_port()
        cmd = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", str(workers),
               "-k", worker_class, "--threads", str(threads), "--graceful-timeout", "5",
               "--timeout", "30", "--log-level", "info", "--keep-alive", "0"]
        if preload:
            cmd.append("--preload")
        if max_requests:
            cmd += ["--max-requests", str(max_requests),
                    "--max-requests-jitter", str(jitter)]
        cmd.append(app)
        return self.server("gunicorn", cmd, port, workers, env, wait)

    def server(self, kind: str, cmd: List[str], port: int, workers: int,
               env: Optional[Dict[str, str]] = None, wait: bool = True,
               ready_path: str = "/import") -> Server:
        """Start any server command listening on ``port``; wait for ``workers`` children
        and an answer on ``ready_path`` unless ``wait`` is false."""
        n = sum(1 for p in self.procs if p.name.startswith(kind))
        server = Server(f"{kind}-{n}", cmd, self._server_env(env),
                        self.dir / f"{kind}-{n}.log", port)
        self.procs.append(server)
        if wait:
            server.wait_ready(workers, path=ready_path)
        return server

    def uwsgi(self, processes: int = 3, lazy_apps: bool = False, harakiri: int = 0,
              max_requests: int = 0, extra: Iterable[str] = (),
              env: Optional[Dict[str, str]] = None, wait: bool = True) -> Server:
        """Start uWSGI with its defaults (a master, no ``enable-threads``, no ``lazy-apps``:
        the app is imported in the master and the workers fork from it) serving :func:`app`.
        ``die-on-term`` only makes SIGTERM a shutdown instead of uWSGI 2.0's reload."""
        port = free_port()
        cmd = [str(BIN / "uwsgi"), "--master", "--http-socket", f"127.0.0.1:{port}",
               "--processes", str(processes), "--module",
               "tests.integration.prefork_helpers:app", "--chdir", str(ROOT),
               "--die-on-term", "--disable-logging", "--need-app",
               "--worker-reload-mercy", "5", "--reload-mercy", "5"]
        if lazy_apps:
            cmd.append("--lazy-apps")
        if harakiri:
            cmd += ["--harakiri", str(harakiri)]
        if max_requests:
            # uWSGI 2.0 recycles a worker only after min-worker-lifetime (default 10 s)
            cmd += ["--max-requests", str(max_requests), "--min-worker-lifetime", "0"]
        cmd += list(extra)
        uenv = self._server_env(env)
        # uWSGI's embedded interpreter does not see the venv unless told
        uenv.setdefault("VIRTUAL_ENV", str(BIN.parent))
        cmd += ["--virtualenv", str(BIN.parent)]
        return self.server("uwsgi", cmd, port, processes, uenv, wait)

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process (servers first, then supervisors), remove the namespace."""
        for proc in sorted(self.procs, key=lambda p: p.name.startswith("supervisor")):
            try:
                proc.stop(signal.SIGTERM, timeout=8.0)
            except Exception:  # noqa: BLE001 - best effort in teardown
                pass
        try:
            from shmflags import shm
            shm.cleanup(self.name)
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        """Every process's log, for failure messages."""
        return "\n".join(f"----- {p.name} (pid {p.pid})\n{p.log()[-4000:]}" for p in self.procs)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- multiprocessing


def _mp_task(args: Tuple[str, int]) -> Dict[str, Any]:
    """A ``multiprocessing.Pool`` task: evaluate ``flag`` in the pool worker."""
    import shmflags
    key, i = args
    t0 = time.time()
    value = shmflags.get().variation(key, {"kind": "user", "key": f"u{i}"}, DEFAULT)
    t = time.time()
    time.sleep(0.01)  # keep this worker busy so that the tasks spread over every worker
    return {"pid": os.getpid(), "value": value, "t0": t0, "t": t, "n": 1, "consistent": True}


def mp_driver(argv: List[str]) -> int:
    """``python -m tests.integration.prefork_helpers mp START_METHOD PROCESSES [parent-eval]``

    Runs a ``multiprocessing.Pool`` and answers commands on stdin with one JSON line each:
    ``round FLAG N`` maps N tasks (chunksize 1) and prints their answers; ``exit`` closes and
    joins the pool (a graceful exit of the pool workers) and exits. With ``parent-eval`` the
    parent evaluates ``f1`` before creating the pool, so forked workers inherit an attached
    client.
    """
    import multiprocessing

    import shmflags
    method, processes = argv[0], int(argv[1])
    parent: Dict[str, Any] = {"pid": os.getpid()}
    if "parent-eval" in argv:
        parent["value"] = shmflags.get().variation("f1", {"kind": "user", "key": "p"}, DEFAULT)
    pool = multiprocessing.get_context(method).Pool(processes)
    print(json.dumps({"parent": parent, "workers": sorted(p.pid for p in pool._pool)}),
          flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "round":
            tasks = [(cmd[1], i) for i in range(int(cmd[2]))]
            print(json.dumps(pool.map(_mp_task, tasks, chunksize=1)), flush=True)
        elif cmd[0] == "exit":
            break
    pool.close()
    pool.join()  # the parent's own events are flushed at exit (no explicit close)
    print(json.dumps({"closed": True}), flush=True)
    return 0


def celery_driver(argv: List[str]) -> int:
    """``python -m tests.integration.prefork_helpers celery CONCURRENCY [parent-eval]``

    A Celery app on the in-memory broker (``memory://``) with a prefork worker
    (``celery.contrib.testing.worker.start_worker(pool="prefork")``) in this process, so the
    tasks are sent and consumed here and run in billiard's forked pool processes. Each task
    evaluates a flag and appends its answer to a file (results cannot come back through an
    in-memory result backend: it would live in the pool process). Same line protocol as
    :func:`mp_driver`; ``exit`` stops the worker (warm shutdown: the pool processes exit
    gracefully).
    """
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    import shmflags
    concurrency = int(argv[0])
    out_path = Path(tempfile.mkdtemp(prefix="sfcel.")) / "answers.jsonl"
    out_path.touch()
    celery = Celery("prefork_test", broker="memory://", backend=None)
    celery.conf.update(task_ignore_result=True, worker_hijack_root_logger=False,
                       worker_prefetch_multiplier=1,
                       # the memory transport polls its queues once a second by default,
                       # which would show up as flag latency in the measurement
                       broker_transport_options={"polling_interval": 0.01})

    @celery.task(name="prefork_test.evaluate")
    def evaluate(key: str, i: int, tag: str) -> None:
        answer = _mp_task((key, i))
        answer["tag"] = tag
        fd = os.open(str(out_path), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (json.dumps(answer) + "\n").encode())  # one write: atomic append
        finally:
            os.close(fd)

    parent: Dict[str, Any] = {"pid": os.getpid()}
    if "parent-eval" in argv:
        parent["value"] = shmflags.get().variation("f1", {"kind": "user", "key": "p"}, DEFAULT)
    with start_worker(celery, pool="prefork", concurrency=concurrency,
                      perform_ping_check=False, shutdown_timeout=10.0) as worker:
        pool = worker.pool
        print(json.dumps({"parent": parent,
                          "workers": sorted(pool.info.get("processes") or [])}), flush=True)
        rounds = 0
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "exit":
                break
            rounds += 1
            tag, n = str(rounds), int(cmd[2])
            for i in range(n):
                evaluate.delay(cmd[1], i, tag)
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                answers = [json.loads(x) for x in out_path.read_text().splitlines()]
                answers = [a for a in answers if a["tag"] == tag]
                if len(answers) >= n:
                    break
                time.sleep(0.01)
            print(json.dumps(answers), flush=True)
    shutil.rmtree(out_path.parent, ignore_errors=True)
    print(json.dumps({"closed": True}), flush=True)
    return 0


class Driver:
    """A driver subprocess (:func:`mp_driver`, :func:`celery_driver`) and its line protocol.

    :param args: the arguments after ``python -m tests.integration.prefork_helpers``.
    """

    def __init__(self, ns: Namespace, args: List[str]) -> None:
        cmd = [PY, "-m", "tests.integration.prefork_helpers"] + args
        self.err_path = ns.dir / f"driver-{args[0]}.log"
        self.stderr = open(self.err_path, "wb")
        self.proc = subprocess.Popen(cmd, env=ns.env, cwd=str(ROOT), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     start_new_session=True)
        self.hello = self.read()

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def read(self) -> Any:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(5)
            raise AssertionError(f"driver exited {self.proc.returncode}: {self.log()[-3000:]}")
        return json.loads(line)

    def round(self, key: str, n: int) -> List[Dict[str, Any]]:
        """Run ``n`` evaluations of ``key`` in the pool; their answers."""
        self.proc.stdin.write(f"round {key} {n}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.read()

    def close(self) -> None:
        """Ask for a graceful exit; SIGKILL the driver's process group if it hangs."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("exit\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                assert self.read() == {"closed": True}
                self.proc.wait(10)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(5)
            self.stderr.close()


def pool_follows_patch(fake: Any, driver: Driver, label: str) -> int:
    """The pool test of :func:`mp_driver` and :func:`celery_driver`: every pool process
    answers ``v1``, a patch to ``v2`` reaches each within :data:`LATENCY_BOUND`. Returns the
    number of evaluations performed (the parent's included)."""
    workers = set(driver.hello["workers"])
    performed = 1 if "value" in driver.hello["parent"] else 0
    answers: Dict[int, List[Dict[str, Any]]] = {}

    def add(batch: List[Dict[str, Any]]) -> None:
        for a in batch:
            answers.setdefault(a["pid"], []).append(a)

    for _ in range(20):
        batch = driver.round("f1", 12)
        performed += len(batch)
        add(batch)
        if workers and workers <= set(answers):
            break
    workers = workers or set(answers)
    assert workers <= set(answers), (workers, set(answers))
    assert {a["value"] for per in answers.values() for a in per} == {"v1"}

    assert fake.wait_for_streams(1)
    pushed = time.time()
    fake.push("patch", {"path": "/flags/f1", "data": flag("f1", "v2", 2)})
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        batch = driver.round("f1", 6)
        performed += len(batch)
        add(batch)
        if all(any(a["value"] == "v2" and a["t0"] >= pushed for a in answers.get(p, ()))
               for p in workers):
            break
    per_worker = switch_times(answers, "v2", pushed)
    assert set(per_worker) >= workers, per_worker
    latency = max(per_worker[p][1] for p in workers)
    print(f"{label}: patch reached all {len(workers)} pool processes in "
          f"{latency * 1000:.1f} ms ({fmt_switch(per_worker)})")
    assert latency < LATENCY_BOUND
    return performed


if __name__ == "__main__":
    if sys.argv[1:2] == ["mp"]:
        sys.exit(mp_driver(sys.argv[2:]))
    if sys.argv[1:2] == ["celery"]:
        sys.exit(celery_driver(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} mp START_METHOD PROCESSES [parent-eval] | "
             "celery CONCURRENCY [parent-eval]")
