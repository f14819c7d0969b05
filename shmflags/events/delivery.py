"""POST event payloads to LaunchDarkly's events service (``/bulk``, ``/diagnostic``).

Runs in the supervisor's event flush thread. Behaviour as ldclient's (ld-protocol §1.3, §6.1):
schema-4 and payload-ID headers on ``/bulk``, one retry after 1 s with the same payload ID on
a network error or recoverable status, optional gzip, the server ``Date`` reported back for
the debug cut-off, and an unrecoverable status (401, 403, …) that stops all further sending.

The request headers are built here because ``shmflags/supervisor/http.py`` (the shared
helper of the network sources) did not exist when this module was written; the rules are
the same: ``Authorization`` (raw SDK key), ``User-Agent``, ``X-LaunchDarkly-Wrapper``
(``shmflags/<version>`` unless a wrapper is configured), ``X-LaunchDarkly-Tags``,
``X-LaunchDarkly-Instance-Id``.
"""
from __future__ import annotations

import calendar
import email.utils
import gzip
import json
import logging
import re
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import urllib3

import shmflags

__all__ = ["EventDelivery", "base_headers", "is_recoverable", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
"""``X-LaunchDarkly-Event-Schema`` sent with ``/bulk``."""

RETRY_DELAY = 1.0
"""Seconds before the single retry of a failed post."""

_TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def is_recoverable(status: int) -> bool:
    """ldclient's rule: 4xx other than 400, 408 and 429 are unrecoverable; others retry."""
    if 400 <= status < 500:
        return status in (400, 408, 429)
    return True


def wrapper_header(config: Any) -> str:
    """``X-LaunchDarkly-Wrapper``: the configured wrapper, else ``shmflags/<version>``."""
    name = getattr(config, "wrapper_name", None)
    if isinstance(name, str) and name:
        version = getattr(config, "wrapper_version", None)
        return name + ("/" + version if isinstance(version, str) and version else "")
    return "shmflags/" + shmflags.__version__


def base_headers(config: Any, instance_id: str) -> Dict[str, str]:
    """Headers every request to LaunchDarkly carries (ld-protocol §1.3)."""
    headers = {
        "Authorization": getattr(config, "sdk_key", "") or "",
        "User-Agent": "shmflags/" + shmflags.__version__,
        "X-LaunchDarkly-Wrapper": wrapper_header(config),
        "X-LaunchDarkly-Instance-Id": instance_id,
    }
    tags = []
    for label, value in (("application-id", getattr(config, "application_id", None)),
                         ("application-version", getattr(config, "application_version", None))):
        if value and _TAG_RE.match(str(value)):
            tags.append(f"{label}/{value}")
    if tags:
        headers["X-LaunchDarkly-Tags"] = " ".join(tags)
    return headers


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
        ``http_*`` timeouts and TLS options, the wrapper and application settings
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
        self.instance_id = str(uuid.uuid4())
        self._headers = base_headers(config, self.instance_id)
        self._timeout = urllib3.Timeout(connect=float(config.http_connect_timeout),
                                        read=float(config.http_read_timeout))
        self._http = self._pool(config)
        self.disabled = False
        self.last_status: Optional[int] = None
        self.last_error: Optional[str] = None

    @staticmethod
    def _pool(config: Any) -> urllib3.PoolManager:
        kwargs: Dict[str, Any] = {"num_pools": 2, "maxsize": 2}
        if getattr(config, "http_disable_ssl_verification", False):
            kwargs["cert_reqs"] = "CERT_NONE"
        elif getattr(config, "http_ca_certs", None):
            kwargs["ca_certs"] = config.http_ca_certs
        if getattr(config, "http_cert_file", None):
            kwargs["cert_file"] = config.http_cert_file
        proxy = getattr(config, "proxy_url", None)
        if proxy:
            return urllib3.ProxyManager(proxy, **kwargs)
        return urllib3.PoolManager(**kwargs)

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
                resp = self._http.request("POST", uri, body=data, headers=headers,
                                          timeout=self._timeout, retries=False,
                                          preload_content=True)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("error posting %s: %s%s", what, self.last_error,
                            "; will retry" if not attempt else "; dropped")
                continue
            self.last_status = resp.status
            server_time = _parse_date(resp.headers.get("Date"))
            if analytics and server_time is not None and self._on_server_time is not None:
                self._on_server_time(server_time)
            if resp.status < 300:
                self.last_error = None
                return True
            self.last_error = f"HTTP {resp.status}"
            if not is_recoverable(resp.status):
                log.error("events service answered HTTP %d%s posting %s%s", resp.status,
                          " (invalid SDK key)" if resp.status in (401, 403) else "", what,
                          "; event sending is disabled" if analytics else "")
                if analytics:
                    self.disabled = True
                return False
            log.warning("events service answered HTTP %d posting %s%s", resp.status, what,
                        "; will retry" if not attempt else "; dropped")
        return False

    def close(self) -> None:
        """Release the connection pool."""
        self._http.clear()
