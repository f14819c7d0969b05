"""Record evaluations, custom, identify and migration events in a worker and ship them to the supervisor.

Runs in workers. An evaluation costs a few dictionary updates and no system call: summary
counters, context sightings (for the supervisor's index events) and the full events that
LaunchDarkly's rules require are kept in memory and sent as datagrams (see
:mod:`shmflags.events.sender`) when the buffer fills, when the flush interval has passed
(checked on each call, and by a daemon thread started lazily per process so idle workers
flush too), on :meth:`EventRecorder.flush` and at exit.

Fork safety: the recorder remembers the pid whose data it holds. ``os.register_at_fork``
resets a child at once; without that hook (a fork from C that skips CPython's handlers, as
uWSGI does by default) the pid is compared before every flush, on the first call, and then at
most every :data:`PID_CHECK_INTERVAL` on the calling path (``getpid`` is a system call, so
not on every evaluation): the child then drops the inherited window, with what it recorded
itself until then, and never sends the parent's data.
"""
from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from shmflags.events.sender import (
    SEND_FULL,
    SEND_OK,
    SEND_TOO_BIG,
    DatagramSender,
    Packed,
    pack_window
)

try:  # the common path of record_evaluation in C (native/events.c); optional
    from shmflags._native import _RecorderCore as _NativeCore  # type: ignore[attr-defined]
except ImportError:  # no extension (or an older build): the Python path does everything
    _NativeCore = None

from shmflags.context import Context as _Context

__all__ = ["EventRecorder", "PythonEventRecorder", "NATIVE"]

log = logging.getLogger(__name__)

_time = time.time
_getpid = os.getpid

MAX_UNSENT = 256
"""Most packed datagrams kept for the next try after a full socket queue (16 MiB at most;
one window's datagrams); beyond that their items are merged back into the live window."""

CLOSE_TIMEOUT = 2.0
"""Seconds :meth:`EventRecorder.close` keeps retrying a full socket before giving up."""

_RETRY_MIN = 0.01  # first retry of a full socket by the background thread, in seconds

PID_CHECK_INTERVAL = 0.01
"""Seconds between pid checks on the calling path (one ``getpid`` at most this often).

Bounds what a child forked without CPython's fork handlers (uWSGI without
``py-call-osafterfork``) can lose when its parent had recorded within this interval before
the fork: the child's first 10 ms of evaluations."""


_KINDS: Dict[Tuple[str, ...], Tuple[str, ...]] = {}
_KINDS_MAX = 1024  # distinct kind tuples interned; beyond that they are simply not shared


def _kinds_of(context: Any) -> Tuple[str, ...]:
    """The individual context kinds of a (shmflags or ldclient) context.

    Equal tuples are returned as one object (interned), so that a summary flag evaluated
    for many contexts of the same kinds keeps seeing the kinds it already has (an identity
    check on the recording path) and its kinds set is not updated again.
    """
    if not context.multiple:
        kinds: Tuple[str, ...] = (context.kind,)
    else:
        out = []
        for i in range(context.individual_context_count):
            c = context.get_individual_context(i)
            if c is not None:
                out.append(c.kind)
        kinds = tuple(out)
    shared = _KINDS.get(kinds)
    if shared is not None:
        return shared
    if len(_KINDS) < _KINDS_MAX:
        _KINDS[kinds] = kinds  # one dict store: safe without a lock under the GIL
    return kinds


def _ev_of(context: Any) -> Tuple[dict, Tuple[str, ...]]:
    """``(JSON dict, kinds)`` of a context for the window. A shmflags Context keeps it in
    its ``_ev`` slot for the next windows and for the C path (which sights a context, or
    puts it in an event, only when it has them); the dict is only ever read."""
    if type(context) is not _Context:
        return context.to_dict(), _kinds_of(context)
    ev = context._ev
    if ev is None:
        ev = context._ev = (context.to_dict(), _kinds_of(context))
    return ev


