"""Turns the store's data into published snapshots: store → builder → shared memory.

Runs in the supervisor only, in one daemon thread. The thread sleeps until the store signals a
change, then builds and publishes at once: a single patch is visible to workers within a few
milliseconds. Changes that arrive while a build is running are coalesced into the next build,
so a burst of patches costs a few publishes, not one per patch, without any added delay.

What the switch does not need waits until the thread has been idle for :data:`SETTLE`: the
``on_publish`` callbacks (last-known-good file, the main loop's status and log line) and the
store's copy-on-write copies (:meth:`Store.unshare`). Right after a switch every worker maps
the new generation; on a host with few cores the supervisor's own CPU would compete with them
(issue #6: a patch visible in all 8 workers of a 2-core host within 5 ms).

A build that fails (data that cannot be encoded) is not published: the state becomes
``INTERRUPTED`` with an ``INVALID_DATA`` error and workers keep the previous generation. A publish
that fails in shared memory (``/dev/shm`` full: :mod:`shmflags.shm` says how many bytes were
needed) records a ``STORE_ERROR`` with that message and retries with exponential backoff.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from shmflags.errors import SnapshotError
from shmflags.shm import SnapshotBaseMissing
from shmflags.supervisor.store import Store

log = logging.getLogger(__name__)

#: Backoff between publish retries after an OS error: first delay and cap, in seconds.
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
#: Seconds without a new change after a publish before the publisher thread runs the
#: ``on_publish`` callbacks and :meth:`Store.unshare` (long enough for workers to switch, short
#: against the last-known-good writer's own delay and the 1 s promise of DESIGN §12).
SETTLE = 0.02
#: ... but not later than this after the publish, however busy the stream.
SETTLE_MAX = 0.1


class PublishResult:
    """What one successful publish produced (handed to the ``on_publish`` callbacks)."""

    __slots__ = ("generation", "revision", "flags", "segments", "size", "seconds",
                 "from_cache", "source", "full")

    def __init__(self, generation: int, revision: int, flags: Dict[str, Any],
                 segments: Dict[str, Any], size: int, seconds: float, from_cache: bool,
                 source: str, full: bool = False) -> None:
        self.generation = generation
        self.revision = revision
        self.flags = flags
        self.segments = segments
        self.size = size
        self.seconds = seconds
        self.from_cache = from_cache
        self.source = source
        #: the data replaced everything (a put or the first build), not a patch
        self.full = full


class SnapshotPublisher:
    """Publishes the store's data whenever it changes.

    :param store: the supervisor's store.
    :param shm: a :class:`shmflags.shm.Publisher` (thread-safe).
    :param builder: a :class:`shmflags.snapshot.builder.SnapshotBuilder` (used by this
        object's thread only, and by :meth:`publish_once` callers before :meth:`start`).
    """

    def __init__(self, store: Store, shm: Any, builder: Any) -> None:
        self.store = store
        self.shm = shm
        self.builder = builder
        self.generation = 0
        self.published_revision = -1
        self.publishes = 0
        self.errors = 0
        self.last_publish_seconds = 0.0
        self._callbacks: List[Callable[[PublishResult], None]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._retry_delay = 0.0
        self._store_error = False
        #: (monotonic time, result) of publishes whose callbacks wait for the thread to be
        #: idle (publishes made by _run), oldest first
        self._deferred: List[Tuple[float, PublishResult]] = []

    def on_publish(self, callback: Callable[[PublishResult], None]) -> None:
        """Call ``callback(result)`` after each successful publish (in the publisher thread)."""
        self._callbacks.append(callback)

    def start(self) -> None:
        """Start the publisher thread."""
        self._thread = threading.Thread(target=self._run, name="shmflags-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, publishing what the store holds if it was not published yet (every
        callback has run when this returns)."""
        self._stop.set()
        self.store.changed.set()
        if self._thread is not None:
            self._thread.join(timeout)
            alive = self._thread.is_alive()
            self._thread = None
            if alive:        # stuck (its deferred work is its own): do not race it
                return
        self._run_deferred()
        if self.store.initialized and self.store.revision != self.published_revision:
            self.publish_once()

    def publish_once(self, defer: bool = False) -> bool:
        """Build and publish the store's current data now; returns whether it was published.

        :param defer: leave the ``on_publish`` callbacks to :meth:`_run_deferred` (the
            publisher thread runs them once idle for :data:`SETTLE`); by default they have run
            when this returns.

        Patches (upserts and deletes since the last build) are published as an overlay on the
        last self-contained generation, built from the changed keys alone; a put (``init``),
        the first build, or an overlay that grew too large is published self-contained
        (docs/snapshot-format.md §1.7).
        """
        revision, flags, segments, changed = self.store.data_changes()
        # Read after the data: a live init in between labels this cached data "live" for one
        # publish at most, and the newer revision it brought is published right after.
        status = self.store.status()
        started = time.monotonic()
        try:
            if changed is None:
                data = self.builder.build(flags, segments)
            else:
                data = self.builder.build(flags, segments, changed=changed)
        except Exception as exc:  # noqa: BLE001 - any failure to encode is invalid data
            self.errors += 1
            self.published_revision = revision  # the same data would fail again: wait for more
            log.error("not publishing: the data could not be encoded: %s: %s",
                      type(exc).__name__, exc)
            self.store.set_status("INTERRUPTED", _error("INVALID_DATA", f"cannot encode: {exc}"))
            return False
        try:
            try:
                generation = self.shm.publish(data, source=status["source"],
                                              from_cache=status["from_cache"])
            except SnapshotBaseMissing as exc:
                # The overlay's base was never published (an earlier publish failed) or is
                # gone: publish the same data self-contained.
                log.info("publishing self-contained: %s", exc)
                self.builder.forget_base()
                data = self.builder.build(flags, segments)
                generation = self.shm.publish(data, source=status["source"],
                                              from_cache=status["from_cache"])
        except Exception as exc:  # noqa: BLE001 - SnapshotError (e.g. /dev/shm full) or worse:
            # either way the thread must live on and retry, or workers would go stale silently
            self.errors += 1
            self._store_error = True
            self._retry_delay = min(max(self._retry_delay * 2, RETRY_FIRST), RETRY_MAX)
            message = (str(exc) if isinstance(exc, SnapshotError)
                       else f"{type(exc).__name__}: {exc}")
            log.error("publish failed (%s); previous generation %d keeps serving; "
                      "retrying in %.1f s", message, self.generation, self._retry_delay)
            self.store.set_status("INTERRUPTED", _error("STORE_ERROR", message))
            return False
        seconds = time.monotonic() - started
        self.generation = generation
        self.published_revision = revision
        self.publishes += 1
        self.last_publish_seconds = seconds
        self._retry_delay = 0.0
        if self._store_error:
            self._store_error = False
            error = self.store.status()["last_error"] or {}
            if error.get("kind") == "STORE_ERROR":
                self.store.set_status("VALID")
        result = PublishResult(generation, revision, flags, segments, len(data), seconds,
                               status["from_cache"], status["source"], full=changed is None)
        if defer:
            self._deferred.append((time.monotonic(), result))
            return True
        self._callbacks_for(result)
        return True

    def _callbacks_for(self, result: PublishResult) -> None:
        for callback in list(self._callbacks):
            try:
                callback(result)
            except Exception:  # noqa: BLE001 - a callback must not stop publishing
                log.exception("publish callback failed")

    def _run_deferred(self) -> None:
        """Run the callbacks of deferred publishes, in publication order, then let the store
        make its copy-on-write copies (publisher thread, or the caller of :meth:`stop`)."""
        while self._deferred:
            self._callbacks_for(self._deferred.pop(0)[1])
        try:
            self.store.unshare()
        except Exception:  # noqa: BLE001 - the next change copies instead
            log.exception("store unshare failed")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                idle_work = bool(self._deferred) or self.store.shared
                timeout = self._retry_delay or None
                if idle_work:
                    timeout = SETTLE if timeout is None else min(timeout, SETTLE)
                woke = self.store.changed.wait(timeout)
                if self._stop.is_set():
                    return
                if not woke and idle_work:
                    # Idle for SETTLE since the last publish: the deferred work, then wait
                    # again (a pending retry waits its whole delay from now).
                    self._run_deferred()
                    continue
                self.store.changed.clear()
                if self.store.initialized and self.store.revision != self.published_revision:
                    # A burst: callbacks keep waiting (they run in publication order once
                    # the thread is idle), unless the oldest has waited SETTLE_MAX already.
                    if self._deferred and \
                            time.monotonic() - self._deferred[0][0] >= SETTLE_MAX:
                        self._run_deferred()
                    self.publish_once(defer=True)
        finally:
            self._run_deferred()


def _error(kind: str, message: str) -> Dict[str, Any]:
    return {"kind": kind, "statusCode": 0, "message": message, "time": int(time.time() * 1000)}

