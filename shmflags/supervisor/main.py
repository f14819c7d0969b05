"""The supervisor process: start-up, the main loop, signals and shutdown, top to bottom.

Runs as ``shmflags-supervisor`` (or ``python -m shmflags supervisor``), one per namespace and
host. Like gunicorn's arbiter, signal handlers only queue the signal and wake the loop; the loop
dispatches to ``handle_<signal>()``. Between signals it ticks once a second: heartbeat into the
control block, systemd watchdog, reaping of superseded generations, event counters.

Threads, each owned by one object started here: the source's, the publisher's, the
last-known-good writer's, the event service's and the metrics server's. The main thread only
waits, dispatches and ticks.

Exit status: 0 after SIGTERM/SIGINT, 1 on an unexpected error, 2 on invalid configuration,
3 when another supervisor holds the namespace.
"""
from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from shmflags.config import SETTINGS, Config
from shmflags.errors import ConfigError, SnapshotError, SupervisorHalt
from shmflags.supervisor import lastgood, logsetup, status
from shmflags.supervisor.lock import NamespaceLock, NamespaceLocked
from shmflags.supervisor.publisher import PublishResult, SnapshotPublisher
from shmflags.supervisor.sdnotify import Notifier
from shmflags.supervisor.sources import Source, create_source, source_name
from shmflags.supervisor.store import Store

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3

#: Settings a SIGHUP cannot apply to a running supervisor (logged when they change).
RESTART_SETTINGS = frozenset({
    "name", "state_dir", "socket", "socket_mode", "shm_mode", "shm_group", "generation_grace",
    "send_events", "events_uri", "flush_interval", "events_max_pending", "private_attributes",
    "all_attributes_private", "context_keys_capacity", "context_keys_flush_interval",
    "diagnostic_opt_out", "diagnostic_recording_interval", "enable_event_compression",
    "omit_anonymous_contexts", "redis_write"})
#: Settings whose change does not need the data source restarted on SIGHUP.
NOT_SOURCE_SETTINGS = RESTART_SETTINGS | frozenset(
    {"log_format", "log_level", "metrics_addr"}
    | {s.name for s in SETTINGS if s.reads == "worker"}
    | {s.name for s in SETTINGS if s.name.startswith("big_segments_")})  # issue 11: own restart

#: Seconds between heartbeats (DESIGN §12).
TICK = 1.0
#: Seconds a starting supervisor waits for the previous one to release the namespace lock.
LOCK_WAIT = 2.0

#: The supervisor's ``sys.setswitchinterval`` (CPython's default is 5 ms). A thread that
#: wants the GIL while another one computes (the last-known-good writer encodes and joins
#: ~10-20 ms of Python at 10,000 flags every few seconds) waits up to this long each time;
#: with the default, a patch arriving then waited up to 5 ms per GIL hand-off before its
#: publish (issue #6's update p99). Switches only happen under contention.
SWITCH_INTERVAL = 0.0005