def _json_of(context: Any, entry: list) -> dict:
    """The JSON an event carries for ``context``: its window entry's when the entry was made
    from this very object, else its own (a twin: same fully-qualified key, another object,
    whose attributes may differ)."""
    return entry[0] if entry[5] is context else _ev_of(context)[0]


def _after_fork_in_child(ref: "weakref.ref[EventRecorder]") -> None:
    recorder = ref()
    if recorder is not None:
        recorder._reset(_getpid())


class _Recorder:
    """Buffers one worker's analytics events and sends them to the supervisor's socket.

    Thread-safe. Never blocks an evaluation: a full socket keeps the summary for the next
    try, and full events beyond ``events_max_pending`` are dropped and counted.

    After fork the child starts with an empty buffer and its own socket; the parent's
    unsent data stays with the parent.

    :param config: a :class:`shmflags.config.Config` (reads ``send_events``,
        ``flush_interval``, ``events_max_pending``)
    :param socket_path: the supervisor's datagram socket (``config.socket_path``)
    """

    def __init__(self, config: Any, socket_path: Optional[str] = None) -> None:
        self._enabled = bool(getattr(config, "send_events", True))
        self._interval = float(getattr(config, "flush_interval", 5.0))
        self._capacity = int(getattr(config, "events_max_pending", 10000))
        self._sender = DatagramSender(socket_path or config.socket_path)
        self._closed = False
        self.stats = {"sent": 0, "send_failures": 0, "dropped": 0}
        # The C common path finds a context's window entry by the fully-qualified key that
        # this class caches in its ``_fqk`` slot (other context objects: the Python path).
        self._context_type = _Context
        self._reset(_getpid())
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork_in_child(ref))
        atexit.register(_close_at_exit, ref)

    # -- state ---------------------------------------------------------------------------

    def _reset(self, pid: int) -> None:
        """Start empty in process ``pid`` (construction, or a forked child)."""
        self._pid = pid
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._rng: Optional[random.Random] = None
        self._seq = 0
        self._new_window()
        self._dropped = 0  # full events dropped, reported in the next datagram
        now = _time()
        self._flush_at = now + self._interval
        # ``_deadline`` is the next time a call does the slow checks (pid, flush interval).
        # A disabled or closed recorder keeps it at 0 so that the one comparison on the hot
        # path also routes it to the early return.
        # The first call after construction checks at once (0: whatever the clock, and the
        # C path compares with a clock that may be a few ms behind this one): a recorder
        # built in a prefork master and inherited without fork handlers is then caught
        # before it counts.
        self._deadline = 0.0
        self._retry_at: Optional[float] = None
        self._retry_delay = 0.0
        self._flush_requested = False
        self._must_flush = False
        self._flush_lock = threading.Lock()
        # Packed datagrams a full socket queue refused, sent first by the next flush (only
        # touched under _flush_lock), the start of their oldest window, and their events.
        self._unsent: List[Packed] = []
        self._unsent_start = 0
        self._unsent_events = 0
        # The context dicts the last pack packed, and their bytes, for the next pack (see
        # pack_window; only touched under _flush_lock).
        self._carry: Dict[int, Tuple[dict, bytes]] = {}
        self._sender.after_fork()
        self.stats = {"sent": 0, "send_failures": 0, "dropped": 0}

    def _clear_caches(self) -> None:
        """Forget references into the window (the C core's counter and context caches, which
        must not outlive a replaced window or entry; nothing here without the core)."""

    def _new_window(self) -> None:
        self._clear_caches()
        self._summary: Dict[str, list] = {}
        self._contexts: Dict[str, list] = {}
        self._events: List[dict] = []
        self._start: Optional[float] = None
        self._end = 0.0
        self._last_ctx: Any = None
        self._last_entry: Optional[list] = None

    def _check_pid(self) -> None:
        pid = _getpid()
        if pid != self._pid:
            self._reset(pid)

    def _tick(self, now: float) -> None:
        """The slow checks, done by whichever call first sees ``_deadline`` pass.

        Every :data:`PID_CHECK_INTERVAL` the pid (a fork without CPython's fork handlers
        shows only there); every ``flush_interval`` a flush, which runs on the daemon thread
        so that a request does not pay for packing a window (without a live thread, or for a
        full buffer, the caller flushes).
        """
        self._deadline = now + PID_CHECK_INTERVAL
        self._check_pid()
        thread = self._thread
        if self._must_flush:  # a full buffer is flushed by the caller, at once
            self._must_flush = False
        elif now < self._flush_at:
            return
        elif thread is not None and thread.is_alive():
            self._flush_at = now + self._interval
            self._flush_requested = True
            self._wake.set()
            return
        self._flush_at = now + self._interval
        if thread is None:
            self._start_thread()
        self._flush(block=False)

    def _checks_due(self) -> bool:
        """The slow checks of a call that found ``_deadline`` passed, as
        :meth:`_record_evaluation_py` begins (the C core calls this, then records the call
        itself: a periodic check no longer sends the call to the Python path).

        :returns: whether the call is to be recorded (``False``: disabled or closed)
        """
        now = _time()
        if now >= self._deadline:
            if not self._enabled:
                return False
            self._tick(now)
        return True

    def _start_thread(self) -> None:
        thread = threading.Thread(target=_run_flusher, args=(weakref.ref(self), self._pid),
                                  name="shmflags-events-flush", daemon=True)
        self._thread = thread
        thread.start()
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            # multiprocessing children leave through os._exit (no atexit): flush in its
            # finalizers too. Registered here, after the child cleared its registry.
            mp_util.Finalize(self, _close_at_exit, args=(weakref.ref(self),), exitpriority=10)

    # -- recording (hot path) --------------------------------------------------------------

    def _sight(self, context: Any, now: float, count: int, index: bool) -> list:
        """The window's entry for ``context``'s fully-qualified key (created on first sight)."""
        fq = context.fully_qualified_key
        entry = self._contexts.get(fq)
        if entry is None:
            if self._thread is None:
                self._start_thread()
            ev = _ev_of(context)
            entry = [ev[0], int(now * 1000), count, index, ev[1], context]
            if len(self._contexts) >= self._capacity:
                self._dropped += 1
                self.stats["dropped"] += 1
                return entry  # counted in the summary, not tracked for an index event
            self._contexts[fq] = entry
            if len(self._contexts) >= self._capacity:
                self._must_flush = True  # the next call flushes (we hold the lock here)
                self._deadline = 0.0
        else:
            entry[2] += count
        self._last_ctx, self._last_entry = context, entry
        return entry

    def _record_evaluation_py(self, key: str, context: Any, eval_tuple: tuple, default: Any,
                              with_reason: bool) -> None:
        """Count one flag evaluation and keep any full events it requires.

        The reference implementation: ``record_evaluation`` of :class:`PythonEventRecorder`,
        and of :class:`EventRecorder` without the C extension. With it, ``RecorderCore``
        (``native/events.c``) does the common case (the last context again, a flag and
        variation already counted in this window, no full event, no prerequisite) on the
        same objects and passes every other call here unchanged. Here the common case is a
        few dictionary operations under an uncontended lock and no system call.

        :param key: the flag key as requested
        :param context: the (valid) context evaluated
        :param eval_tuple: the backend's ``(value, variation_index, reason, info, prereqs)``
        :param default: the caller's default value
        :param with_reason: ``True`` for ``variation_detail`` (events then carry the reason)
        """
        now = _time()
        if now >= self._deadline:
            if not self._enabled:
                return
            self._tick(now)
        value, variation, reason, info, prereqs = eval_tuple
        if variation is None:
            value = default
        full = False
        lock = self._lock
        lock.acquire()
        try:
            if context is self._last_ctx:
                entry = self._last_entry
                entry[2] += 1
            else:
                entry = self._sight(context, now, 1, True)
            self._end = now
            if prereqs:
                full = self._prereqs(context, entry, prereqs, with_reason, now)
            if info is None:
                version = None
            else:
                version = info[0]
                if info[1] or info[2] is not None:
                    full = self._full(key, context, entry, value, variation, reason, info,
                                      default, with_reason, None, now) or full
                    if info[1] & 4:  # excludeFromSummaries
                        return
            # Summary counters. A flag's counters are keyed by variation while its version
            # is the one first seen in the window, by (variation, version) after a change.
            flag = self._summary.get(key)
            if flag is None:
                kinds = entry[4]
                self._summary[key] = [default, set(kinds), {variation: [1, value]}, kinds,
                                      version]
                if self._start is None:  # the window's first counted evaluation
                    self._start = now
                return
            if flag[3] is not entry[4]:
                flag[3] = entry[4]
                flag[1].update(flag[3])
            counters = flag[2]
            ck = variation if version == flag[4] else (variation, version)
            counter = counters.get(ck)
            if counter is None:
                counters[ck] = [1, value]
            else:
                counter[0] += 1
        finally:
            lock.release()
            if full:
                self._flush_full()

    def _count(self, key: str, kinds: Tuple[str, ...], default: Any, variation: Optional[int],
               version: Optional[int], value: Any) -> None:
        """Add one evaluation to the summary counters (caller holds the lock)."""
        flag = self._summary.get(key)
        if flag is None:
            self._summary[key] = [default, set(kinds), {variation: [1, value]}, kinds, version]
            if self._start is None:
                self._start = self._end
            return
        if flag[3] is not kinds:
            flag[3] = kinds
            flag[1].update(kinds)
        counters = flag[2]
        ck = variation if version == flag[4] else (variation, version)
        counter = counters.get(ck)
        if counter is None:
            counters[ck] = [1, value]
        else:
            counter[0] += 1

    def _prereqs(self, context: Any, entry: list, prereqs: tuple, with_reason: bool,
                 now: float) -> bool:
        full = False
        kinds = entry[4]
        for prereq_of, key, value, variation, reason, info in prereqs:
            if info is None:
                continue
            entry[2] += 1  # every prerequisite event goes through the index LRU in ldclient
            version, bits, debug_until, _ = info
            if bits or debug_until is not None:
                full = self._full(key, context, entry, value, variation, reason, info, None,
                                  with_reason, prereq_of, now) or full
            if not bits & 4:
                self._count(key, kinds, None, variation, version, value)
        return full

    def _sample(self, ratio: Any) -> bool:
        if ratio is None or ratio == 1 and type(ratio) is int:
            return True
        if type(ratio) is not int or ratio <= 0:
            return False
        rng = self._rng
        if rng is None:
            rng = self._rng = random.Random()  # seeded from os.urandom in this process
        return rng.random() < 1.0 / ratio

    def _full(self, key: str, context: Any, entry: list, value: Any, variation: Optional[int],
              reason: Optional[dict], info: tuple, default: Any, with_reason: bool,
              prereq_of: Optional[str], now: float) -> bool:
        """Append the feature and/or debug events for one evaluation; True if the buffer is full."""
        version, bits, debug_until, sampling = info
        now_ms = int(now * 1000)
        debug = debug_until is not None and debug_until > now_ms
        if not (bits & 3 or debug):
            return False
        event: Dict[str, Any] = {"kind": "feature", "creationDate": now_ms, "key": key,
                                 "value": value, "default": default, "version": version}
        if variation is not None:
            event["variation"] = variation
        if (with_reason or bits & 2) and reason is not None:
            event["reason"] = reason
        if prereq_of is not None:
            event["prereqOf"] = prereq_of
        event["context"] = _json_of(context, entry)
        if bits & 3 and self._sample(sampling):
            self._append(event)
        if debug and self._sample(sampling):
            dbg = dict(event)
            dbg["kind"] = "debug"
            dbg["debugUntil"] = debug_until
            self._append(dbg)
        return len(self._events) + self._unsent_events >= self._capacity

    def _append(self, event: dict) -> None:
        if len(self._events) + self._unsent_events >= self._capacity:
            self._dropped += 1
            self.stats["dropped"] += 1
        else:
            self._events.append(event)

    def record_custom(self, key: str, context: Any, data: Any = None,
                      metric_value: Any = None) -> None:
        """Keep a ``custom`` event (``track()``).

        :param key: the event key
        :param context: the (valid) context
        :param data: optional JSON data
        :param metric_value: optional number
        """
        if not self._enabled:
            return
        now = _time()
        if now >= self._deadline:
            self._tick(now)
        with self._lock:
            self._check_pid()
            entry = self._sight(context, now, 1, True)
            event: Dict[str, Any] = {"kind": "custom", "creationDate": int(now * 1000),
                                     "key": key,
                                     "context": _json_of(context, entry)}
            if data is not None:
                event["data"] = data
            if metric_value is not None:
                event["metricValue"] = metric_value
            self._append(event)
            full = len(self._events) + self._unsent_events >= self._capacity
        if full:
            self._flush_full()

    def record_identify(self, context: Any) -> None:
        """Keep an ``identify`` event; a context with an empty key produces none.

        :param context: the (valid) context
        """
        if not self._enabled or (not context.multiple and not context.key):
            return
        now = _time()
        if now >= self._deadline:
            self._tick(now)
        with self._lock:
            self._check_pid()
            entry = self._sight(context, now, 1, False)
            self._append({"kind": "identify", "creationDate": int(now * 1000),
                          "context": _json_of(context, entry)})
            full = len(self._events) + self._unsent_events >= self._capacity
        if full:
            self._flush_full()

    def record_migration_op(self, event_dict: Dict[str, Any]) -> None:
        """Keep a ``migration_op`` event built by the migration tracker.

        :param event_dict: LD output-shaped event whose ``context`` is the context's JSON
            (or a context object); sampled by its ``samplingRatio``
        """
        if not self._enabled:
            return
        from shmflags.context import coerce  # only migrations pay for this import

        context = coerce(event_dict.get("context"))
        if not context.valid:
            return
        now = _time()
        if now >= self._deadline:
            self._tick(now)
        event = dict(event_dict)
        event["kind"] = "migration_op"
        event.setdefault("creationDate", int(now * 1000))
        event["context"] = context.to_dict()
        with self._lock:
            self._check_pid()
            self._sight(context, now, 1, False)
            if self._sample(event.get("samplingRatio", 1)):
                self._append(event)
            full = len(self._events) + self._unsent_events >= self._capacity
        if full:
            self._flush_full()

    # -- flushing --------------------------------------------------------------------------

    def _flush_full(self) -> None:
        """The full-event buffer is full: flush it now from the calling thread.

        Unless a failed send already waits for its retry (no supervisor, or its socket
        queue full) and the daemon thread is there to make it: that thread retries on its
        back-off, and packing the whole buffer again on every tracked evaluation meanwhile
        would only cost the caller time (events beyond the buffer are dropped and counted
        either way).
        """
        thread = self._thread
        if self._retry_at is not None and thread is not None and thread.is_alive():
            return
        self._flush(block=False)

    def flush(self) -> None:
        """Send everything buffered now, without waiting for a full socket."""
        if self._enabled:
            self._check_pid()
            self._flush(block=False)

    def close(self) -> None:
        """Flush, retrying a full socket for up to :data:`CLOSE_TIMEOUT` seconds, then close.

        Called at interpreter exit too. Safe to call more than once.
        """
        if self._closed or not self._enabled:
            return
        self._check_pid()
        self._flush(block=True)
        self._closed = True
        self._enabled = False
        self._deadline = 0.0
        self._wake.set()
        self._sender.close()

    def __del__(self) -> None:
        # A recorder dropped without close() (e.g. a local in a worker function) still
        # delivers what it holds.
        try:
            if not self._closed and self._pid == _getpid():
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def _take(self) -> Tuple[int, int, int, Dict[str, list], Dict[str, list], List[dict], int]:
        with self._lock:
            start = self._start if self._start is not None else self._end
            taken = (int(start * 1000), int(self._end * 1000), self._dropped, self._summary,
                     self._contexts, self._events)
            self._dropped = 0
            self._new_window()
            seq = self._seq
        return taken + (seq,)

    def _flush(self, block: bool) -> bool:
        """Send the current window; put back what did not go. Returns True if all went.

        Flushes are serialised; a non-blocking flush that finds another one running leaves
        its data for the next one.
        """
        lock = self._flush_lock
        if not lock.acquire(blocking=block, timeout=CLOSE_TIMEOUT if block else -1):
            return False
        try:
            return self._flush_locked(block)
        finally:
            lock.release()

    def _flush_locked(self, block: bool) -> bool:
        self._check_pid()  # never send a window inherited from the parent
        deadline = _time() + CLOSE_TIMEOUT
        # Datagrams that an earlier flush packed but a full socket queue refused go first,
        # as they are: a window split into many datagrams is packed once, however many
        # tries the supervisor's queue (10 datagrams by default) takes to drain. The live
        # window is not taken until they are all gone, so that it keeps merging what is
        # recorded meanwhile (one sighting per context, one counter per flag and variation)
        # instead of adding datagrams to a supervisor that is behind.
        if self._unsent:
            packets, self._unsent = self._unsent, []
            if not self._send_all(packets, block, deadline, self._unsent_start):
                return False
        start, end, dropped, summary, contexts, events, seq = self._take()
        if summary or contexts or events or dropped:
            packets, unsendable = pack_window(self._pid, seq, dropped, start, end, summary,
                                              contexts, events, self._carry)
            if unsendable:
                with self._lock:
                    self._dropped += unsendable
                    self.stats["dropped"] += unsendable
            with self._lock:
                self._seq = max(self._seq, seq + len(packets))  # gaps are fine: diagnostic
            if not self._send_all(packets, block, deadline, start):
                return False
        self._retry_at = None
        self._retry_delay = 0.0
        return True

    def _send_all(self, packets: List[Packed], block: bool, deadline: float,
                  start: int) -> bool:
        """Send ``packets`` in order; keep or put back what does not go. True if all went.

        :param start: the window start (ms) of the packets' summaries, for a put-back
        """
        delay = 0.001
        status = SEND_OK
        i = 0
        while i < len(packets):
            status = self._sender.send(packets[i].data)
            if status == SEND_OK:
                i += 1
                continue
            if status == SEND_TOO_BIG:  # cannot succeed later either: drop, count, go on
                lost = len(packets[i].events) + len(packets[i].contexts) + len(packets[i].flags)
                with self._lock:
                    self._dropped += lost + packets[i].dropped
                    self.stats["dropped"] += lost
                packets.pop(i)
                continue
            self.stats["send_failures"] += 1
            # Only a full queue is worth waiting for: with no supervisor listening, exit
            # must not hang.
            if not block or status != SEND_FULL or _time() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        with self._lock:
            self.stats["sent"] += i
        if i == len(packets):
            self._unsent_events = 0
            return True
        rest = packets[i:]
        held = sum(len(p.events) for p in rest)
        if (status == SEND_FULL and len(rest) <= MAX_UNSENT
                and held + len(self._events) <= self._capacity):
            # The supervisor is there but behind: keep the datagrams for the next try.
            # Their events count against events_max_pending (_unsent_events).
            self._unsent = rest
            self._unsent_start = start
            self._unsent_events = held
        else:
            # No supervisor (or too much to hold): merge the items back into the live window.
            self._unsent_events = 0
            self._put_back(rest, start)
        # Retry soon while datagrams get through; back off while none does.
        delay = _RETRY_MIN if i else max(2 * self._retry_delay, _RETRY_MIN)
        self._retry_delay = min(delay, 1.0, self._interval)
        self._retry_at = _time() + self._retry_delay
        self._wake.set()
        return False

    def _put_back(self, packets: List[Packed], start: int) -> None:
        """Merge unsent summaries, sightings and events back into the live window."""
        with self._lock:
            for p in packets:
                self._dropped += p.dropped
                for key, default, kinds, rows in p.flags:
                    flag = self._summary.get(key)
                    if flag is None:
                        flag = self._summary[key] = [default, set(kinds), {}, None,
                                                     rows[0][1]]
                    else:
                        flag[0] = default  # the older window saw the flag first
                        flag[1].update(kinds)
                    counters = flag[2]
                    for variation, version, value, count in rows:
                        ck = variation if version == flag[4] else (variation, version)
                        c = counters.get(ck)
                        if c is None:
                            counters[ck] = [count, value]
                        else:
                            c[0] += count
                            c[1] = value
                for fq, entry in p.contexts:
                    live = self._contexts.get(fq)
                    if live is None:
                        if len(self._contexts) >= self._capacity:
                            self._dropped += 1  # bounded while the supervisor is away
                            self.stats["dropped"] += 1
                            continue
                        self._contexts[fq] = entry
                    else:
                        entry[2] += live[2]
                        self._contexts[fq] = entry
                        if self._last_entry is live:
                            self._last_ctx = self._last_entry = None
            self._clear_caches()  # a live entry may have been replaced
            old = [e for p in packets for e in p.events]
            if old:
                merged = old + self._events
                excess = len(merged) - self._capacity
                if excess > 0:
                    merged = merged[:self._capacity]
                    self._dropped += excess
                    self.stats["dropped"] += excess
                self._events = merged
            if any(p.flags for p in packets):
                start_s = start / 1000.0
                if self._start is None or start_s < self._start:
                    self._start = start_s
                if self._end < start_s:
                    self._end = start_s

    def _background(self) -> float:
        """One pass of the flush thread; returns how long to sleep."""
        now = _time()
        retry = self._retry_at
        if self._flush_requested or now >= self._flush_at or (retry is not None and now >= retry):
            self._flush_requested = False
            if now >= self._flush_at:
                self._flush_at = now + self._interval
            self._flush(block=False)
        retry = self._retry_at
        wake_at = self._flush_at if retry is None else min(self._flush_at, retry)
        return max(0.0, wake_at - _time())


