"""Optional loopback HTTP endpoints of the supervisor: ``/metrics`` (Prometheus) and ``/status``.

Runs in the supervisor only, in one daemon thread, and only when ``metrics_addr`` is set. The
values are read on each request from a callable returning the status report plus the
supervisor's own counters, so nothing is kept twice.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

STATES = ("INITIALIZING", "VALID", "INTERRUPTED", "OFF")
Provider = Callable[[], Dict[str, Any]]


class _Collector:
    """A prometheus_client collector reading everything from one report per scrape."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def collect(self) -> Iterator[Metric]:
        report = self._provider()
        internal = report.get("supervisor", {})

        def gauge(name: str, doc: str, value: Any) -> Metric:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value or 0))
            return g

        def counter(name: str, doc: str, value: Any) -> Metric:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value or 0))
            return c

        state = GaugeMetricFamily("shmflags_data_source_state",
                                  "1 for the current data-source state", labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if report.get("state") == name else 0.0)
        yield state
        yield gauge("shmflags_generation", "Generation of the snapshot being served",
                    report.get("generation"))
        yield gauge("shmflags_flags", "Flags in the served snapshot", report.get("flags"))
        yield gauge("shmflags_segments", "Segments in the served snapshot",
                    report.get("segments"))
        yield gauge("shmflags_snapshot_bytes", "Size of the served snapshot",
                    report.get("data_size"))
        yield gauge("shmflags_from_cache", "1 while serving the last-known-good data",
                    1 if report.get("from_cache") else 0)
        yield gauge("shmflags_last_update_timestamp_seconds", "Unix time of the last publish",
                    (internal.get("last_update_ms") or 0) / 1000.0)
        yield counter("shmflags_publishes", "Snapshots published since start",
                      internal.get("publishes"))
        yield counter("shmflags_publish_errors", "Failed builds or publishes since start",
                      internal.get("publish_errors"))
        yield gauge("shmflags_last_publish_seconds", "Duration of the last build and publish",
                    internal.get("last_publish_seconds"))
        yield counter("shmflags_lastgood_writes", "Last-known-good file writes",
                      internal.get("lastgood_writes"))
        events = report.get("events") or {}
        for key in ("received", "sent", "dropped", "invalid"):
            yield counter(f"shmflags_events_{key}", f"Analytics events {key}", events.get(key))


class MetricsServer:
    """The HTTP server; :meth:`start` binds ``addr`` (``HOST:PORT``), :meth:`stop` closes it.

    :param addr: where to listen; a non-loopback host is allowed but logged as a warning.
    :param provider: returns the status report (with a ``"supervisor"`` sub-dict of counters).
    """

    def __init__(self, addr: str, provider: Provider) -> None:
        self.host, self.port = _split(addr)
        self._provider = provider
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(provider))  # type: ignore[arg-type]
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        :raises OSError: when the address cannot be bound.
        """
        if not _is_loopback(self.host):
            log.warning("metrics_addr %s:%d is not a loopback address", self.host, self.port)
        registry, provider = self._registry, self._provider

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(registry)
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/status":
                    report = {k: v for k, v in provider().items() if k != "supervisor"}
                    body = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
                    ctype = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics: " + fmt, *args)

        family = ThreadingHTTPServer.address_family
        if ":" in self.host:
            import socket
            family = socket.AF_INET6

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="shmflags-metrics", daemon=True)
        self._thread.start()
        log.info("metrics and status on http://%s:%d/metrics and /status",
                 self.host if ":" not in self.host else f"[{self.host}]", self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _split(addr: str) -> Tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
