"""The worker-side ``Client``: ldclient's API over the snapshot a source provides.

Safe in any worker. Construction attaches to shared memory (``ShmSource``) or wraps in-process
data (``from_data``, ``from_file``, ``from_test_data``), and starts no thread: a client made
before a fork keeps working in every child without a post-fork hook (see docs/client.md). The
only threads are the event recorder's flusher (started lazily by the recorder) and the watcher
behind flag-change and status listeners (started by the first listener, in its process).

``variation*`` never raises: without a snapshot the default comes back with
``CLIENT_NOT_READY``, an invalid context gives ``USER_NOT_SPECIFIED``, an unexpected error
``EXCEPTION``, a typed variation whose value has the wrong JSON type ``WRONG_TYPE``
(ld-protocol.md §3.9).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from shmflags.backend import evaluator_backend
from shmflags.client.flags_state import FeatureFlagsState
from shmflags.client.hooks import (HookRunner, environment_metadata, plugin_hooks,
                                   register_plugins)
from shmflags.client.loading import DataLike, as_config, load_data, make_recorder
from shmflags.client.migrations import OpTracker, Stage
from shmflags.client.source import ShmSource, StaticSource, TestDataSource, open_backend
from shmflags.client.status import (BigSegmentStoreStatusProvider, DataSourceStatusProvider,
                                    DataStoreStatusProvider)
from shmflags.client.tracker import FlagTracker, Watcher
from shmflags.config import Config
from shmflags.context import Context, coerce
from shmflags.evaluation.detail import EvaluationDetail

__all__ = ["Client", "as_config", "load_data"]  # the last two re-exported from .loading

log = logging.getLogger(__name__)

_NOT_READY = {"kind": "ERROR", "errorKind": "CLIENT_NOT_READY"}
_USER_NOT_SPECIFIED = {"kind": "ERROR", "errorKind": "USER_NOT_SPECIFIED"}
_EXCEPTION = {"kind": "ERROR", "errorKind": "EXCEPTION"}
_WRONG_TYPE = {"kind": "ERROR", "errorKind": "WRONG_TYPE"}

#: the C fast path's ``(_SLOW, _Fast)`` when the C evaluator is in use (imported once here, not
#: in every new client)
_C_FAST: Optional[Tuple[Any, Any]] = None
if evaluator_backend() == "c":
    try:
        from shmflags._native import _SLOW, _Fast
        _C_FAST = (_SLOW, _Fast)
    except ImportError:  # an older build: no fast path
        pass


def _make_fast(current: Callable[[], Any]) -> Tuple[Any, Any, Any, Any]:
    """``(value, detail, SLOW, fast)``: the C fast path of ``variation`` / ``variation_detail``
    over ``current`` (used when the C evaluator is, see ``native/fast.c``), or stand-ins that
    always answer ``SLOW`` (take the full path) and ``fast`` ``None``.

    ``value(key, context, default, kind=0)`` returns the value (or ``default``) and
    ``detail(...)`` an :class:`EvaluationDetail`, for a valid :class:`Context` on a C snapshot;
    anything else (invalid or foreign context, no snapshot, an error) gives ``SLOW``. The
    caller checks hooks first. Events: ``fast.recorder`` (see :func:`_fast_recorder_for`) is
    the recorder whose C core counts the common case; with it ``None`` the fast path records
    nothing, so the caller uses it only when events are off.
    """
    if _C_FAST is not None:
        c_slow, c_fast = _C_FAST
        try:
            fast = c_fast(current, Context, EvaluationDetail)
            return fast.value, fast.detail, c_slow, fast
        except (AttributeError, TypeError):  # an older build: no fast path
            pass
    slow = object()

    def always_slow(*args: Any) -> Any:
        return slow
    return always_slow, always_slow, slow, None


def _detached(ref: Any, method: str) -> Callable[..., Any]:
    """A fallback for the C entry points of a closed client that holds it only weakly."""
    def fallback(key: str, context: Any, default: Any) -> Any:
        client = ref()
        if client is None:
            return default if method == "_variation_full" else \
                EvaluationDetail(default, None, _NOT_READY)
        return getattr(client, method)(key, context, default)
    return fallback


def _fast_recorder_for(fast: Any, recorder: Any) -> bool:
    """Let the C fast path count evaluations in ``recorder`` if it can; ``True`` if it does.

    It can when ``recorder`` is a ``_native._RecorderCore`` (``EventRecorder`` with the C
    extension) whose ``record_evaluation`` is the core's own, neither overridden by a
    subclass nor replaced on the instance: the fast path then hands the core what
    ``record_evaluation``'s common case needs, and anything else takes the Python path.
    """
    if fast is None:
        return False
    try:
        from shmflags._native import _RecorderCore
    except ImportError:  # pragma: no cover - _Fast exists, so does the core
        return False
    ok = (isinstance(recorder, _RecorderCore)
          and getattr(type(recorder), "record_evaluation", None)
          is _RecorderCore.record_evaluation
          and "record_evaluation" not in getattr(recorder, "__dict__", {}))
    fast.recorder = recorder if ok else None
    return ok


#: ``kind`` argument of the fast path for each typed variation (native/fast.c)
_KIND_ANY, _KIND_BOOL, _KIND_INT, _KIND_FLOAT, _KIND_STR = 0, 1, 2, 3, 4


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(value: Any) -> Any:
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise TypeError
    return int(value)


def _as_float(value: Any) -> Any:
    if not _is_number(value):
        raise TypeError
    return float(value)


def _as_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _as_str(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError
    return value


class Client:
    """The shmflags client, with ``ldclient.LDClient``'s methods.

    ``Client(config)`` serves the snapshot the supervisor of namespace ``config.name``
    publishes. If that supervisor is running but has not published yet, the constructor waits
    up to ``start_wait`` seconds (ldclient's ``start_wait``); with no supervisor at all it does
    not wait: evaluations return defaults (``CLIENT_NOT_READY``) and the client attaches by
    itself, within ``attach_interval``, once a snapshot appears.

    :param config: a :class:`shmflags.Config`, an ``ldclient.Config``, or ``None`` for the
        ``SHMFLAGS_*`` environment. (A backend object is also accepted, for the CLI.)
    :param start_wait: seconds to wait for a first snapshot (default ``config.start_wait``).
    :param recorder: an event recorder to use instead of the configured one (tests).
    """

    def __init__(self, config: Any = None, start_wait: Optional[float] = None, *,
                 recorder: Any = None, _source: Any = None) -> None:
        if _source is None and config is not None and not isinstance(config, Config) \
                and callable(getattr(config, "evaluate", None)):
            # The first version's Client(backend, recorder=None), still used by the CLI.
            if start_wait is not None and not isinstance(start_wait, (int, float)):
                recorder, start_wait = start_wait, None
            _source = StaticSource({}, {}, backend=config)
            config = Config(send_events=False)
        self._config = as_config(config)
        self._pid = os.getpid()
        if _source is None:
            td = self._config.update_processor_class
            if td is not None and callable(getattr(td, "subscribe", None)):
                _source = TestDataSource(td)
            else:
                if td is not None:
                    log.warning("shmflags: update_processor_class %r is not a shmflags.TestData; "
                                "ignored (data comes from the supervisor)", td)
                _source = ShmSource(self._config)
        self._source = _source
        self._current = _source.current  # bound once: called on every evaluation
        self._fast_value, self._fast_detail, self._SLOW, self._fast = _make_fast(self._current)
        # The recorder the fast path counts in (``_fast.recorder``); the fast path is taken
        # only while ``_recorder is _fast_recorder`` (both None: events off). A different
        # recorder (set later, or one the fast path cannot take) is checked by _sync_fast.
        self._fast_recorder: Any = None
        self._fast_refused: Any = None  # the last recorder the fast path could not take
        plugins = list(self._config.plugins or ())
        # Built only when something needs it: a forked worker constructs its client on pages
        # shared with the master, and every object or function touched for the first time
        # costs a copy-on-write fault (docs/internals.md, "A worker's first evaluation").
        metadata = environment_metadata(self._config) if plugins else None
        hooks = list(self._config.hooks or ())
        if plugins:
            hooks += plugin_hooks(plugins, metadata)
        self._hooks = HookRunner(hooks,
                                 environment_id=getattr(_source, "environment_id", lambda: None))
        # The watcher, the flag tracker and the status providers are made on first use (see
        # the properties): until someone holds one, there is no listener for them to serve.
        self._lazy_lock = threading.RLock()   # _made() nests: flag_tracker makes _watcher
        self._watcher_: Optional[Watcher] = None
        self._flag_tracker_: Optional[FlagTracker] = None
        self._status_provider_: Optional[DataSourceStatusProvider] = None
        self._big_segment_status_: Any = None
        self._data_store_status_: Optional[DataStoreStatusProvider] = None
        self._closed = False
        self._recorder_: Any = None
        ref = weakref.ref(self)

        def child() -> None:   # renew the locks in a forked child (the parent's may be held)
            client = ref()
            if client is not None:
                try:
                    client._after_fork_locks()
                except Exception as exc:  # never break the child's start-up
                    log.error("after-fork hook %r raised: %r", client._after_fork_locks, exc)

        os.register_at_fork(after_in_child=child)
        if callable(getattr(self._source, "set_listener", None)):
            self._source.set_listener(self._poll_listeners)
        wait = self._config.start_wait if start_wait is None else start_wait
        if isinstance(self._source, ShmSource):
            self._wait_for_snapshot(float(wait))
        self._recorder = (recorder if recorder is not None
                          else make_recorder(self._config, self._source))
        if plugins:
            register_plugins(plugins, self, metadata)
        self._refresh_entry()

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_data(cls, data: DataLike, big_segments: Any = None, *,
                  config: Any = None, evaluator: Optional[str] = None) -> "Client":
        """An in-process client over LD flag data, without a supervisor or shared memory.

        By default the data is encoded into snapshot bytes and evaluated by the worker's
        backend (the C evaluator when it is built, see :func:`shmflags.evaluator_backend`), as a
        worker attached to shared memory does.

        :param data: a dict ``{"flags", "segments", "flagValues"}``, JSON text, or a file path
        :param big_segments: optional Big Segment membership provider
        :param config: optional configuration (default: events off)
        :param evaluator: ``None`` for the worker's backend, or ``"model"`` for the pure-Python
            reference evaluator over the parsed model (no snapshot; the differential tests
            against ldclient use it)
        :raises shmflags.errors.DataError: when the data cannot be read at all (a malformed
            individual flag does not raise: its evaluations return ``MALFORMED_FLAG``)
        """
        flags, segments = load_data(data)
        if evaluator == "model":
            from shmflags.evaluation.backend import ModelBackend
            from shmflags.model import parse_flag, parse_segment
            backend = ModelBackend.from_dicts({k: parse_flag(v) for k, v in flags.items()},
                                              {k: parse_segment(v) for k, v in segments.items()},
                                              big_segments)
        elif evaluator is None:
            from shmflags.snapshot.builder import SnapshotBuilder
            backend = open_backend(SnapshotBuilder().build(flags, segments, generation=1),
                                   big_segments)
        else:
            raise ValueError(f"evaluator must be None or 'model', not {evaluator!r}")
        return cls(config if config is not None else Config(send_events=False),
                   _source=StaticSource({}, {}, backend=backend))

    @classmethod
    def from_file(cls, *paths: str, config: Any = None) -> "Client":
        """An in-process client over flag files (JSON or YAML, merged as the supervisor does).

        :raises shmflags.errors.DataError: a file cannot be read or parsed, or keys clash.
        """
        from shmflags.filedata import load_files
        flags, segments = load_files([os.fspath(p) for p in paths])
        return cls(config if config is not None else Config(send_events=False),
                   _source=StaticSource(flags, segments))

    @classmethod
    def from_test_data(cls, td: Any, *, config: Any = None) -> "Client":
        """An in-process client that follows a :class:`shmflags.TestData`; each
        ``td.update`` is a new generation (flag trackers notice it at once)."""
        return cls(config if config is not None else Config(send_events=False),
                   _source=TestDataSource(td))

    def _wait_for_snapshot(self, wait: float) -> None:
        if wait <= 0 or self._source.current() is not None:
            return
        deadline = time.monotonic() + wait
        interval = max(0.01, float(self._config.attach_interval))
        while time.monotonic() < deadline:
            if self._source._attachment is None:
                return  # no supervisor at all: do not stall start-up (see class docstring)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            if self._source.current() is not None:
                return
        log.warning("shmflags: no snapshot after waiting %.1f s; serving defaults until the "
                    "supervisor publishes one", wait)

    # -- process lifecycle -------------------------------------------------------------

    def postfork(self, start_wait: Optional[float] = None) -> None:
        """Accepted for ldclient compatibility and harmless: a shmflags client needs nothing
        after fork (it renews its per-process parts by itself)."""
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """Renew what is per process (locks); called in a forked child."""
        self._pid = os.getpid()
        self._after_fork_locks()

    def _after_fork_locks(self) -> None:
        self._pid = os.getpid()
        self._lazy_lock = threading.RLock()
        self._hooks.after_fork()
        if self._flag_tracker_ is not None:
            self._flag_tracker_.after_fork()
        if self._status_provider_ is not None:
            self._status_provider_.after_fork()

    def close(self) -> None:
        """Flush and close the event recorder, stop listener threads, detach.

        Do not use the client afterwards (evaluations keep returning values from the last
        snapshot, but no events are sent)."""
        if self._closed:
            return
        self._closed = True
        recorder, self._recorder = self._recorder, None
        self._sync_fast()  # the fast path stops counting in the closed recorder
        if self._fast is not None and getattr(self._fast, "fallback_value", None) is not None:
            # the entry points stay (evaluations keep working after close, see below) but no
            # longer hold the client: fallbacks that find it gone answer its defaults
            ref = weakref.ref(self)
            self._fast.fallback_value = _detached(ref, "_variation_full")
            self._fast.fallback_detail = _detached(ref, "_variation_detail_full")
        if recorder is not None:
            try:
                recorder.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                log.exception("closing the event recorder failed")
        watcher = self._watcher_
        if watcher is not None:
            watcher.stop()
        self._source.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            evaluator = evaluator_backend()
        except Exception:  # noqa: BLE001
            evaluator = "?"
        facts = " ".join(f"{k}={v}" for k, v in self._source.describe().items())
        return f"<shmflags.Client {facts} evaluator={evaluator}>"

    # -- state -------------------------------------------------------------------------

    @property
    def backend(self) -> Any:
        """The backend snapshot evaluations currently run on (``None`` before the first)."""
        return self._source.current()

    def get_sdk_key(self) -> Optional[str]:
        """The configured SDK key."""
        return self._config.sdk_key

    def is_offline(self) -> bool:
        """Whether the configuration says offline (no events; a published snapshot is still
        served, see docs/client.md)."""
        return bool(self._config.offline)

    def is_initialized(self) -> bool:
        """Whether there is flag data to evaluate (a snapshot is mapped); always true offline,
        as in ldclient."""
        return self.is_offline() or self._source.current() is not None

    def _made(self, attr: str, make: Callable[[], Any]) -> Any:
        """The object in ``attr``, made by ``make()`` on first use (once, under a lock)."""
        made = getattr(self, attr)
        if made is None:
            with self._lazy_lock:
                made = getattr(self, attr)
                if made is None:
                    made = make()
                    setattr(self, attr, made)
        return made

    @property
    def _watcher(self) -> Watcher:
        """The thread behind flag-change and status listeners (not started until one needs
        it). Only shared memory changes behind the client's back; in-process sources call it
        themselves (``set_listener``) or never change, so it never runs a thread for them."""
        def make() -> Watcher:
            watcher = Watcher(interval=min(0.1, float(self._config.attach_interval) or 0.1),
                              name=f"shmflags-watcher-{self._config.name}",
                              threaded=isinstance(self._source, ShmSource))
            if self._closed:
                watcher.stop()
            return watcher
        return self._made("_watcher_", make)

    def _poll_listeners(self) -> None:
        """An in-process source's change: run the listeners' pollers (none without a watcher)."""
        watcher = self._watcher_
        if watcher is not None:
            watcher.poll_once()

    @property
    def flag_tracker(self) -> FlagTracker:
        """Listeners for flag configuration and value changes."""
        # As in ldclient, value-change listeners evaluate through variation() (hooks, events).
        return self._made("_flag_tracker_", lambda: FlagTracker(
            self._source.current, lambda key, ctx: self.variation(key, ctx, None),
            self._watcher))

    @property
    def data_source_status_provider(self) -> DataSourceStatusProvider:
        """The supervisor's data source status as this worker sees it."""
        def make() -> DataSourceStatusProvider:
            made = DataSourceStatusProvider(self._source.status, self._watcher.ensure_running)
            self._watcher.add_poller(made.poll)
            return made
        return self._made("_status_provider_", make)

    @property
    def big_segment_store_status_provider(self) -> BigSegmentStoreStatusProvider:
        """Big Segment store status: the supervisor's mirror for a shared-memory client
        (``available=False, stale=False`` without one, as ldclient without a store)."""
        def make() -> Any:
            big_segments = getattr(self._source, "big_segments", None)
            if big_segments is None:
                return BigSegmentStoreStatusProvider()
            # issue 11: status of the supervisor's Big Segments mirror, polled by the watcher
            from shmflags.integrations.bigsegments import StatusProvider
            made = StatusProvider(big_segments, self._watcher.ensure_running)
            self._watcher.add_poller(made.poll)
            return made
        return self._made("_big_segment_status_", make)

    @property
    def data_store_status_provider(self) -> DataStoreStatusProvider:
        """Data store status: the mapped snapshot is always available."""
        return self._made("_data_store_status_", DataStoreStatusProvider)

    def add_hook(self, hook: Any) -> None:
        """Add an evaluation hook (ours, ldclient's, or any object with the same methods)."""
        self._hooks.add(hook)
        self._refresh_entry()

    def secure_mode_hash(self, context: Any) -> str:
        """HMAC-SHA256 of the context's fully-qualified key with the SDK key, hex (ld-protocol
        §7); ``""`` for an invalid context."""
        ctx = coerce(context)
        if not ctx.valid:
            log.warning("Context was invalid for secure_mode_hash (%s); returning empty hash",
                        ctx.error)
            return ""
        key = str(self._config.sdk_key or "").encode()
        return hmac.new(key, ctx.fully_qualified_key.encode(), hashlib.sha256).hexdigest()

    # -- evaluation --------------------------------------------------------------------

    def _evaluate(self, key: str, context: Any, default: Any, with_reason: bool,
                  check: Optional[Callable[[Any], Any]] = None
                  ) -> Tuple[Any, Optional[int], dict, Any]:
        """→ ``(value, variation_index, reason, snapshot)``; records the evaluation event."""
        snapshot = self._current()
        try:
            ctx = context if type(context) is Context else coerce(context)
            if snapshot is None:
                if self._recorder is not None and ctx.valid:
                    self._record(key, ctx, (None, None, _NOT_READY, None, ()), default,
                                 with_reason)
                return default, None, _NOT_READY, None
            if not ctx.valid:
                log.warning("Context was invalid for flag evaluation (%s); returning default "
                            "value", ctx.error)
                return default, None, _USER_NOT_SPECIFIED, snapshot
            result = snapshot.evaluate(key, ctx)
        except Exception as exc:  # noqa: BLE001 - variation() never raises
            log.error('Unexpected error while evaluating feature flag "%s": %r', key, exc)
            return default, None, _EXCEPTION, snapshot
        index = result[1]
        if index is None:
            value = default
        else:
            value = result[0]
            if check is not None:
                try:
                    value = check(value)
                except (TypeError, ValueError, OverflowError):
                    result = (None, None, _WRONG_TYPE, result[3], result[4])
                    value = default
                    index = None
        if self._recorder is not None:
            self._record(key, ctx, result, default, with_reason)
        return value, index, result[2], snapshot

    def _record(self, key: str, ctx: Context, result: tuple, default: Any,
                with_reason: bool) -> None:
        recorder = self._recorder
        if recorder is None:  # closed meanwhile
            return
        try:
            recorder.record_evaluation(key, ctx, result, default, with_reason)
        except Exception:  # noqa: BLE001 - events must not break evaluation
            log.exception("recording an evaluation event failed")

    @property
    def _recorder(self) -> Any:
        """The event recorder (``None``: events off); setting it re-checks the C entry points."""
        return self._recorder_

    @_recorder.setter
    def _recorder(self, recorder: Any) -> None:
        self._recorder_ = recorder
        self._refresh_entry()

    def _refresh_entry(self) -> None:
        """Make ``variation`` / ``variation_detail`` the C fast path's entry points (instance
        attributes shadowing the methods: one C call, no Python frame) while it may answer for
        this client — C evaluator, no hooks, the class's own methods, and no recorder or one the
        fast path counts in — and the methods below otherwise. What the fast path does not
        answer goes to ``_variation_full`` / ``_variation_detail_full`` (docs/internals.md,
        "Hot path with the C evaluator")."""
        fast = self._fast
        entry = (fast is not None and getattr(fast, "fallback_value", False) is not False
                 and not self._hooks.hooks
                 and type(self).variation is Client.variation
                 and type(self).variation_detail is Client.variation_detail
                 and self._sync_fast())
        if entry:
            if fast.fallback_value is None:
                # Bound methods, as the methods they stand in for: the entry points keep the
                # client alive as ``client.variation`` always did (a cycle through _fast,
                # broken by close() and otherwise collected).
                fast.fallback_value = self._variation_full
                fast.fallback_detail = self._variation_detail_full
            self.__dict__["variation"] = fast.variation
            self.__dict__["variation_detail"] = fast.variation_detail
        else:
            self.__dict__.pop("variation", None)
            self.__dict__.pop("variation_detail", None)

    def _sync_fast(self) -> bool:
        """Point the fast path at the current recorder if it can count in it.

        :returns: ``True`` when the fast path may be tried (``_recorder is _fast_recorder``)
        """
        recorder = self._recorder
        if recorder is self._fast_recorder:
            return True
        if recorder is self._fast_refused and recorder is not None:
            return False  # checked before: the Python path records for this recorder
        if recorder is None or _fast_recorder_for(self._fast, recorder):
            if recorder is None and self._fast is not None:
                self._fast.recorder = None
            self._fast_recorder = recorder
            return True
        self._fast_recorder = None
        self._fast_refused = recorder
        return False

    def _value(self, method: str, key: str, context: Any, default: Any,
               check: Optional[Callable[[Any], Any]], kind: int = _KIND_ANY) -> Any:
        if not self._hooks.hooks:
            if self._recorder is self._fast_recorder or self._sync_fast():
                value = self._fast_value(key, context, default, kind)
                if value is not self._SLOW:
                    return value
            return self._evaluate(key, context, default, False, check)[0]

        def run() -> Tuple[EvaluationDetail, Any]:
            value, index, reason, _ = self._evaluate(key, context, default, False, check)
            return EvaluationDetail(value, index, reason), value
        return self._hooks.run(key, context, default, method, run)

    def _detail(self, method: str, key: str, context: Any, default: Any,
                check: Optional[Callable[[Any], Any]], kind: int = _KIND_ANY
                ) -> EvaluationDetail:
        if not self._hooks.hooks:
            if self._recorder is self._fast_recorder or self._sync_fast():
                detail = self._fast_detail(key, context, default, kind)
                if detail is not self._SLOW:
                    return detail
            value, index, reason, _ = self._evaluate(key, context, default, True, check)
            return EvaluationDetail(value, index, reason)

        def run() -> Tuple[EvaluationDetail, EvaluationDetail]:
            value, index, reason, _ = self._evaluate(key, context, default, True, check)
            detail = EvaluationDetail(value, index, reason)
            return detail, detail
        return self._hooks.run(key, context, default, method, run)

    def variation(self, key: str, context: Any, default: Any) -> Any:
        """The flag's value for ``context``, or ``default``.

        With the C evaluator and no hooks, the instance's ``variation`` is the C fast path's
        entry point instead (see ``_refresh_entry``), which answers exactly as this method.

        :param key: flag key
        :param context: a :class:`shmflags.Context`, an ``ldclient.Context`` or LD context JSON
        :param default: returned when the flag cannot be evaluated
        """
        if not self._hooks.hooks:
            if self._recorder is self._fast_recorder or self._sync_fast():
                # the common case (events off, or counted by the recorder's C core) in C;
                # _SLOW for anything unusual, which the full path below answers
                value = self._fast_value(key, context, default)
                if value is not self._SLOW:
                    return value
        return self._variation_full(key, context, default)

    def variation_detail(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        """Like :meth:`variation`, with the variation index and the reason."""
        if not self._hooks.hooks:
            if self._recorder is self._fast_recorder or self._sync_fast():
                detail = self._fast_detail(key, context, default)   # as in variation()
                if detail is not self._SLOW:
                    return detail
        return self._variation_detail_full(key, context, default)

    def _variation_full(self, key: str, context: Any, default: Any) -> Any:
        """:meth:`variation` without trying the fast path: what the method and its C entry
        point end in when the fast path did not answer (it has just been tried)."""
        if not self._hooks.hooks:
            return self._evaluate(key, context, default, False)[0]
        return self._value("variation", key, context, default, None)

    def _variation_detail_full(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        """:meth:`variation_detail` without trying the fast path (see ``_variation_full``)."""
        if not self._hooks.hooks:
            value, index, reason, _ = self._evaluate(key, context, default, True)
            return EvaluationDetail(value, index, reason)
        return self._detail("variation_detail", key, context, default, None)

    def bool_variation(self, key: str, context: Any, default: bool) -> bool:
        """The flag's value if it is a JSON boolean, else ``default``."""
        return self._value("bool_variation", key, context, default, _as_bool, _KIND_BOOL)

    def bool_variation_detail(self, key: str, context: Any, default: bool) -> EvaluationDetail:
        """:meth:`bool_variation` with details (``WRONG_TYPE`` when not a boolean)."""
        return self._detail("bool_variation_detail", key, context, default, _as_bool,
                            _KIND_BOOL)

    def int_variation(self, key: str, context: Any, default: int) -> int:
        """The flag's value if it is a JSON number (floats truncated toward zero), else ``default``."""
        return self._value("int_variation", key, context, default, _as_int, _KIND_INT)

    def int_variation_detail(self, key: str, context: Any, default: int) -> EvaluationDetail:
        """:meth:`int_variation` with details (``WRONG_TYPE`` when not a number)."""
        return self._detail("int_variation_detail", key, context, default, _as_int,
                            _KIND_INT)

    def float_variation(self, key: str, context: Any, default: float) -> float:
        """The flag's value as a float if it is a JSON number, else ``default``."""
        return self._value("float_variation", key, context, default, _as_float, _KIND_FLOAT)

    def float_variation_detail(self, key: str, context: Any, default: float) -> EvaluationDetail:
        """:meth:`float_variation` with details (``WRONG_TYPE`` when not a number)."""
        return self._detail("float_variation_detail", key, context, default, _as_float,
                            _KIND_FLOAT)

    def string_variation(self, key: str, context: Any, default: str) -> str:
        """The flag's value if it is a JSON string, else ``default``."""
        return self._value("string_variation", key, context, default, _as_str, _KIND_STR)

    def string_variation_detail(self, key: str, context: Any, default: str) -> EvaluationDetail:
        """:meth:`string_variation` with details (``WRONG_TYPE`` when not a string)."""
        return self._detail("string_variation_detail", key, context, default, _as_str,
                            _KIND_STR)

    def json_variation(self, key: str, context: Any, default: Any) -> Any:
        """The flag's value, whatever its JSON type (same as :meth:`variation`)."""
        return self._value("json_variation", key, context, default, None)

    def json_variation_detail(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        """Same as :meth:`variation_detail`."""
        return self._detail("json_variation_detail", key, context, default, None)

    def all_flags_state(self, context: Any, with_reasons: bool = False,
                        client_side_only: bool = False,
                        details_only_for_tracked_flags: bool = False,
                        **kwargs: Any) -> FeatureFlagsState:
        """Every flag's value and metadata for ``context``; records no events.

        :returns: a :class:`FeatureFlagsState`, ``valid`` ``False`` when there is no
            snapshot, for an invalid context, or on an internal error
        """
        with_reasons = kwargs.pop("with_reasons", with_reasons)
        client_side_only = kwargs.pop("client_side_only", client_side_only)
        details_only_for_tracked_flags = kwargs.pop("details_only_for_tracked_flags",
                                                    details_only_for_tracked_flags)
        snapshot = self._source.current()
        if snapshot is None:
            log.warning("all_flags_state() called before a snapshot is available; returning "
                        "an invalid state")
            return FeatureFlagsState(False)
        try:
            ctx = coerce(context)
            if not ctx.valid:
                log.warning("Context was invalid for all_flags_state (%s)", ctx.error)
                return FeatureFlagsState(False)
            # the C evaluator's lazy form when there is one: the dicts are built on first use
            compute = getattr(snapshot, "all_flags_lazy", None) or snapshot.all_flags_state
            state = compute(
                ctx, bool(with_reasons), bool(client_side_only),
                bool(details_only_for_tracked_flags), int(time.time() * 1000))
        except Exception as exc:  # noqa: BLE001
            log.error("Unable to compute all_flags_state: %r", exc)
            return FeatureFlagsState(False)
        return FeatureFlagsState(True, state)

    # -- events ------------------------------------------------------------------------

    def track(self, event_name: str, context: Any, data: Optional[Any] = None,
              metric_value: Optional[Any] = None) -> None:
        """Record a custom event ``event_name`` for ``context``, with optional data and metric."""
        ctx = coerce(context)
        if not ctx.valid:
            log.warning("Invalid context for track (%s)", ctx.error)
            return
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.record_custom(event_name, ctx, data, metric_value)
            except Exception:  # noqa: BLE001
                log.exception("recording a custom event failed")

    def identify(self, context: Any) -> None:
        """Record an identify event for ``context``."""
        ctx = coerce(context)
        if not ctx.valid:
            log.warning("Invalid context for identify (%s)", ctx.error)
            return
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.record_identify(ctx)
            except Exception:  # noqa: BLE001
                log.exception("recording an identify event failed")

    def flush(self) -> None:
        """Send buffered events to the supervisor now (returns at once; never blocks)."""
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.flush()
            except Exception:  # noqa: BLE001
                log.exception("flushing events failed")

    # -- migrations --------------------------------------------------------------------

    def migration_variation(self, key: str, context: Any,
                            default_stage: Stage) -> Tuple[Stage, OpTracker]:
        """The migration stage of flag ``key`` for ``context`` and a tracker for the operation.

        A value that is not a stage name gives ``default_stage`` with ``WRONG_TYPE``; an
        invalid ``default_stage`` is replaced by ``Stage.OFF``.
        """
        if not isinstance(default_stage, Stage):
            log.error("default stage %r is not a valid stage; using 'off' instead", default_stage)
            default_stage = Stage.OFF
        out: Dict[str, Any] = {}

        def run() -> Tuple[EvaluationDetail, None]:
            value, index, reason, snapshot = self._evaluate(key, context, default_stage.value,
                                                            False)
            flag = None
            if snapshot is not None:
                try:
                    flag = snapshot.raw_flag(key)
                except Exception:  # noqa: BLE001
                    flag = None
            stage = Stage.from_str(value) if isinstance(value, str) else None
            if stage is None:
                detail = EvaluationDetail(default_stage.value, None, _WRONG_TYPE)
                stage = default_stage
            else:
                detail = EvaluationDetail(value, index, reason)
            out["stage"] = stage
            out["tracker"] = OpTracker(key, flag, coerce(context), detail, default_stage)
            return detail, None

        if self._hooks.hooks:
            self._hooks.run(key, context, default_stage.value, "migration_variation", run)
        else:
            run()
        return out["stage"], out["tracker"]

    def track_migration_op(self, tracker: OpTracker) -> None:
        """Record the ``migration_op`` event a tracker built (MigratorBuilder does this)."""
        event = tracker.build()
        if isinstance(event, str):
            log.error("error generating migration op event %s; no event will be emitted", event)
            return
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.record_migration_op(event)
            except Exception:  # noqa: BLE001
                log.exception("recording a migration op event failed")
