"""A loopback fake of LaunchDarkly's stream, polling and events endpoints, for tests.

Runs in the test process (or alone: ``python -m tests.fakes.fake_ld --port N``) on a
``ThreadingHTTPServer`` bound to 127.0.0.1. It serves:

* ``GET /all`` — SSE: an initial ``put`` of the current data, then every pushed event, and a
  ``:`` heartbeat comment every ``heartbeat_interval`` seconds (``None`` = never);
* ``GET /sdk/latest-all`` — the current data as JSON with an ``ETag``; ``If-None-Match`` with
  that tag gives ``304``;
* ``POST /bulk`` and ``POST /diagnostic`` — recorded with their headers, answered ``202``.

``?filter=`` and every header are recorded in :attr:`FakeLD.requests`. Failures are scripted
per path with :meth:`FakeLD.respond_with`. With ``relay=True`` the data endpoints answer
``503`` until :meth:`FakeLD.set_data` is called, as a Relay Proxy without data does.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeLD", "RecordedRequest", "ReceivedPayload", "sse_frame"]

_CLOSE = object()  # queue sentinel: end this stream connection


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]
    body: bytes
    time: float
    status: int = 0  # the status the fake answered with


@dataclass
class ReceivedPayload:
    """One ``/bulk`` or ``/diagnostic`` body, decoded from JSON (``None`` if it was not JSON)."""

    payload: Any
    headers: Dict[str, str]
    raw: bytes = field(repr=False, default=b"")


@dataclass
class _Scripted:
    status: int
    times: Optional[int]
    body: bytes
    headers: Dict[str, str]


def sse_frame(event: str, data: Union[str, bytes, Any]) -> bytes:
    """Encode one SSE event: ``event:`` line, one ``data:`` line per line of data, blank line.

    :param event: the event name (``put``, ``patch``, ``delete`` or anything else).
    :param data: a JSON-able object (encoded), or a ``str``/``bytes`` sent as is (malformed
        JSON is the caller's business).
    """
    if isinstance(data, bytes):
        text = data.decode("utf-8", "surrogateescape")
    elif isinstance(data, str):
        text = data
    else:
        text = json.dumps(data, separators=(",", ":"))
    lines = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"event: {event}\n{lines}\n".encode("utf-8", "surrogateescape")


class FakeLD:
    """The fake service. Use as a context manager; every attribute is safe to change live.

    :param port: TCP port on 127.0.0.1 (0 = a free one).
    :param heartbeat_interval: seconds between ``:`` comments on open streams; ``None`` = never.
    :param relay: behave as a Relay Proxy without data: ``503`` on ``/all`` and
        ``/sdk/latest-all`` until :meth:`set_data` is called.
    :param tls: ``(certfile, keyfile)`` to serve HTTPS instead of HTTP.
    """

    def __init__(self, port: int = 0, *, heartbeat_interval: Optional[float] = 1.0,
                 relay: bool = False, tls: Optional[Tuple[str, str]] = None) -> None:
        self.heartbeat_interval = heartbeat_interval
        #: send the current data as a ``put`` when a stream opens
        self.initial_put = True
        self.requests: List[RecordedRequest] = []
        self.events: List[ReceivedPayload] = []
        self.diagnostics: List[ReceivedPayload] = []
        self._lock = threading.Condition()
        self._data: Optional[Dict[str, Dict[str, Any]]] = None if relay else {"flags": {}, "segments": {}}
        self._streams: List["queue.Queue[Any]"] = []
        self._scripted: Dict[Optional[str], _Scripted] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True
        self._scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            # the handshake happens in the handler thread, so a client that rejects the
            # certificate cannot stall the accept loop
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
            self._scheme = "https"
        self._thread: Optional[threading.Thread] = None

    # -- lifetime ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URI to use as ``stream_uri``, ``base_uri`` and ``events_uri``."""
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def start(self) -> "FakeLD":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name="fake-ld", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close every stream and stop serving; returns when the listener is closed."""
        self.disconnect_streams()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "FakeLD":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- data ----------------------------------------------------------------------------

    def set_data(self, flags: Optional[Dict[str, Any]] = None,
                 segments: Optional[Dict[str, Any]] = None) -> None:
        """Replace the data served to new streams and to polling (open streams get nothing)."""
        with self._lock:
            self._data = {"flags": dict(flags or {}), "segments": dict(segments or {})}

    def clear_data(self) -> None:
        """Forget all data: data endpoints answer ``503`` (a Relay Proxy not ready yet)."""
        with self._lock:
            self._data = None

    @property
    def data(self) -> Optional[Dict[str, Dict[str, Any]]]:
        with self._lock:
            return None if self._data is None else json.loads(json.dumps(self._data))

    def push(self, event: str, data: Union[str, bytes, Any]) -> int:
        """Send one SSE event to every open stream; returns how many streams got it.

        A dict ``put``/``patch``/``delete`` is also applied to the current data, so a client
        that reconnects gets a consistent ``put``. ``str``/``bytes`` data goes out verbatim
        (for malformed JSON) and changes nothing.
        """
        if isinstance(data, dict):
            self._apply(event, data)
        return self.push_raw(sse_frame(event, data))

    def push_raw(self, raw: bytes) -> int:
        """Write bytes verbatim to every open stream (for broken framing, huge lines...)."""
        with self._lock:
            for q in self._streams:
                q.put(raw)
            return len(self._streams)

    def disconnect_streams(self) -> int:
        """Close every open stream connection from the server side; returns how many."""
        with self._lock:
            streams = list(self._streams)
            for q in streams:
                q.put(_CLOSE)
            return len(streams)

    def _apply(self, event: str, body: Dict[str, Any]) -> None:
        with self._lock:
            if self._data is None and event != "put":
                return
            if event == "put" and isinstance(body.get("data"), dict):
                d = body["data"]
                self._data = {"flags": dict(d.get("flags") or {}),
                              "segments": dict(d.get("segments") or {})}
                return
            path = str(body.get("path", ""))
            kind, _, key = path.strip("/").partition("/")
            if kind not in ("flags", "segments") or not key or self._data is None:
                return
            if event == "patch" and isinstance(body.get("data"), dict):
                self._data[kind][key] = body["data"]
            elif event == "delete":
                self._data[kind][key] = {"key": key, "version": body.get("version"), "deleted": True}

    # -- scripted failures ---------------------------------------------------------------

    def respond_with(self, status: int, path: Optional[str] = None, *, times: Optional[int] = None,
                     body: Union[bytes, str, None] = None,
                     headers: Optional[Dict[str, str]] = None) -> None:
        """Answer requests to ``path`` (``None`` = every path) with ``status`` instead.

        :param times: how many requests to answer so (``None`` = until :meth:`clear_failures`).
        :param body: response body (default: empty). With ``status=200`` on ``/sdk/latest-all``
            this serves arbitrary (e.g. malformed) poll bodies; on ``/all`` the body is sent as
            the stream content with ``text/event-stream`` and the connection then closed.
        """
        raw = body.encode() if isinstance(body, str) else (body or b"")
        with self._lock:
            self._scripted[path] = _Scripted(status, times, raw, dict(headers or {}))

    def clear_failures(self) -> None:
        with self._lock:
            self._scripted.clear()

    def _take_scripted(self, path: str) -> Optional[_Scripted]:
        with self._lock:
            for key in (path, None):
                s = self._scripted.get(key)
                if s is None:
                    continue
                if s.times is not None:
                    s.times -= 1
                    if s.times <= 0:
                        del self._scripted[key]
                return s
            return None

    # -- observation ---------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        """Number of currently open stream connections."""
        with self._lock:
            return len(self._streams)

    def requests_to(self, path: str) -> List[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true (re-checked on every request and stream change)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
            return True

    def wait_for_streams(self, n: int = 1, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: len(self._streams) >= n, timeout)

    def wait_for_requests(self, path: str, n: int = 1, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: sum(r.path == path for r in self.requests) >= n, timeout)

    # -- internals used by the handler ---------------------------------------------------

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)
            self._lock.notify_all()

    def _payload_body(self) -> Tuple[Optional[bytes], str]:
        with self._lock:
            if self._data is None:
                return None, ""
            body = json.dumps(self._data, separators=(",", ":"), sort_keys=True).encode()
        return body, '"' + hashlib.sha1(body).hexdigest() + '"'

    def _open_stream(self) -> "queue.Queue[Any]":
        q: "queue.Queue[Any]" = queue.Queue()
        with self._lock:
            self._streams.append(q)
            self._lock.notify_all()
        return q

    def _close_stream(self, q: "queue.Queue[Any]") -> None:
        with self._lock:
            if q in self._streams:
                self._streams.remove(q)
            self._lock.notify_all()


def _make_handler(fake: FakeLD) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeLD/1"
        # HTTP/1.1 so that streams use chunked transfer encoding, as LaunchDarkly's do: a
        # client reading a chunked body gets each event as it arrives.
        protocol_version = "HTTP/1.1"

        def _chunk(self, data: bytes) -> None:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def _begin(self) -> Tuple[RecordedRequest, Optional[_Scripted]]:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = RecordedRequest(self.command, parts.path, parse_qs(parts.query),
                                  {k: v for k, v in self.headers.items()}, body, time.time())
            scripted = fake._take_scripted(parts.path)
            return req, scripted

        def _reply(self, req: RecordedRequest, status: int, body: bytes = b"",
                   headers: Optional[Dict[str, str]] = None,
                   content_type: str = "application/json") -> None:
            req.status = status
            fake._record(req)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _end_chunks(self) -> None:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass

        def handle(self) -> None:
            try:
                super().handle()
            except (ssl.SSLError, ConnectionError):
                pass  # a client that refused our certificate, or went away

        def do_GET(self) -> None:
            req, scripted = self._begin()
            if scripted is not None and not (scripted.status == 200 and req.path == "/all"):
                self._reply(req, scripted.status, scripted.body, scripted.headers)
                return
            if req.path == "/all":
                self._stream(req, scripted)
            elif req.path == "/sdk/latest-all":
                body, etag = fake._payload_body()
                if body is None:
                    self._reply(req, 503, b'{"message":"no data yet"}')
                elif req.headers.get("If-None-Match") == etag:
                    req.status = 304
                    fake._record(req)
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._reply(req, 200, body, {"ETag": etag, "X-LD-EnvID": "fake-env"})
            else:
                self._reply(req, 404, b'{"message":"not found"}')

        def _stream(self, req: RecordedRequest, scripted: Optional[_Scripted]) -> None:
            if scripted is None:
                body, _ = fake._payload_body()
                if body is None:
                    self._reply(req, 503, b'{"message":"no data yet"}')
                    return
            req.status = 200
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.send_header("X-LD-EnvID", "fake-env")
            self.end_headers()
            if scripted is not None:  # scripted 200 on /all: send the body, then close
                fake._record(req)
                self._chunk(scripted.body)
                self._end_chunks()
                return
            q = fake._open_stream()
            fake._record(req)
            try:
                if fake.initial_put:
                    data = fake.data
                    if data is not None:
                        self._chunk(sse_frame("put", {"path": "/", "data": data}))
                last_beat = time.monotonic()
                while True:
                    interval = fake.heartbeat_interval
                    wait = 0.05 if interval is None else max(0.0, min(0.05, last_beat + interval - time.monotonic()))
                    try:
                        item = q.get(timeout=wait) if wait > 0 else q.get_nowait()
                    except queue.Empty:
                        item = None
                    if item is _CLOSE:
                        self._end_chunks()
                        return
                    if item is not None:
                        self._chunk(item)
                    elif interval is not None and time.monotonic() - last_beat >= interval:
                        self._chunk(b":\n")
                        last_beat = time.monotonic()
            except (BrokenPipeError, ConnectionResetError, OSError):
                return
            finally:
                fake._close_stream(q)

        def do_POST(self) -> None:
            req, scripted = self._begin()
            if scripted is not None:
                self._reply(req, scripted.status, scripted.body, scripted.headers)
                return
            if req.path not in ("/bulk", "/diagnostic"):
                self._reply(req, 404, b'{"message":"not found"}')
                return
            raw = req.body
            if req.headers.get("Content-Encoding", "").lower() == "gzip":
                try:
                    raw = gzip.decompress(raw)
                except OSError:
                    pass
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = None
            target = fake.events if req.path == "/bulk" else fake.diagnostics
            with fake._lock:
                target.append(ReceivedPayload(payload, dict(req.headers), raw))
            self._reply(req, 202)

    return Handler


def main(argv: Optional[List[str]] = None) -> int:
    """Run the fake in the foreground until interrupted (manual testing)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.fake_ld", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds; 0 = none")
    parser.add_argument("--data", help="JSON file with {flags, segments} to serve")
    parser.add_argument("--relay", action="store_true", help="503 until data is set")
    args = parser.parse_args(argv)
    fake = FakeLD(args.port, heartbeat_interval=args.heartbeat or None, relay=args.relay)
    if args.data:
        with open(args.data, encoding="utf-8") as fh:
            doc = json.load(fh)
        fake.set_data(doc.get("flags"), doc.get("segments"))
    with fake:
        print(f"fake LaunchDarkly listening on {fake.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
