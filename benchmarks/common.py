"""Shared set-up for the benchmarks: the services (fake LaunchDarkly, a real supervisor, Redis),
worker-side clients of both SDKs on the same data, timing helpers and the load average.

Benchmarks only; runs in the benchmark driver and in the measuring subprocesses. Processes are
started through the integration tests' helpers (``tests/integration/prefork_helpers.py``,
``tests/fakes``) and stopped by their pid; every server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SDK_KEY = "sdk-benchmark-key"
REDIS_PREFIX = "bench"


# --------------------------------------------------------------------------- measuring


def load_average() -> Tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: every result carries it)."""
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def time_calls(fn: Callable[[Any, str], Any], pairs: Sequence[Tuple[Any, str]],
               seconds: float, rounds: int = 5) -> float:
    """ns per call of ``fn(ctx, key)`` over ``pairs``: the fastest of ``rounds`` rounds, each
    repeating the whole list until ``seconds / rounds`` have passed (at least once).

    The fastest round, as ``timeit`` recommends: on a shared machine other processes only ever
    add time, so the minimum is the figure least disturbed by them (for both SDKs alike)."""
    return time_calls_cpu(fn, pairs, seconds, rounds)[0]


def time_calls_cpu(fn: Callable[[Any, str], Any], pairs: Sequence[Tuple[Any, str]],
                   seconds: float, rounds: int = 5) -> Tuple[float, float]:
    """Like :func:`time_calls`, as ``(wall, cpu)`` ns per call, each the fastest round.

    ``cpu`` is this process's CPU time (all its threads: the event flush threads of both
    SDKs count, other processes' load does not), the steadier figure on a shared machine.
    """
    walls, cpus = [], []
    for _ in range(rounds):
        calls = 0
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        deadline = w0 + int(seconds * 1e9 / rounds)
        while True:
            for ctx, key in pairs:
                fn(ctx, key)
            calls += len(pairs)
            now = time.perf_counter_ns()
            if now >= deadline:
                break
        walls.append((now - w0) / calls)
        cpus.append((time.process_time_ns() - c0) / calls)
    return min(walls), min(cpus)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def ratio(shm: float, ld: float) -> str:
    """``ld / shm`` as ``12.3×`` (how many times shmflags is faster or smaller)."""
    if not shm or shm != shm or not ld or ld != ld:
        return "n/a"
    r = ld / shm
    if r >= 100:
        return f"{r:.0f}×"
    if r >= 1:
        return f"{r:.1f}×"
    # below 1: shmflags is slower; "1/40" reads better than "0.025×"
    return f"{r:.2f}×" if r >= 0.1 else f"1/{1 / r:.0f}"


def run_json(module: str, args: List[str], env: Optional[Dict[str, str]] = None,
             timeout: float = 900) -> Any:
    """Run ``python -m benchmarks.<module> ARGS`` in a fresh process; parse its last line."""
    import subprocess
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SHMFLAGS_")
                or k == "SHMFLAGS_EVALUATOR"}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.{module} {' '.join(args)} failed "
                           f"({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- services


class Services:
    """Fake LaunchDarkly serving ``payload``, optionally a supervisor streaming from it into
    shared memory (events to the fake's ``/bulk``) and a Redis holding the same data in LD's
    persistent-store schema. Use as a context manager; everything is stopped by pid.

    :param payload: ``{"flags": ..., "segments": ...}``
    :param supervisor: start ``shmflags-supervisor`` on the fake stream.
    :param redis: start ``redis-server`` and write ``payload`` with ldclient's Redis store.
    """

    def __init__(self, payload: Dict[str, Any], *, supervisor: bool = True,
                 redis: bool = False, label: str = "bench", heartbeat: float = 5.0,
                 supervisor_env: Optional[Dict[str, str]] = None) -> None:
        from tests.fakes.fake_ld import FakeLD
        from tests.integration.prefork_helpers import Namespace
        self.payload = payload
        self.fake = FakeLD(heartbeat_interval=heartbeat).start()
        self.fake.set_data(payload.get("flags"), payload.get("segments"))
        self.ns = Namespace(label)
        self.redis: Any = None
        self.supervisor: Any = None
        try:
            if supervisor:
                env = {"SHMFLAGS_FLUSH_INTERVAL": "1"}
                env.update(supervisor_env or {})
                self.supervisor = self.ns.supervisor(self.fake, env=env, timeout=300.0)
            if redis:
                self.redis = start_redis(payload)
        except BaseException:
            self.close()
            raise

    @property
    def name(self) -> str:
        return self.ns.name

    @property
    def socket(self) -> str:
        return str(self.ns.socket)

    @property
    def env(self) -> Dict[str, str]:
        """Environment for a worker process of this namespace (SHMFLAGS_NAME, socket, ...)."""
        return dict(self.ns.env)

    def worker_args(self) -> List[str]:
        """Command-line arguments that tell a measuring subprocess where everything is."""
        args = ["--name", self.name, "--socket", self.socket, "--fake", self.fake.url]
        if self.redis is not None:
            args += ["--redis", self.redis.url]
        return args

    def close(self) -> None:
        try:
            self.ns.close()
        finally:
            try:
                self.fake.stop()
            finally:
                if self.redis is not None:
                    self.redis.__exit__(None, None, None)

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_redis(payload: Dict[str, Any]) -> Any:
    """A throw-away ``redis-server`` holding ``payload`` under prefix :data:`REDIS_PREFIX`,
    written by ldclient's own Redis feature store (what the Relay Proxy or an SDK in
    persistent-store mode writes)."""
    from ldclient.feature_store import CacheConfig
    from ldclient.integrations import Redis
    from ldclient.versioned_data_kind import FEATURES, SEGMENTS

    from tests.fakes.redis_server import RedisServer
    server = RedisServer().start()
    store = Redis.new_feature_store(url=server.url, prefix=REDIS_PREFIX,
                                    caching=CacheConfig.disabled())
    store.init({FEATURES: payload.get("flags", {}), SEGMENTS: payload.get("segments", {})})
    return server


