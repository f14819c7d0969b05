"""Redis write-through ("storing data"): copies what the supervisor serves into Redis.

Runs in the supervisor only, on one daemon thread, when ``redis_write`` is set with a
``redis_url``. It writes LaunchDarkly's persistent-store schema (ld-protocol §8.1), so any SDK
in daemon mode (``use_ldd=True`` with a Redis feature store on the same prefix) — or another
shmflags supervisor with ``use_ldd`` — reads the same flags:

* full write (first data, after a Redis error, after ``$inited`` disappeared, or when many keys
  changed at once): one ``MULTI``: ``DEL`` both hashes, ``HSET`` every item, ``SET $inited``;
* one changed item: ``WATCH`` the hash, ``HGET`` the old item, skip it unless the new version
  is higher, ``MULTI``/``HSET``/``EXEC``, retried on a ``WATCH`` conflict (at most 10 times).
  If Redis holds a *higher* version than the store (a ``put`` lowered it), everything is
  rewritten instead: the store is authoritative;
* a deleted item is removed with ``HDEL`` (the store does not expose tombstones; for readers
  a missing item and a tombstone are the same).

Wiring (supervisor main loop)::

    writer = RedisWriter(config, store)
    store.add_listener(writer.on_change)
    writer.start()          # ... writer.stop() at shutdown

``on_change`` only records the key and wakes the thread, so the store's lock is never held
across network I/O. Every ``redis_refresh_interval`` the thread also checks ``$inited`` and
rewrites everything if it is gone (a Redis restart without persistence), as the Relay Proxy does.
Data served from the last-known-good cache is not written: only live data is.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Dict, Optional, Set, Tuple

import redis  # optional dependency (shmflags[redis]); this module is imported only when used

from shmflags.config import Config
from shmflags.supervisor.sources.redis_source import connect, redis_keys

log = logging.getLogger(__name__)

Items = Dict[str, Dict[str, Any]]

#: above this many pending keys a full rewrite is cheaper than one transaction per key
FULL_WRITE_THRESHOLD = 100
MAX_UPSERT_RETRIES = 10


def _dump(item: Dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"))


class RedisWriter:
    """Mirror a store into Redis.

    :param config: ``redis_url``, ``redis_prefix``, ``redis_refresh_interval``.
    :param store: provides ``data() -> (revision, flags, segments)`` and
        ``get(kind, key) -> item | None``; ``initialized`` and ``from_cache`` are honoured
        when present.
    :param _client: tests only: a ready ``redis.Redis``.
    """

    def __init__(self, config: Config, store: Any, *, _client: Any = None) -> None:
        self._config = config
        self._store = store
        self._keys = redis_keys(config.redis_prefix)
        self.interval = float(config.redis_refresh_interval)
        self._client = _client
        self._lock = threading.Lock()
        self._pending: Set[Tuple[str, str]] = set()
        self._need_full = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: the last write error's message, or ``None`` after a successful write
        self.last_error: Optional[str] = None
        #: counters for tests and metrics
        self.full_writes = 0
        self.item_writes = 0
        #: tests only: called as ``hook(hash_key, key)`` between ``WATCH`` and ``MULTI``
        self._before_multi: Optional[Callable[[str, str], None]] = None

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shmflags-redis-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is pending, then stop (returns within about a second)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def on_change(self, kind: str, key: str) -> None:
        """Store listener: remember ``kind``/``key`` and wake the writer thread."""
        with self._lock:
            self._pending.add((kind, key))
        self._wake.set()

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                if not woken and not self._need_full:
                    self._check_inited()
                self.sync()
            except Exception as exc:  # noqa: BLE001 - redis errors: log, rewrite all next time
                with self._lock:
                    self._need_full = True
                if self.last_error != str(exc):
                    log.warning("writing flags to Redis failed: %s; will rewrite everything", exc)
                self.last_error = str(exc)
            if stopping:
                return

    # -- writing -------------------------------------------------------------------------

    def sync(self) -> None:
        """Write whatever is pending now (full or per item)."""
        if not getattr(self._store, "initialized", True) or getattr(self._store, "from_cache", False):
            return
        with self._lock:
            pending, self._pending = self._pending, set()
            full = self._need_full or len(pending) > FULL_WRITE_THRESHOLD
            self._need_full = False
        try:
            if full:
                _, flags, segments = self._store.data()
                self.write_all(flags, segments)
            else:
                for kind, key in sorted(pending):
                    item = self._store.get(kind, key)
                    if item is None:
                        self.remove_item(kind, key)
                    else:
                        self.write_item(kind, item)
        except Exception:
            with self._lock:
                self._need_full = True
            raise
        if full or pending:
            self.last_error = None

    def _check_inited(self) -> None:
        if not self._redis().exists(self._keys["inited"]):
            log.warning("%s is missing from Redis; rewriting all flags", self._keys["inited"])
            with self._lock:
                self._need_full = True

    def _redis(self) -> Any:
        if self._client is None:
            self._client = connect(self._config)
        return self._client

    def write_all(self, flags: Items, segments: Items) -> None:
        """Replace both hashes and set ``$inited`` in one transaction."""
        pipe = self._redis().pipeline(transaction=True)
        for kind, items in (("flags", flags), ("segments", segments)):
            pipe.delete(self._keys[kind])
            if items:
                pipe.hset(self._keys[kind], mapping={k: _dump(v) for k, v in items.items()})
        pipe.set(self._keys["inited"], self._keys["inited"])
        pipe.execute()
        self.full_writes += 1
        log.info("wrote %d flags and %d segments to Redis", len(flags), len(segments))

    def write_item(self, kind: str, item: Dict[str, Any]) -> bool:
        """Write one item unless Redis holds the same or a newer version; returns whether written.

        :raises RuntimeError: after :data:`MAX_UPSERT_RETRIES` ``WATCH`` conflicts in a row.
        """
        hash_key, key = self._keys[kind], item["key"]
        for _ in range(MAX_UPSERT_RETRIES):
            with self._redis().pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(hash_key)
                    old = pipe.hget(hash_key, key)
                    if old is not None:
                        try:
                            old_version = json.loads(old).get("version", -1)
                        except (ValueError, AttributeError):
                            old_version = -1
                        if isinstance(old_version, int) and old_version >= item["version"]:
                            pipe.unwatch()
                            if old_version > item["version"]:
                                # The store holds an older version than Redis: a put lowered
                                # it. The store is authoritative, so mirror it in full.
                                with self._lock:
                                    self._need_full = True
                                self._wake.set()
                            return False
                    if self._before_multi is not None:
                        self._before_multi(hash_key, key)
                    pipe.multi()
                    pipe.hset(hash_key, key, _dump(item))
                    pipe.execute()
                    self.item_writes += 1
                    return True
                except redis.WatchError:
                    continue
        raise RuntimeError(f"{kind} {key!r}: gave up after {MAX_UPSERT_RETRIES} WATCH conflicts")

    def remove_item(self, kind: str, key: str) -> None:
        """Remove a deleted item."""
        self._redis().hdel(self._keys[kind], key)
        self.item_writes += 1
