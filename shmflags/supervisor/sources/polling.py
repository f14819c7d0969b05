"""The polling source: ``GET {base_uri}/sdk/latest-all`` every ``poll_interval`` seconds.

Runs in the supervisor only, on one daemon thread. As ldclient (ld-protocol §1.5): the first
poll is immediate; the body is treated as a ``put``; the ``ETag`` is sent back as
``If-None-Match`` and a ``304`` keeps the current data; the interval is at least 30 s (the
Config enforces it; tests shorten it with the private ``_interval`` argument). Errors are
classified as for streaming: recoverable ones report ``INTERRUPTED`` and the next poll comes
after the usual interval; 401, 403 and other unrecoverable 4xx turn the source ``OFF``. A body
larger than ``max_stream_message_bytes`` or of the wrong shape is ``INVALID_DATA`` and the last
good data stays.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Optional, Tuple

import requests

from shmflags.config import Config
from shmflags.supervisor import http
from shmflags.supervisor.sources import SourceSink
from shmflags.supervisor.sources._messages import InvalidData, parse_all_data

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


class PollingSource:
    """Feeds the sink from the polling endpoint.

    :param config: ``base_uri``, ``payload_filter_key``, ``poll_interval``, ``sdk_key`` and
        headers, ``http_*``, ``max_stream_message_bytes``.
    :param sink: the store.
    :param instance_id: ``X-LaunchDarkly-Instance-Id`` (default: one per process).
    :param _interval: tests only: seconds between polls, below the 30 s minimum.
    """

    name = "polling"

    def __init__(self, config: Config, sink: SourceSink, *, instance_id: Optional[str] = None,
                 _interval: Optional[float] = None) -> None:
        self._config = config
        self._sink = sink
        self.url = http.uri(config.base_uri, "/sdk/latest-all", config.payload_filter_key)
        self.interval = float(config.poll_interval if _interval is None else _interval)
        self._headers = http.base_headers(config, instance_id)
        self._timeout = http.timeouts(config)
        self._options = http.request_options(config)
        self._limit = int(config.max_stream_message_bytes)
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._session: Optional[requests.Session] = None
        #: polls made so far (for tests and metrics)
        self.polls = 0

    def start(self) -> None:
        """Start the polling thread; the first poll is made at once."""
        self._thread = threading.Thread(target=self._run, name="shmflags-polling", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; an in-flight request is abandoned (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        missing = http.missing_key_error(self._config, "polling")
        if missing is not None:
            log.error("%s", missing["message"])
            self._sink.set_status("OFF", missing)
            return
        log.info("polling %s every %.0fs", self.url, self.interval)
        self._session = http.make_session(self._config)
        try:
            while not self._stop.is_set():
                if not self.poll_once():
                    break
                if self._stop.wait(self.interval):
                    break
        finally:
            self._session.close()

    def poll_once(self) -> bool:
        """Make one request and report the outcome; returns ``False`` once the source is OFF."""
        self.polls += 1
        outcome = self._fetch()
        if self._stop.is_set():
            return False
        if outcome is None:
            self._sink.set_status("VALID")
            return True
        info, recoverable = outcome
        if not recoverable:
            log.error("%s for polling request - giving up permanently", info["message"])
            self._sink.set_status("OFF", info)
            return False
        log.warning("%s - will retry in %.0fs", info["message"], self.interval)
        self._sink.set_status("INTERRUPTED", info)
        return True

    def _fetch(self) -> Optional[Tuple[Dict[str, Any], bool]]:
        """GET once and apply the result; returns ``None`` on success, else (error, recoverable)."""
        session = self._session or http.make_session(self._config)
        headers = dict(self._headers, **{"Accept-Encoding": "gzip"})
        if self._etag:
            headers["If-None-Match"] = self._etag
        try:
            with session.get(self.url, headers=headers, timeout=self._timeout, stream=True,
                             **self._options) as resp:
                if resp.status_code in (200, 304):
                    http.record_environment_id(self._sink, resp.headers)
                if resp.status_code == 304:
                    return None
                if resp.status_code >= 400:
                    status = resp.status_code
                    return (http.error_info(http.ERROR_RESPONSE, http.error_description(status), status),
                            http.is_recoverable(status))
                if resp.status_code != 200:
                    return http.error_info(http.UNKNOWN, f"unexpected HTTP status {resp.status_code}",
                                           resp.status_code), True
                body = self._read(resp)
                etag = resp.headers.get("ETag")
        except _TooLarge as exc:
            return http.error_info(http.INVALID_DATA, str(exc)), True
        except (requests.RequestException, OSError) as exc:
            return http.error_info(http.NETWORK_ERROR, f"polling request failed: {exc}"), True
        try:
            flags, segments = parse_all_data(body.decode("utf-8"))
        except (InvalidData, UnicodeDecodeError) as exc:
            return http.error_info(http.INVALID_DATA, f"invalid polling response: {exc}"), True
        try:
            self._sink.init(flags, segments)
        except Exception as exc:  # noqa: BLE001 - report any store failure and poll again
            log.exception("store init failed")
            return http.error_info(http.STORE_ERROR, f"store update failed: {exc}"), True
        self._etag = etag  # only after the data was accepted
        return None

    def _read(self, resp: requests.Response) -> bytes:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self._limit:
            raise _TooLarge(f"polling response larger than {self._limit} bytes")
        parts = []
        size = 0
        for chunk in resp.iter_content(64 * 1024):
            size += len(chunk)
            if size > self._limit:
                raise _TooLarge(f"polling response larger than {self._limit} bytes")
            parts.append(chunk)
        return b"".join(parts)