# --------------------------------------------------------------------------- clients


_PUBLIC_CLIENT_READY: Optional[bool] = None


def shmflags_public_client_ready() -> bool:
    """Whether ``shmflags.Client(Config(...))`` attaches to shared memory (the public worker
    client); until then the benchmarks assemble it from ``ShmSource``.

    Answered once per process: ``inspect.signature`` is the benchmark's own introspection,
    not client work, and the startup benchmark asks before its clock starts (in a forked
    worker it cost ~0.4 ms of copy-on-write faults).
    """
    global _PUBLIC_CLIENT_READY
    if _PUBLIC_CLIENT_READY is None:
        import shmflags
        params = inspect.signature(shmflags.Client.__init__).parameters
        _PUBLIC_CLIENT_READY = "config" in params
    return _PUBLIC_CLIENT_READY


class _ShmBackend:
    """Backend over :class:`shmflags.client.source.ShmSource` (stand-in until the public
    worker client lands): every call evaluates on the source's current snapshot."""

    def __init__(self, source: Any) -> None:
        self._current = source.current
        self.source = source

    def evaluate(self, key: str, ctx: Any) -> Any:
        return self._current().evaluate(key, ctx)

    def all_flags_state(self, *args: Any) -> Any:
        return self._current().all_flags_state(*args)


def shmflags_client(name: str, *, send_events: bool = False,
                    socket: Optional[str] = None) -> Tuple[Any, str]:
    """A worker's shmflags client on namespace ``name``, as an application gets it.

    :returns: ``(client, how)``, ``how`` naming the construction used.
    """
    import shmflags
    from shmflags.config import Config
    kwargs: Dict[str, Any] = {"name": name, "send_events": send_events}
    if socket:
        kwargs["socket"] = socket
    config = Config(**kwargs)
    if shmflags_public_client_ready():
        return shmflags.Client(config), "shmflags.Client(Config(name=...))"
    from shmflags.client.client import Client
    from shmflags.client.source import ShmSource
    recorder = None
    if send_events:
        from shmflags.events.recorder import EventRecorder
        recorder = EventRecorder(config, socket)
    return Client(_ShmBackend(ShmSource(config)), recorder), "Client(ShmSource) stand-in"


def wait_valid(client: Any, ctx: Any, timeout: float = 60.0) -> None:
    """Wait until ``client.all_flags_state(ctx)`` is valid (data attached/loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.all_flags_state(ctx).valid:
                return
        except Exception:  # noqa: BLE001 - not attached yet
            pass
        time.sleep(0.01)
    raise RuntimeError("client did not get its data in time")


def ld_config(**kwargs: Any) -> Any:
    """An ``ldclient.Config`` with the benchmark's SDK key and no diagnostics."""
    from ldclient.config import Config
    kwargs.setdefault("diagnostic_opt_out", True)
    return Config(sdk_key=SDK_KEY, **kwargs)


def ldclient_streaming(fake_url: str, *, send_events: bool = False,
                       start_wait: float = 60.0) -> Any:
    """ldclient as it runs in a worker by default: streaming from (the fake) LaunchDarkly."""
    from ldclient.client import LDClient
    return LDClient(ld_config(stream_uri=fake_url, base_uri=fake_url, events_uri=fake_url,
                              send_events=send_events), start_wait=start_wait)


def ldclient_redis(redis_url: str, *, cached: bool, send_events: bool = False,
                   events_uri: Optional[str] = None, start_wait: float = 5.0) -> Any:
    """ldclient in daemon mode (``use_ldd=True``) over Redis, with a cache big enough for all
    the data (60 s) or none."""
    from ldclient.client import LDClient
    from ldclient.feature_store import CacheConfig
    from ldclient.integrations import Redis
    caching = CacheConfig(expiration=60.0, capacity=1_000_000) if cached else CacheConfig.disabled()
    store = Redis.new_feature_store(url=redis_url, prefix=REDIS_PREFIX, caching=caching)
    kwargs: Dict[str, Any] = {"feature_store": store, "use_ldd": True, "send_events": send_events}
    if events_uri:
        kwargs["events_uri"] = events_uri
    return LDClient(ld_config(**kwargs), start_wait=start_wait)


def ldclient_in_memory(payload: Dict[str, Any], *, send_events: bool = False,
                       events_uri: Optional[str] = None) -> Any:
    """ldclient whose in-memory store holds ``payload`` (as after its stream's put)."""
    from benchmarks.oracle import ldclient_on_data
    return ldclient_on_data(payload, send_events=send_events, events_uri=events_uri)
