"""The Redis source (daemon mode, ``use_ldd``): reads LaunchDarkly's persistent-store schema.

Runs in the supervisor only, on one daemon thread. Every ``redis_refresh_interval`` seconds it
reads, in one ``MULTI`` so the three replies are consistent, ``<prefix>:$inited``,
``HGETALL <prefix>:features`` and ``HGETALL <prefix>:segments`` (ld-protocol §8.1) — the store a
Relay Proxy, or an SDK with a Redis feature store, writes. Tombstones (``"deleted": true``) are
dropped. While ``$inited`` is missing the store is not initialized and nothing is published
(the state stays ``INITIALIZING``; after data was served, ``INTERRUPTED`` with a
``STORE_ERROR``, and the last data stays). A read identical to the previous one does not
re-initialize the sink. Connection errors and timeouts report ``INTERRUPTED`` with a
``NETWORK_ERROR``, other Redis errors a ``STORE_ERROR``, and undecodable items ``INVALID_DATA``;
the next refresh retries.

ldclient in daemon mode reads through a 15 s cache instead; staleness up to one refresh
interval is the equivalent here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any, Dict, Optional, Tuple

import redis  # optional dependency (shmflags[redis]); this module is imported only when used

from shmflags.config import Config
from shmflags.supervisor import http
from shmflags.supervisor.sources import SourceSink
from shmflags.supervisor.sources._messages import InvalidData, check_item

log = logging.getLogger(__name__)

Items = Dict[str, Dict[str, Any]]

#: ldclient's namespaces: kind as the store names it -> Redis hash suffix
NAMESPACES = {"flags": "features", "segments": "segments"}
INITED_SUFFIX = "$inited"


def redis_keys(prefix: Optional[str]) -> Dict[str, str]:
    """The Redis keys of the schema for ``prefix`` (default ``launchdarkly``)."""
    p = prefix or "launchdarkly"
    return {"flags": f"{p}:features", "segments": f"{p}:segments", "inited": f"{p}:{INITED_SUFFIX}"}


def connect(config: Config) -> "redis.Redis":
    """A ``redis.Redis`` client for ``config.redis_url`` with the HTTP timeouts (no I/O yet)."""
    url = config.redis_url or "redis://localhost:6379/0"
    return redis.Redis.from_url(url, socket_connect_timeout=config.http_connect_timeout,
                                socket_timeout=config.http_read_timeout)


def decode_items(kind: str, raw: Dict[Any, Any]) -> Items:
    """Decode one HGETALL reply; drop tombstones; validate every live item with the model.

    Items are checked exactly as stream and poll items are (the model's ``validate_flag`` /
    ``validate_segment``): data ldclient's store would refuse is never published.

    :raises InvalidData: on an item that is not a JSON object with ``key`` and ``version``,
        whose ``key`` differs from its Redis field, or that the model refuses.
    """
    out: Items = {}
    for field, value in raw.items():
        key = field.decode("utf-8") if isinstance(field, bytes) else str(field)
        try:
            item = json.loads(value)
        except ValueError as exc:
            raise InvalidData(f"{kind} item {key!r} in Redis is not JSON: {exc}") from None
        if not isinstance(item, dict) or not isinstance(item.get("version"), int):
            raise InvalidData(f"{kind} item {key!r} in Redis has no integer version")
        if item.get("deleted"):
            continue
        item.setdefault("key", key)
        out[key] = check_item(kind, key, item)
    return out


class RedisSource:
    """Feeds the sink from a Redis store in LaunchDarkly's schema.

    :param config: ``redis_url``, ``redis_prefix``, ``redis_refresh_interval``.
    :param sink: the store.
    :param _client: tests only: a ready ``redis.Redis``.
    """

    name = "redis"

    def __init__(self, config: Config, sink: SourceSink, *, _client: Any = None) -> None:
        self._config = config
        self._sink = sink
        self._keys = redis_keys(config.redis_prefix)
        self.interval = float(config.redis_refresh_interval)
        self._client = _client
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_digest: Optional[bytes] = None
        self._served = False
        self._warned_uninitialized = False
        #: refreshes made so far (for tests and metrics)
        self.reads = 0

    def start(self) -> None:
        """Start the refresh thread; the first read is made at once."""
        self._thread = threading.Thread(target=self._run, name="shmflags-redis-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing (returns within about a second)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        log.info("reading flags from Redis (%s) every %.1fs", self._keys["flags"], self.interval)
        while not self._stop.is_set():
            self.refresh()
            if self._stop.wait(self.interval):
                break

    def refresh(self) -> bool:
        """Read the store once and report; returns whether data is being served."""
        self.reads += 1
        try:
            inited, raw_flags, raw_segments, digest = self._read()
        except Exception as exc:  # noqa: BLE001 - redis errors, classified below
            return self._fail(_classify(exc))
        if not inited:
            if not self._warned_uninitialized:
                log.warning("Redis store %s is not initialized (no %s); waiting",
                            self._keys["flags"], self._keys["inited"])
                self._warned_uninitialized = True
            if self._served:
                self._sink.set_status("INTERRUPTED", http.error_info(
                    http.STORE_ERROR, f"{self._keys['inited']} disappeared from Redis"))
            return False
        self._warned_uninitialized = False
        if digest != self._last_digest:
            try:
                flags = decode_items("flags", raw_flags)
                segments = decode_items("segments", raw_segments)
            except InvalidData as exc:
                return self._fail(http.error_info(http.INVALID_DATA, str(exc)))
            try:
                self._sink.init(flags, segments)
            except Exception as exc:  # noqa: BLE001 - report and try again next refresh
                log.exception("store init failed")
                return self._fail(http.error_info(http.STORE_ERROR, f"store update failed: {exc}"))
            self._last_digest = digest
            log.debug("Redis: %d flags, %d segments", len(flags), len(segments))
        self._served = True
        self._sink.set_status("VALID")
        return True

    def _read(self) -> Tuple[bool, Dict[bytes, bytes], Dict[bytes, bytes], bytes]:
        if self._client is None:
            self._client = connect(self._config)
        pipe = self._client.pipeline(transaction=True)
        pipe.exists(self._keys["inited"])
        pipe.hgetall(self._keys["flags"])
        pipe.hgetall(self._keys["segments"])
        inited, raw_flags, raw_segments = pipe.execute()
        if not inited:
            return False, {}, {}, b""
        digest = hashlib.sha1()
        for raw in (raw_flags, raw_segments):
            for field in sorted(raw):
                digest.update(field + b"\0" + raw[field] + b"\0")
            digest.update(b"\1")
        return True, raw_flags, raw_segments, digest.digest()

    def _fail(self, info: Dict[str, Any]) -> bool:
        log.warning("Redis read failed: %s - will retry in %.1fs", info["message"], self.interval)
        self._sink.set_status("INTERRUPTED", info)
        return False


def _classify(exc: Exception) -> Dict[str, Any]:
    """NETWORK_ERROR for connection problems and timeouts, STORE_ERROR for the rest."""
    network = (redis.ConnectionError, redis.TimeoutError, OSError)
    kind = http.NETWORK_ERROR if isinstance(exc, network) else http.STORE_ERROR
    return http.error_info(kind, f"Redis: {exc}")
