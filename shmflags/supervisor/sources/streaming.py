"""The streaming source: LaunchDarkly's SSE stream ``GET {stream_uri}/all`` (FDv1).

Runs in the supervisor only, on one daemon thread per source. Behaviour follows ldclient and
ld-protocol §1.4/§1.6:

* ``put`` replaces all data and marks the source ``VALID``; ``patch``/``delete`` go to the
  store, which applies version rules; patches and deletes for unknown kinds and unknown event
  names are ignored.
* Malformed JSON or a payload of the wrong shape drops the connection: state ``INTERRUPTED``
  with an ``INVALID_DATA`` error, the last good data stays, and the stream reconnects with
  backoff. So does a message larger than ``max_stream_message_bytes``.
* Reconnect delays come from :class:`~shmflags.supervisor.http.Backoff` (first connection
  immediate; ``initial_reconnect_delay`` doubling to 30 s with 50 % jitter; reset after 60 s
  connected). The read timeout is 5 minutes; heartbeat comments reset it.
* 400, 408, 429, 5xx and network errors are retried (state ``INTERRUPTED``, which the store
  shows as ``INITIALIZING`` before the first success); 401, 403 and any other 4xx turn the
  source ``OFF`` for good ("invalid SDK key" for 401/403).
* Like ldclient, there is no automatic fallback to polling; ``stream=false`` selects polling.

SSE parsing is ``requests_sse.EventSource``; :class:`_EventStream` only replaces its line
reader with one that returns data as soon as it arrives (``read1``), enforces the message size
limit, and reports the end of the stream instead of letting the library reconnect on its own.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, Optional

import requests
from requests_sse import EventSource, InvalidContentTypeError, InvalidStatusCodeError, MessageEvent

from shmflags.config import Config
from shmflags.supervisor import http
from shmflags.supervisor.sources import SourceSink
from shmflags.supervisor.sources._messages import InvalidData, parse_delete, parse_patch, parse_put

log = logging.getLogger(__name__)

#: Seconds without any byte (heartbeats included) after which the stream is dropped.
STREAM_READ_TIMEOUT = 300.0

_READ_SIZE = 64 * 1024


class StreamClosed(Exception):
    """The server ended the stream (not a ``requests`` exception, so requests_sse lets it out)."""


class MessageTooLarge(Exception):
    """One SSE message grew past ``max_stream_message_bytes``."""


def bounded_lines(raw: Any, limit: int) -> Iterator[bytes]:
    """Yield SSE lines (without terminators) from a urllib3 response, as bytes arrive.

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE grammar). A long line (a ``put``
    is one ``data:`` line of many megabytes) is collected as a list of chunks and joined
    once, so reading it is linear. The bytes of the current message (every line since the last
    blank one, plus the unterminated tail) are counted; beyond ``limit``
    :class:`MessageTooLarge` is raised, so memory stays bounded.

    :raises StreamClosed: at the end of the body.
    """
    parts: list = []      # pieces of the current, unterminated line
    pending = 0           # bytes in parts
    message = 0           # bytes of the current message's complete lines
    skip_lf = False       # the last line ended with \r: a \n right after it belongs to it
    while True:
        chunk = raw.read1(_READ_SIZE, decode_content=True)
        if not chunk:
            if parts:
                yield b"".join(parts)
            raise StreamClosed("the server closed the stream connection")
        start, n = 0, len(chunk)
        if skip_lf:
            skip_lf = False
            if chunk[:1] == b"\n":
                start = 1
        while start < n:
            nl = chunk.find(b"\n", start)
            cr = chunk.find(b"\r", start, nl if nl >= 0 else n)
            if cr >= 0:
                end = cr
                if cr + 1 < n:
                    nxt = cr + (2 if chunk[cr + 1] == 0x0A else 1)
                else:
                    nxt, skip_lf = n, True
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                parts.append(chunk[start:])
                pending += n - start
                if message + pending > limit:
                    raise MessageTooLarge(f"stream message larger than {limit} bytes")
                break
            if parts:
                parts.append(chunk[start:end])
                line = b"".join(parts)
                parts, pending = [], 0
            else:
                line = chunk[start:end]
            message = 0 if not line else message + len(line) + 1
            if message > limit:
                raise MessageTooLarge(f"stream message larger than {limit} bytes")
            yield line
            start = nxt


class _EventStream(EventSource):
    """``requests_sse.EventSource`` with :func:`bounded_lines` as its line reader.

    Connects once (``max_connect_retry=0``): every retry decision is the source's.
    """

    def __init__(self, url: str, *, limit: int, **kwargs: Any) -> None:
        super().__init__(url, max_connect_retry=0, **kwargs)
        self._limit = limit

    def connect(self, retry: int = 0) -> None:
        super().connect(0)
        if self._response is not None:
            self._data_generator = bounded_lines(self._response.raw, self._limit)

    @property
    def response(self) -> Optional[requests.Response]:
        return self._response

    def interrupt(self) -> None:
        """Wake a read blocked in another thread by shutting the socket down for reading."""
        response = self._response
        if response is None:
            return
        try:
            response.raw.shutdown()
        except (AttributeError, ValueError, RuntimeError, OSError):
            pass


class StreamingSource:
    """Feeds the sink from the SSE stream.

    :param config: ``stream_uri``, ``payload_filter_key``, ``sdk_key`` and headers,
        ``initial_reconnect_delay``, ``http_*``, ``max_stream_message_bytes``.
    :param sink: the store.
    :param instance_id: ``X-LaunchDarkly-Instance-Id`` (default: one per process).
    :param _read_timeout: tests only: seconds without bytes before reconnecting.
    :param _backoff: tests only: a preconfigured :class:`~shmflags.supervisor.http.Backoff`.
    """

    name = "streaming"

    def __init__(self, config: Config, sink: SourceSink, *, instance_id: Optional[str] = None,
                 _read_timeout: float = STREAM_READ_TIMEOUT,
                 _backoff: Optional[http.Backoff] = None) -> None:
        self._config = config
        self._sink = sink
        self.url = http.uri(config.stream_uri, "/all", config.payload_filter_key)
        # Uncompressed, as ldclient's stream (urllib3 sends identity): a compressing server or
        # proxy could otherwise hold events back in its compressor's buffer.
        self._headers = dict(http.base_headers(config, instance_id), **{"Accept-Encoding": "identity"})
        self._timeout = http.timeouts(config, read=_read_timeout)
        self._options = http.request_options(config)
        self._last_event_id: Optional[str] = None
        self._limit = int(config.max_stream_message_bytes)
        self._backoff = _backoff or http.Backoff(config.initial_reconnect_delay)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: Optional[_EventStream] = None
        self._thread: Optional[threading.Thread] = None
        #: connection attempts made so far (for tests and metrics)
        self.attempts = 0
        #: called as ``on_stream_init(timestamp_ms, duration_ms, failed)`` once per connection
        #: attempt, when its first ``put`` arrives or it fails (diagnostic ``streamInits``)
        self.on_stream_init: Optional[Callable[[int, int, bool], None]] = None
        self._attempt_started: Optional[float] = None

    # -- Source ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the stream thread; the first connection is made at once."""
        self._thread = threading.Thread(target=self._run, name="shmflags-streaming", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop: close the connection and let the thread end; returns within about a second."""
        self._stop.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.interrupt()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        missing = http.missing_key_error(self._config, "streaming")
        if missing is not None:
            log.error("%s", missing["message"])
            self._sink.set_status("OFF", missing)
            return
        log.info("streaming from %s", self.url)
        session = http.make_session(self._config)
        try:
            delay = 0.0
            while not self._stop.is_set():
                if delay and self._stop.wait(delay):
                    break
                error = self._connect_and_read(session)
                if error is None or self._stop.is_set():
                    break
                info, recoverable = error
                self._report_init(failed=True)
                if not recoverable:
                    log.error("%s for stream connection - giving up permanently", info["message"])
                    self._sink.set_status("OFF", info)
                    break
                delay = self._backoff.next_delay()
                log.warning("%s - will retry stream connection in %.1fs", info["message"], delay)
                self._sink.set_status("INTERRUPTED", info)
        finally:
            session.close()

    def _connect_and_read(self, session: requests.Session) -> Optional[tuple]:
        """One connection: returns ``(error_info, recoverable)``, or ``None`` when stopped."""
        stream = _EventStream(self.url, limit=self._limit, session=session,
                              timeout=self._timeout, headers=dict(self._headers),
                              latest_event_id=self._last_event_id, **self._options)
        with self._lock:
            if self._stop.is_set():
                return None
            self._current = stream
        self.attempts += 1
        self._attempt_started = time.monotonic()
        try:
            try:
                stream.connect()
            except InvalidStatusCodeError as exc:
                status = exc.status_code
                return (http.error_info(http.ERROR_RESPONSE, http.error_description(status), status),
                        http.is_recoverable(status))
            except InvalidContentTypeError as exc:
                return http.error_info(http.UNKNOWN, f"unexpected content type {exc.content_type!r}"), True
            except (requests.RequestException, OSError) as exc:
                return http.error_info(http.NETWORK_ERROR, f"stream connection failed: {exc}"), True
            if self._stop.is_set():
                return None
            self._backoff.mark_good()
            if stream.response is not None:
                http.record_environment_id(self._sink, stream.response.headers)
            try:
                for message in stream:
                    if self._stop.is_set():
                        return None
                    if message.last_event_id:
                        self._last_event_id = message.last_event_id  # sent as Last-Event-Id
                    self._handle(message)
            except InvalidData as exc:
                return http.error_info(http.INVALID_DATA, f"invalid stream data: {exc}"), True
            except (MessageTooLarge, UnicodeDecodeError) as exc:
                return http.error_info(http.INVALID_DATA, f"invalid stream data: {exc}"), True
            except _SinkFailed as exc:
                return http.error_info(http.STORE_ERROR, f"store update failed: {exc}"), True
            except StreamClosed as exc:
                return http.error_info(http.NETWORK_ERROR, str(exc)), True
            except Exception as exc:  # noqa: BLE001 - urllib3/socket errors: read timeout, reset
                if self._stop.is_set():
                    return None
                return http.error_info(http.NETWORK_ERROR, f"stream read failed: {exc}"), True
            return http.error_info(http.NETWORK_ERROR, "stream ended"), True
        finally:
            with self._lock:
                self._current = None
            stream.close()

    def _handle(self, message: MessageEvent) -> None:
        event, data = message.type, message.data or ""
        if event == "put":
            flags, segments = parse_put(data)
            log.debug("put: %d flags, %d segments", len(flags), len(segments))
            self._call("init", flags, segments)
            self._sink.set_status("VALID")
            self._report_init(failed=False)
        elif event == "patch":
            patch = parse_patch(data)
            if patch is None:
                log.warning("ignoring patch for an unknown path")
                return
            self._call("upsert", *patch)
        elif event == "delete":
            delete = parse_delete(data)
            if delete is None:
                log.warning("ignoring delete for an unknown path")
                return
            self._call("delete", *delete)
        else:
            log.debug("ignoring stream event %r", event)

    def _report_init(self, failed: bool) -> None:
        started, self._attempt_started = self._attempt_started, None
        callback = self.on_stream_init
        if started is None or callback is None:
            return
        try:
            callback(int(time.time() * 1000), int((time.monotonic() - started) * 1000), failed)
        except Exception:  # noqa: BLE001 - diagnostics must not break the stream
            log.exception("on_stream_init callback failed")

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self._sink, method)(*args)
        except Exception as exc:  # noqa: BLE001 - any store failure restarts the stream
            log.exception("store %s failed", method)
            raise _SinkFailed(str(exc)) from exc


class _SinkFailed(Exception):
    """The sink raised while applying a valid message."""