def freeze_heap() -> None:
    """After a full data set is published (a put): collect, then move every surviving object
    into the permanent generation (``gc.freeze``).

    The supervisor holds the whole data set (the store's items, the snapshot builder's cache,
    the last-known-good writer's encodings): ~10^6 tracked objects at 10,000 flags. Each
    full (generation 2) collection traversed all of them, 70-350 ms with the GIL held, and a
    patch arriving meanwhile waited that long to be published (issue #6's update p99). Frozen
    objects are still freed by reference counting (the LaunchDarkly JSON has no cycles); only
    cyclic garbage among them would wait, until the next put: the ``unfreeze`` + ``collect``
    here reclaims it then, so nothing accumulates. Costs one full collection per put, which
    happens at start and on stream reconnects, next to a full build that costs more. Run by
    the main loop's tick, after the control block's status and the READY notification.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Supervisor:
    """One namespace's supervisor: owns the store, the publisher, the source and the loop.

    :param config: the configuration in force.
    :param config_file: the TOML file it came from, re-read on SIGHUP.
    :param overrides: settings given on the command line; they keep precedence on SIGHUP.
    """

    SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    SIG_NAMES = {sig: sig.name[3:].lower() for sig in SIGNALS}

    def __init__(self, config: Config, config_file: Optional[str] = None,
                 overrides: Optional[Dict[str, Any]] = None) -> None:
        self.config = config
        self.config_file = config_file
        self.overrides = dict(overrides or {})
        self.pid = os.getpid()
        self.sig_queue: List[int] = []
        self._wake_r, self._wake_w = -1, -1
        self.store = Store()
        self.shm: Any = None
        self.publisher: Optional[SnapshotPublisher] = None
        self.source: Optional[Source] = None
        self.lock: Optional[NamespaceLock] = None
        self.lastgood: Optional[lastgood.Writer] = None
        self.events: Any = None
        self.redis_writer: Any = None
        self.big_segments: Any = None      # issue 11: Big Segments mirror, if configured
        self.metrics: Any = None
        self.notifier = Notifier.from_environ()
        self.state_dir = ""
        self.socket_path = ""
        self._announced_generation = 0
        self._last_publish: Optional[PublishResult] = None
        self._last_stats: Optional[Dict[str, int]] = None
        self._ready = False
        self._status_dirty = threading.Event()
        self._freeze_pending = False      # a full publish happened: freeze_heap() at the next tick
        self.last_update_ms = 0

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Start everything, loop until a stop signal, shut down; returns the exit status."""
        try:
            self.start()
            while True:
                sig = self.sig_queue.pop(0) if self.sig_queue else None
                if sig is not None:
                    handler = getattr(self, "handle_" + self.SIG_NAMES[sig])
                    log.info("received SIG%s", self.SIG_NAMES[sig].upper())
                    handler()
                    continue
                self.tick()
                self.sleep()
        except SupervisorHalt as halt:
            self.halt(halt)
            return halt.exit_status
        except Exception:
            log.exception("unexpected error in the supervisor")
            self.halt(SupervisorHalt("unexpected error", EXIT_ERROR))
            return EXIT_ERROR

    def start(self) -> None:
        """Everything before the loop, in order: lock, control block, cached data, source."""
        cfg = self.config
        self.state_dir = prepare_state_dir(cfg)
        self.lock = NamespaceLock(self.state_dir, cfg.name)
        try:
            self.lock.acquire(wait=LOCK_WAIT)
        except NamespaceLocked as exc:
            raise SupervisorHalt(str(exc), EXIT_LOCKED) from None
        self.init_signals()
        self.socket_path = cfg.socket_path if cfg.send_events and not cfg.offline else ""
        try:
            self.shm = open_control(cfg)
        except SnapshotError as exc:
            raise SupervisorHalt(f"cannot open the shared memory of namespace {cfg.name!r}: "
                                 f"{exc}", EXIT_LOCKED) from None
        except ConfigError as exc:
            raise SupervisorHalt(f"invalid configuration: {exc}", EXIT_CONFIG) from None
        self.store.set_source(source_name(cfg))
        self.store.add_status_listener(self.wakeup_status)
        self.write_status()
        log.info("supervisor pid %d for namespace %r (state_dir %s, source %s)",
                 self.pid, cfg.name, self.state_dir, source_name(cfg))

        from shmflags.snapshot.builder import SnapshotBuilder
        self.publisher = SnapshotPublisher(self.store, self.shm, SnapshotBuilder())
        self.lastgood = lastgood.Writer(lastgood.path_for(self.state_dir, cfg.name))
        self.publisher.on_publish(self.on_publish)
        self.load_last_good()
        self.publisher.start()
        self.lastgood.start()
        self.start_events()
        self.start_metrics()
        self.start_redis_writer()
        from shmflags.supervisor import bigsegments    # issue 11: Big Segments mirror
        self.big_segments = bigsegments.start(cfg, self.shm)
        self.start_source()
        self.notifier.status(self.status_text())

    def sleep(self) -> None:
        """Wait for a signal, a status change or the next tick, whichever comes first."""
        try:
            ready, _, _ = select.select([self._wake_r], [], [], TICK)
        except OSError as exc:  # pragma: no cover - EINTR is retried by Python (PEP 475)
            if exc.errno != errno.EINTR:
                raise
            return
        if ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def tick(self) -> None:
        """Once a second, and after each wake-up: heartbeat, status, READY, watchdog, reaping."""
        self.shm.heartbeat()
        if self._status_dirty.is_set():
            self._status_dirty.clear()
            self.write_status()
        self.announce_publish()
        self.notifier.watchdog()
        self.shm.reap()
        self.write_event_stats()
        if self._freeze_pending:
            self._freeze_pending = False
            freeze_heap()

    # ------------------------------------------------------------------ signals

    def init_signals(self) -> None:
        """Install the handlers and the self-pipe that wakes :meth:`sleep`."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in self.SIGNALS:
            signal.signal(sig, self.signal)

    def signal(self, sig: int, frame: Any) -> None:
        """The handler: queue the signal and wake the loop; nothing else."""
        if len(self.sig_queue) < 5:
            self.sig_queue.append(sig)
            self.wakeup()

    def wakeup(self) -> None:
        """Wake the main loop (safe from any thread and from a signal handler)."""
        try:
            os.write(self._wake_w, b".")
        except OSError:
            pass

    def wakeup_status(self) -> None:
        """Store status listener: have the loop write the status into the control block."""
        self._status_dirty.set()
        self.wakeup()

    def handle_term(self) -> None:
        """SIGTERM: flush events and exit 0, leaving the snapshot in place."""
        raise SupervisorHalt("SIGTERM", EXIT_OK)

    def handle_int(self) -> None:
        """SIGINT (Ctrl-C): as SIGTERM."""
        raise SupervisorHalt("SIGINT", EXIT_OK)

    def handle_quit(self) -> None:
        """SIGQUIT: as SIGTERM."""
        raise SupervisorHalt("SIGQUIT", EXIT_OK)

    def handle_hup(self) -> None:
        """SIGHUP: re-read the configuration and reload the data source.

        An invalid new configuration is logged and the old one kept. A changed source setting
        restarts the source; otherwise a file source reloads its files.
        """
        self.notifier.reloading()
        try:
            new = Config(config_file=self.config_file, **self.overrides)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the old one: %s", exc)
            self.notifier.ready(self.status_text())
            return
        old, self.config = self.config, new
        logsetup.configure(new.log_format, new.log_level)
        changed = sorted(k for k, v in new.as_dict(redact=False).items()
                         if old.as_dict(redact=False).get(k) != v)
        log.info("SIGHUP: configuration reloaded%s",
                 f" (changed: {', '.join(changed)})" if changed else "")
        for name in sorted(set(changed) & RESTART_SETTINGS):
            log.warning("SIGHUP: a change of %s takes effect on restart only", name)
        if set(changed) - NOT_SOURCE_SETTINGS:
            self.stop_source()
            self.store.set_source(source_name(new))
            self.start_source()
        elif hasattr(self.source, "reload"):
            self.source.reload()  # type: ignore[union-attr]
        if self.events is not None:   # a fixed sdk_key (after a 401) or new http_* for /bulk too
            self.events.delivery.reconfigure(new)
        if "metrics_addr" in changed:
            self.stop_metrics()
            self.start_metrics()
        if any(k.startswith("big_segments_") for k in changed):   # issue 11: Big Segments
            if self.big_segments is not None:
                self.big_segments.stop()
            from shmflags.supervisor import bigsegments
            self.big_segments = bigsegments.start(new, self.shm)
        self.notifier.ready(self.status_text())

    # ------------------------------------------------------------------ shutdown

    def halt(self, halt: SupervisorHalt) -> None:
        """Stop everything that was started, in reverse order. Shared memory stays in place."""
        if halt.exit_status in (EXIT_LOCKED, EXIT_CONFIG):
            log.error("%s", halt.reason)
            if self.lock is not None:
                self.lock.release()
            return
        log.info("stopping (%s)", halt.reason)
        self.notifier.stopping()
        self.stop_source()
        if self.publisher is not None:
            self.publisher.stop()
        if self.redis_writer is not None:
            self.redis_writer.stop()
        if self.big_segments is not None:              # issue 11: Big Segments mirror
            self.big_segments.stop()
        if self.lastgood is not None:
            self.lastgood.stop()
        self.stop_events()
        self.stop_metrics()
        if self.shm is not None:
            self.write_status()
            self.write_event_stats()
        if self.lock is not None:
            self.lock.release()
        self.notifier.close()
        log.info("stopped; generation %d stays published for the workers",
                 self.publisher.generation if self.publisher else 0)

    # ------------------------------------------------------------------ parts

    def load_last_good(self) -> None:
        """Publish the last-known-good data, if any, before any source is contacted."""
        path = lastgood.path_for(self.state_dir, self.config.name)
        try:
            cached = lastgood.load(path)
        except lastgood.LastGoodError as exc:
            log.warning("ignoring last-known-good file %s: %s", path, exc)
            return
        if cached is None:
            return
        self.store.init(cached.flags, cached.segments, from_cache=True)
        assert self.publisher is not None
        if self.publisher.publish_once():
            age = max(0.0, time.time() - cached.saved_ms / 1000.0)
            log.info("serving last-known-good data from %s (%d flags, %d segments, saved %.0f s "
                     "ago by source %s) until the source delivers", path, len(cached.flags),
                     len(cached.segments), age, cached.source or "?")

    def on_publish(self, result: PublishResult) -> None:
        """Publisher callback: persist live data and wake the loop to announce it."""
        self.last_update_ms = int(time.time() * 1000)
        self._last_publish = result
        if result.full:
            self._freeze_pending = True   # done by the main loop, after the status is written
        if not result.from_cache and self.lastgood is not None:
            self.lastgood.submit(result.flags, result.segments, result.source)
        self._status_dirty.set()
        self.wakeup()

    def announce_publish(self) -> None:
        """Log new generations and send READY=1 after the first."""
        result = self._last_publish
        if result is None or result.generation == self._announced_generation:
            return
        self._announced_generation = result.generation
        log.info("namespace %r: published generation %d: %d flags, %d segments, %d bytes in "
                 "%.1f ms (source %s)", self.config.name, result.generation, len(result.flags),
                 len(result.segments), result.size, result.seconds * 1000, result.source)
        if not self._ready:
            self._ready = True
            self.notifier.ready(self.status_text())
        else:
            self.notifier.status(self.status_text())

    def start_source(self) -> None:
        """Create and start the configured source; an unavailable one is logged, not fatal."""
        try:
            self.source = create_source(self.config, self.store)
        except ImportError as exc:
            log.error("data source %s is not available: %s", source_name(self.config), exc)
            self.store.set_status("OFF", {"kind": "UNKNOWN", "statusCode": 0,
                                          "message": f"source unavailable: {exc}"})
            return
        if self.events is not None and hasattr(self.source, "on_stream_init"):
            # Diagnostic events report each stream connection (ldclient's streamInits).
            self.source.on_stream_init = (  # type: ignore[attr-defined]
                self.events.record_stream_init)
        self.source.start()

    def stop_source(self) -> None:
        """Stop the source, if one runs."""
        if self.source is not None:
            self.source.stop()
            self.source = None

    def start_redis_writer(self) -> None:
        """Mirror live data into Redis when ``redis_write`` is on (never in daemon mode)."""
        cfg = self.config
        if not (cfg.redis_write and cfg.redis_url) or cfg.use_ldd:
            return
        try:
            from shmflags.supervisor.sources.redis_writer import RedisWriter
        except ImportError as exc:
            log.error("redis_write is on but the Redis writer is unavailable: %s", exc)
            return
        self.redis_writer = RedisWriter(cfg, self.store)
        self.store.add_listener(self.redis_writer.on_change)
        self.redis_writer.start()

    def start_events(self) -> None:
        """Start the event service when events are on (never in offline mode)."""
        if not self.socket_path:
            log.info("analytics events are off")
            return
        try:
            from shmflags.events.service import EventService
        except ImportError as exc:
            log.error("event service unavailable, events will not be delivered: %s", exc)
            return
        try:
            self.events = EventService(self.config)  # counters are read with counters()
            self.events.start()
        except Exception:  # noqa: BLE001 - the flags keep being served without events
            log.exception("cannot start the event service on %s", self.socket_path)
            self.events = None

    def stop_events(self) -> None:
        """Flush and stop the event service."""
        if self.events is not None:
            try:
                self.events.stop(flush=True)
            except Exception:  # noqa: BLE001
                log.exception("event service did not stop cleanly")

    def event_counters(self) -> Optional[Dict[str, int]]:
        """The event service's counters, or ``None`` when it does not run."""
        if self.events is None:
            return None
        try:
            return dict(self.events.counters())
        except Exception:  # noqa: BLE001
            return None

    def write_event_stats(self) -> None:
        """Publish the event counters beside the socket for ``shmflags status``."""
        counters = self.event_counters()
        if counters is None or not self.socket_path or counters == self._last_stats:
            return
        self._last_stats = counters
        try:
            status.write_stats(self.socket_path, counters)
        except OSError as exc:
            log.debug("cannot write event counters: %s", exc)

    def start_metrics(self) -> None:
        """Start the loopback HTTP endpoints when ``metrics_addr`` is set."""
        if not self.config.metrics_addr:
            return
        from shmflags.supervisor.metrics import MetricsServer
        self.metrics = MetricsServer(self.config.metrics_addr, self.report)
        try:
            self.metrics.start()
        except OSError as exc:
            log.error("cannot listen on metrics_addr %s: %s", self.config.metrics_addr, exc)
            self.metrics = None

    def stop_metrics(self) -> None:
        """Stop the HTTP endpoints."""
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    # ------------------------------------------------------------------ status

    def write_status(self) -> None:
        """Copy the store's status into the control block.

        Once something is published, ``source`` and ``from_cache`` describe the served
        generation and are written with it by the publisher, not here; before that they name
        the configured source, so ``status`` can say what the supervisor is waiting for.
        """
        st = self.store.status()
        error = st["last_error"]
        if error is not None:  # the store keeps LD's Unix ms; the control block takes seconds
            error = dict(error, time=(error.get("time") or 0) / 1000.0 or None)
        published = self.publisher is not None and self.publisher.generation > 0
        self.shm.set_status(st["state"], error=error, socket=self.socket_path,
                            source=None if published else st["source"],
                            from_cache=None if published else st["from_cache"],
                            environment_id=st.get("environment_id"))

    def report(self) -> Dict[str, Any]:
        """The ``/status`` object (as ``shmflags status --json``) plus internal counters."""
        doc = status.read_report(self.config.name, self.config.heartbeat_timeout)
        counters = self.event_counters()
        if doc.get("events") is not None and counters is not None:  # fresher than the file
            doc["events"] = {k: counters.get(k, 0) for k in status.EVENT_COUNTERS}
        pub = self.publisher
        doc["supervisor"] = {
            "publishes": pub.publishes if pub else 0,
            "publish_errors": pub.errors if pub else 0,
            "last_publish_seconds": pub.last_publish_seconds if pub else 0.0,
            "last_update_ms": self.last_update_ms,
            "lastgood_writes": self.lastgood.writes if self.lastgood else 0,
        }
        return doc

    def status_text(self) -> str:
        """One line for systemd's STATUS=."""
        st = self.store.status()
        gen = self.publisher.generation if self.publisher else 0
        text = f"{st['state']}, source {st['source'] or '-'}, generation {gen}"
        if st["last_error"] and st["state"] != "VALID":
            text += f"; last error: {st['last_error'].get('message', '')}"
        return text


