"""Where a client's snapshot comes from: shared memory (``ShmSource``) or in-process data.

Runs in a worker. Every source answers :meth:`current` (the backend snapshot to evaluate on, or
``None``), cheaply enough to be called on every evaluation, plus :meth:`status` and
:meth:`close`. ``ShmSource`` does one generation load per call while attached; without a
snapshot it re-checks at most every ``attach_interval`` and logs one ERROR line per process.
After a fork the child keeps the inherited read-only mapping (it stays valid) and re-validates
the generation on its first call; locks are replaced, never inherited.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Dict, Mapping, Optional

from shmflags.backend import Snapshot, evaluator_backend, open_snapshot
from shmflags.client.status import (DataSourceErrorInfo, DataSourceErrorKind, DataSourceState,
                                    DataSourceStatus, state_from_text)
from shmflags.errors import SnapshotError, SnapshotUnavailable
from shmflags.snapshot.format import CTL_OFF_GENERATION

# What a worker's attach path uses, imported once here: an import statement in a function runs
# the import machinery again on every call (copy-on-write faults in a forked worker,
# docs/internals.md). Without POSIX shared memory (posix_ipc) ShmSource raises when made.
try:
    from shmflags import shm
    from shmflags.integrations.bigsegments import CACHE_SIZE, ShmBigSegments
except ImportError:
    shm = None  # type: ignore[assignment]
_CWatch: Any = None   # the C watch when the C evaluator is in use (see _new_watch)
if evaluator_backend() == "c":
    try:
        from shmflags._native import _Watch as _CWatch
    except ImportError:   # an extension built before the watch existed
        pass

log = logging.getLogger(__name__)


def _require_shm() -> None:
    """Raise the ImportError that left ``shm`` unset."""
    import shmflags.integrations.bigsegments  # noqa: F401
    import shmflags.shm  # noqa: F401



def build_backend(flags: Mapping[str, dict], segments: Mapping[str, dict], generation: int = 1,
                  builder: Any = None) -> Any:
    """A backend snapshot (docs/internals.md backend contract) over in-process LD JSON.

    The data is encoded into snapshot bytes and opened with the backend the worker would use
    on shared memory, so in-process clients take the same evaluation path.

    :param builder: an incremental ``SnapshotBuilder`` to reuse between generations.
    """
    from shmflags.snapshot.builder import SnapshotBuilder
    builder = builder if builder is not None else SnapshotBuilder()
    return open_backend(builder.build(flags, segments, generation=generation))


def open_backend(buffer: Any, big_segments: Any = None, **parts: Any) -> Any:
    """Open snapshot bytes (an mmap, bytes, ...) with the worker's evaluator backend.

    :param big_segments: the Big Segments provider the evaluator queries (issue 11).
    :param parts: ``base``, ``state``, ``base_state`` from ``shm.Attachment.snapshot_parts``.
    """
    if big_segments is not None:   # issue 11: Big Segments provider for the evaluator
        return Snapshot(buffer, big_segments=big_segments, **parts)
    return open_snapshot(buffer, **parts)


class StaticSource:
    """Fixed in-process data (``Client.from_data`` / ``from_file``): always VALID.

    :param flags: flag key → LD flag JSON.
    :param segments: segment key → LD segment JSON.
    :param backend: an already-built backend to serve instead (``flags``/``segments`` are
        then ignored), e.g. the reference ``ModelBackend``.
    """

    kind = "static"

    def __init__(self, flags: Mapping[str, dict], segments: Mapping[str, dict],
                 backend: Any = None) -> None:
        self._snapshot = backend if backend is not None else build_backend(flags, segments, 1)
        self._since = time.time()

    def current(self) -> Any:
        """The snapshot (never ``None``)."""
        return self._snapshot

    def generation(self) -> int:
        """Always 1."""
        return 1

    def status(self) -> DataSourceStatus:
        """VALID since the source was made."""
        return DataSourceStatus(DataSourceState.VALID, self._since, None)

    def describe(self) -> Dict[str, Any]:
        """Facts for ``repr`` and diagnostics."""
        return {"source": self.kind, "generation": 1}

    def close(self) -> None:
        """Nothing to release."""


class TestDataSource:
    """In-process data fed by a :class:`shmflags.testing.TestData`; each update is a new
    generation, so flag trackers see it like a publish.

    :param td: the TestData to follow.
    """

    __test__ = False
    kind = "testdata"

    def __init__(self, td: Any) -> None:
        self._td = td
        self._lock = threading.Lock()
        from shmflags.snapshot.builder import SnapshotBuilder
        self._builder = SnapshotBuilder()
        self._since = time.time()
        data = td.subscribe(self._on_update)
        self._flags: Dict[str, dict] = data["flags"]
        self._segments: Dict[str, dict] = data["segments"]
        self._generation = 1
        self._snapshot = build_backend(self._flags, self._segments, 1, self._builder)
        self._closed = False
        self._listener: Any = None

    def _on_update(self, kind: str, item: dict) -> None:
        with self._lock:
            target = self._flags if kind == "flags" else self._segments
            old = target.get(item["key"])
            if old is not None and old.get("version", 0) >= item.get("version", 0):
                return
            target = dict(target)
            target[item["key"]] = item
            if kind == "flags":
                self._flags = target
            else:
                self._segments = target
            generation = self._generation + 1
            snapshot = build_backend(self._flags, self._segments, generation, self._builder)
            self._snapshot, self._generation = snapshot, generation
        listener = self._listener
        if listener is not None:
            # Like ldclient's TestData: change listeners run during td.update(), so a test
            # can assert right after it.
            listener()

    def set_listener(self, listener: Any) -> None:
        """Call ``listener()`` after each update has been applied (the client's watcher)."""
        self._listener = listener

    def current(self) -> Any:
        """The snapshot of the latest update."""
        return self._snapshot

    def generation(self) -> int:
        """1 plus the number of updates applied."""
        return self._generation

    def status(self) -> DataSourceStatus:
        """VALID since the source was made (OFF after :meth:`close`)."""
        state = DataSourceState.OFF if self._closed else DataSourceState.VALID
        return DataSourceStatus(state, self._since, None)

    def describe(self) -> Dict[str, Any]:
        """Facts for ``repr`` and diagnostics."""
        return {"source": self.kind, "generation": self._generation}

    def close(self) -> None:
        """Stop following the TestData."""
        self._td.unsubscribe(self._on_update)
        self._closed = True


class ShmSource:
    """The snapshot the supervisor publishes in shared memory namespace ``config.name``.

    :param config: a :class:`shmflags.Config` (``name``, ``attach_interval``,
        ``heartbeat_timeout``).
    """

    kind = "shm"

    def __init__(self, config: Any) -> None:
        self._name = str(config.name)
        self._attach_interval = float(config.attach_interval)
        self._heartbeat_timeout = float(config.heartbeat_timeout)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._attachment: Any = None
        self._generation_of: Any = None   # the attachment's bound generation() (hot path)
        # What current() serves (snapshot, generation, bad generation, countdown) lives in
        # one watch object; with the C evaluator it is the C _Watch, which *is* current()
        # while unchanged (one acquire load of the generation word) and calls _current_py
        # for everything else.
        ref = weakref.ref(self)

        def _slow() -> Any:   # through a weak reference: no source <-> watch cycle
            source = ref()
            return None if source is None else source._current_py()

        self._w: Any = _new_watch(_slow)
        if not isinstance(self._w, _PyWatch):
            self.current = self._w  # type: ignore[method-assign]
        self._next_attempt = 0.0          # monotonic time of the next attach attempt
        self._complained_pid = 0          # pid that already logged "no snapshot"
        self._next_check = 0.0            # monotonic time of the next replaced-block check
        self._since = time.time()
        self._closed = False
        self._env_id: Optional[str] = None  # cached environment_id() and its next re-read
        self._env_next = 0.0
        # issue 11: Big Segment membership from the supervisor's mirror (NOT_CONFIGURED
        # until one exists); also behind client.big_segment_store_status_provider.
        if shm is None:
            _require_shm()
        self.big_segments = ShmBigSegments(
            self._name, cache_size=getattr(config, "big_segments_context_cache_size", CACHE_SIZE))

        def _child() -> None:
            source = ref()
            if source is not None:
                source._after_fork()

        os.register_at_fork(after_in_child=_child)

    # -- hot path ----------------------------------------------------------------------

    # The served state lives in the watch (see __init__); the methods below use it directly
    # (no properties: in a forked worker each getter and setter is one more function run for
    # the first time, a copy-on-write fault, docs/internals.md).

    def _set_attachment(self, attachment: Any) -> None:
        """Adopt ``attachment`` (or ``None``) for the generation check, in Python and C."""
        self._attachment = attachment
        self._generation_of = None if attachment is None else attachment.generation
        # the C watch loads the generation word from the same buffer Attachment.generation()
        # reads (a memoryview of the control block); None sends it to _current_py
        self._w.words = None if attachment is None else getattr(attachment, "_words", None)

    def current(self) -> Any:
        """The snapshot to evaluate on, or ``None`` when none is published (yet).

        One generation load when attached and unchanged, and no system call: the pid is
        checked only on the slow paths (a fork keeps the mapping valid; only the lock and the
        log-once state are per process, and an at-fork hook renews them at once). With the C
        evaluator an instance attribute (the C watch) shadows this method and calls it (as
        ``_current_py``) only every 256th call and when the generation changed.
        """
        generation_of = self._generation_of
        if generation_of is not None:
            try:
                generation = generation_of()
            except Exception as exc:  # a closed or broken attachment must not break evaluation
                log.error("shmflags: reading the control block of %r failed: %r", self._name, exc)
                return self._w.snapshot
            if generation == self._w.generation or generation == self._w.bad_generation:
                # Every 256 calls, look at the clock: once a second, check that the control
                # block was not replaced under us (see _liveness_check).
                self._w.countdown -= 1
                if self._w.countdown > 0:
                    return self._w.snapshot
                self._w.countdown = 256
                if time.monotonic() < self._next_check:
                    return self._w.snapshot
                return self._liveness_check()
            return self._switch()
        if time.monotonic() < self._next_attempt:
            return self._w.snapshot
        return self._switch()

    _current_py = current

    # -- slow path ---------------------------------------------------------------------

    def _liveness_check(self) -> Any:
        """Once a second: notice a control block replaced under us (``shmflags cleanup``
        followed by a new supervisor) and reattach to the new one."""
        self._next_check = time.monotonic() + 1.0
        if self._pid != os.getpid():
            self._after_fork()
        attachment = self._attachment
        try:
            replaced = attachment is not None and attachment.replaced()
        except Exception:
            replaced = False
        if replaced:
            log.warning("shmflags: control block of %r was replaced; reattaching", self._name)
            with self._lock:
                if self._attachment is attachment:
                    # A new namespace numbers its generations afresh: map whatever it serves.
                    self._set_attachment(None)
                    self._w.generation = self._w.bad_generation = 0
                    self._next_attempt = 0.0
            return self._switch()
        return self._w.snapshot

    def _switch(self) -> Any:
        """Attach and/or map the current generation. While a snapshot is being served, other
        threads keep using it instead of waiting for the switch."""
        if self._pid != os.getpid():
            self._after_fork()
        if not self._lock.acquire(blocking=self._w.snapshot is None):
            return self._w.snapshot
        try:
            if self._closed:
                return self._w.snapshot
            if self._attachment is None:
                if time.monotonic() < self._next_attempt:
                    return self._w.snapshot
                self._set_attachment(self._attach())
                if self._attachment is None:
                    self._next_attempt = time.monotonic() + self._attach_interval
                    self._complain(f"no shmflags supervisor control block for namespace "
                                   f"{self._name!r}")
                    return self._w.snapshot
            attachment = self._attachment
            generation = attachment.generation()
            if generation == 0:
                self._next_attempt = time.monotonic() + self._attach_interval
                if self._w.snapshot is None:
                    self._complain(f"the shmflags supervisor of namespace {self._name!r} has not "
                                   "published a snapshot yet")
                return self._w.snapshot
            if generation in (self._w.generation, self._w.bad_generation):
                return self._w.snapshot
            snapshot = self._open(attachment, generation)
            if snapshot is not None:
                self._w.snapshot, self._w.generation = snapshot, attachment.mapped_generation
                if self._complained_pid == os.getpid():
                    log.warning("shmflags: namespace %r: serving generation %d", self._name,
                                self._w.generation)
                    self._complained_pid = 0
            return self._w.snapshot
        except Exception as exc:  # noqa: BLE001 - evaluation must keep going
            log.error("shmflags: attaching to namespace %r failed: %r", self._name, exc)
            self._next_attempt = time.monotonic() + self._attach_interval
            return self._w.snapshot
        finally:
            self._lock.release()

    def _attach(self) -> Any:
        try:
            return shm.Attachment(self._name)
        except SnapshotUnavailable:
            return None

    def _open(self, attachment: Any, generation: int) -> Any:
        """Map and open the current generation; ``None`` (and remember it) when it is bad."""
        try:
            parts = attachment.snapshot_parts()
            mapped = attachment.mapped_generation
            if mapped == self._w.generation and self._w.snapshot is not None:
                # The attachment rejected the newer generation and kept ours (it logged why).
                self._w.bad_generation = generation
                return None
            return open_backend(big_segments=self.big_segments, **parts)   # issue 11
        except SnapshotError as exc:
            if self._w.snapshot is None:
                self._complain(f"namespace {self._name!r}: no usable snapshot ({exc})")
            else:
                log.error("shmflags: namespace %r: generation %d unusable (%s); keeping "
                          "generation %d", self._name, generation, exc, self._w.generation)
            self._w.bad_generation = generation
            self._next_attempt = time.monotonic() + self._attach_interval
            return None

    def _complain(self, message: str) -> None:
        pid = os.getpid()
        if self._complained_pid != pid:
            self._complained_pid = pid
            log.error("%s: flag evaluations return their defaults (CLIENT_NOT_READY) until one "
                      "appears; re-checking every %.0f ms", message, self._attach_interval * 1000)

    def _after_fork(self) -> None:
        # The inherited mapping is still valid (read-only, MAP_SHARED); only the lock and the
        # once-per-process log state are per process.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._next_attempt = 0.0

    # -- status ------------------------------------------------------------------------

    def generation(self) -> int:
        """The generation being served (0 = none)."""
        self.current()
        return self._w.generation

    def status(self) -> DataSourceStatus:
        """The supervisor's data source status from the control block; INTERRUPTED once the
        heartbeat is older than ``heartbeat_timeout`` while a snapshot is being served."""
        self.current()
        attachment = self._attachment
        if attachment is None:
            error = DataSourceErrorInfo(DataSourceErrorKind.UNKNOWN, 0, self._since,
                                        f"no shmflags supervisor for namespace {self._name!r}")
            return DataSourceStatus(DataSourceState.INITIALIZING, self._since, error)
        try:
            info = _as_dict(attachment.status())
        except Exception as exc:
            error = DataSourceErrorInfo(DataSourceErrorKind.UNKNOWN, 0, time.time(),
                                        f"control block unreadable: {exc!r}")
            return DataSourceStatus(DataSourceState.INTERRUPTED, time.time(), error)
        return status_from_control(info, self._heartbeat_timeout, self._w.snapshot is not None)

    def environment_id(self) -> Optional[str]:
        """The LaunchDarkly environment id the supervisor learnt (``X-LD-EnvID``), or ``None``.

        Read from the control block at most once a second (hooks ask on every evaluation).
        """
        now = time.monotonic()
        if now < self._env_next:
            return self._env_id
        self._env_next = now + 1.0
        attachment = self._attachment
        if attachment is not None:
            try:
                self._env_id = attachment.control().env_id or None
            except Exception:  # noqa: BLE001 - hooks must not break evaluation
                pass
        return self._env_id

    def describe(self) -> Dict[str, Any]:
        """Facts for ``repr`` and diagnostics."""
        return {"source": self.kind, "name": self._name, "generation": self._w.generation}

    def close(self) -> None:
        """Stop attaching; the current snapshot stays usable until dropped."""
        self._closed = True


class _PyWatch:
    """What a ``ShmSource`` serves, without the C extension (the C ``_Watch`` has the same
    attributes and is also the hot path of ``current()``)."""

    __slots__ = ("words", "snapshot", "slow", "generation", "bad_generation", "countdown")

    def __init__(self, slow: Any = None) -> None:
        self.words: Any = None
        self.snapshot: Any = None
        self.slow = slow
        self.generation = 0
        self.bad_generation = 0
        self.countdown = 256


def _new_watch(slow: Any) -> Any:
    """The C ``_Watch`` over the control block's generation word when the C evaluator is
    in use, else a :class:`_PyWatch`."""
    if _CWatch is not None:
        return _CWatch(slow, CTL_OFF_GENERATION)
    return _PyWatch(slow)


def _as_dict(info: Any) -> Dict[str, Any]:
    if isinstance(info, dict):
        return info
    if hasattr(info, "_asdict"):
        return dict(info._asdict())
    return dict(vars(info))


def status_from_control(info: Mapping[str, Any], heartbeat_timeout: float,
                        serving: bool) -> DataSourceStatus:
    """Turn ``Attachment.status()`` into a :class:`DataSourceStatus`.

    :param info: the dict of ``shm.Attachment.status`` (``state``, ``state_since``,
        ``last_error``, ``heartbeat``, ``heartbeat_age_s``, ``supervisor_pid``; times in
        Unix seconds).
    :param heartbeat_timeout: seconds after which a silent supervisor counts as gone.
    :param serving: whether this worker has a snapshot.
    """
    state = state_from_text(info.get("state"))
    since = info.get("state_since") or 0.0
    error = DataSourceErrorInfo.from_dict(info.get("last_error"))
    age = info.get("heartbeat_age_s")
    if isinstance(age, (int, float)) and age > heartbeat_timeout and state != DataSourceState.OFF:
        # Stable values (from the last heartbeat, not "now"), so that listeners comparing
        # statuses see one change, not one per poll.
        beat = info.get("heartbeat")
        stale_since = (float(beat) if isinstance(beat, (int, float)) and beat
                       else float(round(time.time() - age))) + heartbeat_timeout
        message = (f"supervisor (pid {info.get('supervisor_pid') or '?'}) stopped its "
                   f"heartbeat; serving the last snapshot")
        error = DataSourceErrorInfo(DataSourceErrorKind.UNKNOWN, 0, stale_since, message)
        if serving:
            state, since = DataSourceState.INTERRUPTED, stale_since
    return DataSourceStatus(state, float(since) if since else time.time(), error)

__all__ = ["ShmSource", "StaticSource", "TestDataSource", "build_backend", "status_from_control"]