class PythonEventRecorder(_Recorder):
    """The recorder without the C common path (what :class:`EventRecorder` is when the
    extension is absent; tests compare the two)."""

    record_evaluation = _Recorder._record_evaluation_py


if _NativeCore is not None:
    class EventRecorder(_NativeCore, _Recorder):  # type: ignore[misc,valid-type]
        __doc__ = _Recorder.__doc__
        # record_evaluation comes from _NativeCore (first in the MRO): the common case in C,
        # everything else through _Recorder._record_evaluation_py.
else:
    EventRecorder = PythonEventRecorder  # type: ignore[misc]

NATIVE = _NativeCore is not None
"""True when :class:`EventRecorder` has the C common path."""


def _run_flusher(ref: "weakref.ref[EventRecorder]", pid: int) -> None:
    """Body of the per-process daemon thread: flush idle workers on the interval."""
    while True:
        recorder = ref()
        if recorder is None or recorder._pid != pid or recorder._closed:
            return
        wake = recorder._wake
        wake.clear()  # before looking at the work, so that a request made meanwhile wakes us
        try:
            delay = recorder._background()
        except Exception:  # noqa: BLE001 - the thread must outlive a bug in one flush
            log.exception("event flush failed")
            delay = recorder._interval
        del recorder
        wake.wait(delay)


def _close_at_exit(ref: "weakref.ref[EventRecorder]") -> None:
    recorder = ref()
    if recorder is not None and recorder._pid == _getpid():
        try:
            recorder.close()
        except Exception:
            log.exception("flushing events at exit failed")