# ---------------------------------------------------------------------- helpers


def prepare_state_dir(config: Config) -> str:
    """Create ``state_dir`` (0750) if needed and return it.

    When the *default* directory cannot be created (a non-root user trying the README demo),
    fall back to ``$XDG_STATE_HOME/shmflags`` (or ``~/.local/state/shmflags``) with a warning.

    :raises SupervisorHalt: (exit 2) when a configured directory is unusable.
    """
    default = next(s.default for s in SETTINGS if s.name == "state_dir")
    path = config.state_dir
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", path)
        return path
    except OSError as exc:
        if path != default:
            raise SupervisorHalt(f"state_dir: cannot use {path}: {exc.strerror or exc}",
                                 EXIT_CONFIG) from None
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    fallback = os.path.join(base, "shmflags")
    os.makedirs(fallback, mode=0o750, exist_ok=True)
    log.warning("state_dir %s is not writable; using %s", path, fallback)
    return fallback


def open_control(config: Config) -> Any:
    """Create (or take over) the namespace's control block."""
    from shmflags import shm
    return shm.Publisher(config.name, mode=config.shm_mode, group=config.shm_group,
                         grace=config.generation_grace)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Command-line options of ``shmflags-supervisor``."""
    parser = argparse.ArgumentParser(
        prog="shmflags-supervisor",
        description="Publish LaunchDarkly flags into shared memory for preforking servers. "
                    "Every setting is also read from SHMFLAGS_<SETTING>.")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--name", help="namespace (SHMFLAGS_NAME)")
    parser.add_argument("--data-file", action="append", metavar="PATH",
                        help="flag file (repeatable; SHMFLAGS_DATA_FILE)")
    parser.add_argument("--state-dir", help="state directory (SHMFLAGS_STATE_DIR)")
    parser.add_argument("--metrics-addr", help="HOST:PORT for /metrics and /status")
    parser.add_argument("--log-format", choices=("text", "json"))
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``shmflags-supervisor``; returns (and exits with) the exit status."""
    args = parse_args(argv)
    overrides = {k: v for k, v in (("name", args.name), ("data_file", args.data_file),
                                   ("state_dir", args.state_dir),
                                   ("metrics_addr", args.metrics_addr),
                                   ("log_format", args.log_format),
                                   ("log_level", args.log_level)) if v}
    try:
        config = Config(config_file=args.config, **overrides)
    except ConfigError as exc:
        sys.stderr.write(f"shmflags-supervisor: invalid configuration: {exc}\n")
        return EXIT_CONFIG
    logsetup.configure(config.log_format, config.log_level)
    sys.setswitchinterval(SWITCH_INTERVAL)
    supervisor = Supervisor(config, args.config, overrides)
    code = supervisor.run()
    if code == EXIT_CONFIG:
        sys.stderr.write("shmflags-supervisor: invalid configuration, see the log\n")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
