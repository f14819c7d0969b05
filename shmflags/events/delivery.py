"""POST event payloads to LaunchDarkly's events service (``/bulk``, ``/diagnostic``).

Runs in the supervisor's event flush thread. Behaviour as ldclient's (ld-protocol §1.3, §6.1):
schema-4 and payload-ID headers on ``/bulk``, one retry after 1 s with the same payload ID on
a network error or recoverable status, optional gzip, the server ``Date`` reported back for
the debug cut-off, and an unrecoverable status (401, 403, …) that stops all further sending.

Headers, TLS/proxy options and timeouts come from ``shmflags/supervisor/http.py``, the helper
the streaming and polling sources use, so every request of one supervisor carries the same
``X-LaunchDarkly-Instance-Id`` (one per process) and ``X-LaunchDarkly-Wrapper``, and the
``http_*`` settings are passed with each request (``requests`` would otherwise let
``REQUESTS_CA_BUNDLE`` and environment proxies override them).
"""
from __future__ import annotations

import calendar
import email.utils
import gzip
import json
import logging
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import requests

from shmflags.supervisor import http
from shmflags.supervisor.http import base_headers, is_recoverable

__all__ = ["EventDelivery", "base_headers", "is_recoverable", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
"""``X-LaunchDarkly-Event-Schema`` sent with ``/bulk``."""

RETRY_DELAY = 1.0
"""Seconds before the single retry of a failed post."""


def _parse_date(value: Optional[str]) -> Optional[int]:
    if not value:
        return None
    parsed = email.utils.parsedate(value)
    if parsed is None:
        return None
    return int(calendar.timegm(parsed) * 1000)


class EventDelivery:
    """Posts payloads; remembers the server time and whether sending was disabled.

    :param config: reads ``sdk_key``, ``events_uri``, ``enable_event_compression``, the
        ``http_*`` timeouts, TLS and proxy options, the wrapper and application settings
    :param on_server_time: called with the ms of each response's ``Date`` header
    :param sleep: injectable for tests (the retry delay)
    """

    def __init__(self, config: Any, on_server_time: Optional[Callable[[int], None]] = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._config = config
        self._uri = str(config.events_uri).rstrip("/")
        self._gzip = bool(getattr(config, "enable_event_compression", False))
        self._on_server_time = on_server_time
        self._sleep = sleep
        self.instance_id = http.process_instance_id()
        self._headers = base_headers(config, self.instance_id)
        self._timeout = http.timeouts(config)
        self._options = http.request_options(config)
        self._session = http.make_session(config)
        self.disabled = False
        self.last_status: Optional[int] = None
        self.last_error: Optional[str] = None

    def reconfigure(self, config: Any) -> bool:
        """Take a reloaded configuration's SDK key, wrapper, application and ``http_*``
        settings (supervisor SIGHUP).

        When they differ from the current ones, requests use them from the next post on, and
        sending resumes if an unrecoverable status (a revoked key) had disabled it: the
        operator fixed the key, so the events service deserves another try.

        :returns: whether anything changed.
        """
        headers = base_headers(config, self.instance_id)
        timeout, options = http.timeouts(config), http.request_options(config)
        if (headers, timeout, options) == (self._headers, self._timeout, self._options):
            return False
        self._session = http.make_session(config)
        self._headers, self._timeout, self._options = headers, timeout, options
        self._config = config
        if self.disabled:
            log.info("event sending resumes with the reloaded SDK key and HTTP settings")
        self.disabled = False
        return True

    def post_bulk(self, events: List[Dict[str, Any]]) -> bool:
        """POST one analytics payload to ``/bulk``.

        :param events: the output events (a JSON array body)
        :returns: ``True`` when the events service accepted it
        """
        body = json.dumps(events, separators=(",", ":"))
        headers = {"X-LaunchDarkly-Event-Schema": str(SCHEMA_VERSION),
                   "X-LaunchDarkly-Payload-ID": str(uuid.uuid4())}
        return self._post(self._uri + "/bulk", body, headers, f"{len(events)} events", True)

    def post_diagnostic(self, event: Dict[str, Any]) -> bool:
        """POST one diagnostic event to ``/diagnostic`` (no schema or payload-ID header)."""
        return self._post(self._uri + "/diagnostic", json.dumps(event), {}, "diagnostic event",
                          False)

    def _post(self, uri: str, body: str, extra: Dict[str, str], what: str,
              analytics: bool) -> bool:
        """Post with one retry; only analytics responses feed the clock and the kill switch."""
        if self.disabled:
            return False
        headers = dict(self._headers)
        headers["Content-Type"] = "application/json"
        headers.update(extra)
        data: bytes = body.encode("utf-8")
        if self._gzip:
            headers["Content-Encoding"] = "gzip"
            data = gzip.compress(data)
        for attempt in (0, 1):
            if attempt:
                self._sleep(RETRY_DELAY)
            try:
                resp = self._session.post(uri, data=data, headers=headers,
                                          timeout=self._timeout, allow_redirects=False,
                                          **self._options)
            except (requests.RequestException, OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("error posting %s: %s%s", what, self.last_error,
                            "; will retry" if not attempt else "; dropped")
                continue
            status = resp.status_code
            resp.close()
            self.last_status = status
            server_time = _parse_date(resp.headers.get("Date"))
            if analytics and server_time is not None and self._on_server_time is not None:
                self._on_server_time(server_time)
            if status < 300:
                self.last_error = None
                return True
            self.last_error = f"HTTP {status}"
            if not is_recoverable(status):
                log.error("events service answered HTTP %d%s posting %s%s", status,
                          " (invalid SDK key)" if status in (401, 403) else "", what,
                          "; event sending is disabled" if analytics else "")
                if analytics:
                    self.disabled = True
                return False
            log.warning("events service answered HTTP %d posting %s%s", status, what,
                        "; will retry" if not attempt else "; dropped")
        return False

    def close(self) -> None:
        """Release the connection pool."""
        self._session.close()
