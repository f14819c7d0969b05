"""Flag change notifications (``client.flag_tracker``) and the watcher thread that drives them.

Runs in a worker, in a daemon thread that starts only when a listener is registered, in the
process that registers it; a forked child that inherited listeners restarts its own thread
(``os.register_at_fork``, plus a pid check on every registration). Changes are found by
comparing per-flag and per-segment versions (and a fingerprint of the JSON, for files that edit
an item without a new version) between the snapshot generation last seen and the current one, and propagated to every flag that depends on a changed item through
prerequisites or ``segmentMatch`` clauses, transitively (ld-protocol §10.2).
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import msgpack
import xxhash

log = logging.getLogger(__name__)

Item = Tuple[str, str]  # ("flags" | "segments", key)


class FlagChange:
    """Some part of flag ``key``'s configuration, or of something it depends on, changed."""

    def __init__(self, key: str) -> None:
        self.__key = key

    @property
    def key(self) -> str:
        """The flag key."""
        return self.__key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlagChange) and other.key == self.key

    def __repr__(self) -> str:
        return f"FlagChange({self.key!r})"


class FlagValueChange:
    """The value of flag ``key`` for a registered context went from ``old_value`` to
    ``new_value``."""

    def __init__(self, key: str, old_value: Any, new_value: Any) -> None:
        self.__key = key
        self.__old = old_value
        self.__new = new_value

    @property
    def key(self) -> str:
        """The flag key."""
        return self.__key

    @property
    def old_value(self) -> Any:
        """The value before the change."""
        return self.__old

    @property
    def new_value(self) -> Any:
        """The value after the change."""
        return self.__new

    def __repr__(self) -> str:
        return f"FlagValueChange({self.key!r}, {self.old_value!r}, {self.new_value!r})"


# -- dependency graph over a snapshot ------------------------------------------------------

def _segment_refs(rules: Any) -> Iterable[str]:
    for rule in rules or ():
        if not isinstance(rule, dict):
            continue
        for clause in rule.get("clauses") or ():
            if isinstance(clause, dict) and clause.get("op") == "segmentMatch":
                for value in clause.get("values") or ():
                    if isinstance(value, str):
                        yield value


def _version(item: Optional[dict]) -> Any:
    """What identifies an item's configuration: its version and a fingerprint of its JSON.

    The fingerprint catches edits that keep the version (flag files give every item
    version 1 unless they say otherwise)."""
    if item is None:
        return None
    try:
        fingerprint = xxhash.xxh3_64_intdigest(msgpack.packb(item, default=repr))
    except Exception:  # noqa: BLE001 - unpackable values: fall back to the version alone
        fingerprint = None
    return (item.get("version"), fingerprint)


class SnapshotDigest:
    """The versions and dependency edges of one snapshot, enough to diff two generations.

    Only segments reachable from some flag are recorded: a segment no flag refers to cannot
    change any flag's behaviour.

    :param snapshot: any backend object (``flag_keys``, ``raw_flag``, ``raw_segment``), or
        ``None`` for "no data".
    """

    def __init__(self, snapshot: Any) -> None:
        self.versions: Dict[Item, Any] = {}
        self.depends_on: Dict[Item, Set[Item]] = {}
        if snapshot is None:
            return
        pending: List[str] = []
        for key in snapshot.flag_keys():
            flag = snapshot.raw_flag(key)
            if flag is None:
                continue
            deps: Set[Item] = set()
            for prereq in flag.get("prerequisites") or ():
                if isinstance(prereq, dict) and isinstance(prereq.get("key"), str):
                    deps.add(("flags", prereq["key"]))
            for seg in _segment_refs(flag.get("rules")):
                deps.add(("segments", seg))
                pending.append(seg)
            self.versions[("flags", key)] = _version(flag)
            self.depends_on[("flags", key)] = deps
        while pending:
            key = pending.pop()
            if ("segments", key) in self.versions:
                continue
            segment = snapshot.raw_segment(key)
            self.versions[("segments", key)] = _version(segment)
            deps = set()
            for ref in _segment_refs((segment or {}).get("rules")):
                deps.add(("segments", ref))
                pending.append(ref)
            self.depends_on[("segments", key)] = deps


def changed_flags(old: SnapshotDigest, new: SnapshotDigest) -> List[str]:
    """Keys of the flags whose behaviour may differ between ``old`` and ``new``, sorted.

    An item changed when it was added, removed, or its version differs; every flag that
    depends on a changed item, directly or not, in either snapshot, is changed too.
    """
    changed = {item for item in set(old.versions) | set(new.versions)
               if old.versions.get(item, _MISSING) != new.versions.get(item, _MISSING)}
    dependents: Dict[Item, Set[Item]] = {}
    for digest in (old, new):
        for item, deps in digest.depends_on.items():
            for dep in deps:
                dependents.setdefault(dep, set()).add(item)
    affected: Set[Item] = set()
    stack = list(changed)
    while stack:
        item = stack.pop()
        if item in affected:
            continue
        affected.add(item)
        stack.extend(dependents.get(item, ()))
    return sorted(key for kind, key in affected if kind == "flags")


_MISSING = object()


# -- watcher thread --------------------------------------------------------------------------

class Watcher:
    """One daemon thread per client per process that polls for changes every ``interval``.

    It calls each registered poller in turn; pollers must be cheap when nothing changed.
    Nothing starts until :meth:`ensure_running`; after a fork the child has no thread, so
    :meth:`ensure_running` (and the at-fork hook) start a fresh one there.

    :param interval: seconds between polls.
    :param name: thread name, for debugging.
    :param threaded: false for sources that announce their own changes (in-process data):
        then no thread is ever started and pollers run only through :meth:`poll_once`.
    """

    def __init__(self, interval: float = 0.1, name: str = "shmflags-watcher",
                 threaded: bool = True) -> None:
        self._threaded = threaded
        self._interval = max(0.005, float(interval))
        self._name = name
        self._pollers: List[Callable[[], None]] = []
        self._fork_hooks: List[Callable[[], None]] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._wanted = False
        ref = weakref.ref(self)

        def _child() -> None:
            watcher = ref()
            if watcher is not None:
                watcher._after_fork_in_child()

        os.register_at_fork(after_in_child=_child)

    def add_poller(self, poll: Callable[[], None]) -> None:
        """Call ``poll()`` on every tick."""
        self._pollers.append(poll)

    def on_fork(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` in a forked child before the thread restarts (to renew locks)."""
        self._fork_hooks.append(hook)

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running (idempotent, fork-aware)."""
        if self._pid != os.getpid():
            self._after_fork_in_child()
        self._wanted = True
        if not self._threaded:
            return
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread runs in this process."""
        return (self._pid == os.getpid() and self._thread is not None
                and self._thread.is_alive())

    def stop(self) -> None:
        """Stop the thread (it exits within one interval); it is not restarted afterwards."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=2.0)

    def poll_once(self) -> None:
        """Run every poller once in the calling thread (used by the thread and by tests)."""
        for poll in list(self._pollers):
            try:
                poll()
            except Exception as exc:  # keep watching whatever a poller does
                log.error("flag watcher: %r", exc, exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll_once()

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its lock may have been held at fork.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._thread = None
        for hook in self._fork_hooks:
            try:
                hook()
            except Exception as exc:
                log.error("after-fork hook %r raised: %r", hook, exc)
        if self._wanted and not self._stop.is_set():
            try:
                self.ensure_running()
            except Exception as exc:  # never break the child's start-up
                log.error("flag watcher could not restart after fork: %r", exc)


# -- the tracker -----------------------------------------------------------------------------

class FlagValueChangeListener:
    """The subscription returned by ``add_flag_value_change_listener``: pass it to
    ``remove_listener`` to unsubscribe."""

    def __init__(self, key: str, context: Any, listener: Callable[[FlagValueChange], None],
                 evaluate: Callable[[str, Any], Any]) -> None:
        self._key = key
        self._context = context
        self._listener = listener
        self._evaluate = evaluate
        self._value = evaluate(key, context)

    def __call__(self, change: FlagChange) -> None:
        if change.key != self._key:
            return
        new = self._evaluate(self._key, self._context)
        old, self._value = self._value, new
        if new != old:
            self._listener(FlagValueChange(self._key, old, new))


class FlagTracker:
    """``client.flag_tracker``: listeners for flag configuration and value changes.

    :param current: returns the snapshot being served now (or ``None``); cheap.
    :param evaluate: ``evaluate(key, context)`` → value (default ``None``), without events.
    :param watcher: the client's :class:`Watcher`; the tracker adds its poller to it.
    """

    def __init__(self, current: Callable[[], Any], evaluate: Callable[[str, Any], Any],
                 watcher: Watcher) -> None:
        self._current = current
        self._evaluate = evaluate
        self._watcher = watcher
        self._listeners: List[Callable[[FlagChange], None]] = []
        self._lock = threading.Lock()
        self._poll_lock = threading.RLock()
        self._watching = False
        self._seen: Any = None            # snapshot object last seen (kept until the next)
        self._digest: Optional[SnapshotDigest] = None  # its digest, once computed
        watcher.add_poller(self.poll)
        watcher.on_fork(self.after_fork)

    def add_listener(self, listener: Callable[[FlagChange], None]) -> None:
        """Call ``listener(FlagChange)`` for each flag whose configuration (or a dependency's)
        changes. Called from the watcher thread; registering it again has no effect."""
        with self._lock:
            if not self._watching:
                # Remember the snapshot now; its digest is computed by the watcher when the
                # first change comes (registration stays cheap).
                self._seen, self._digest, self._watching = self._current(), None, True
            if listener not in self._listeners:
                self._listeners = self._listeners + [listener]
        self._watcher.ensure_running()

    def remove_listener(self, listener: Callable[[FlagChange], None]) -> None:
        """Unregister a listener (or a value-change subscription); unknown ones are ignored."""
        with self._lock:
            self._listeners = [fn for fn in self._listeners if fn != listener]

    def add_flag_value_change_listener(self, key: str, context: Any,
                                       listener: Callable[[FlagValueChange], None]
                                       ) -> FlagValueChangeListener:
        """Evaluate ``key`` for ``context`` now, then call ``listener(FlagValueChange)``
        whenever a change to the flag changes that value.

        :returns: the subscription; pass it to :meth:`remove_listener` to stop.
        """
        subscription = FlagValueChangeListener(key, context, listener, self._evaluate)
        self.add_listener(subscription)
        return subscription

    def poll(self) -> None:
        """Diff the current snapshot against the last one seen and notify (watcher thread)."""
        if not self._listeners:
            return
        # One diff at a time (the watcher thread and a TestData update may both poll); an
        # RLock, so a listener may itself trigger a poll.
        with self._poll_lock:
            snapshot = self._current()
            if snapshot is self._seen:
                return
            old = self._digest if self._digest is not None else SnapshotDigest(self._seen)
            digest = SnapshotDigest(snapshot)
            self._seen, self._digest = snapshot, digest
            changed = changed_flags(old, digest)
            self._notify(changed)

    def _notify(self, changed: List[str]) -> None:
        for key in changed:
            change = FlagChange(key)
            for fn in self._listeners:
                try:
                    fn(change)
                except Exception as exc:
                    log.error("flag change listener %r raised: %r", fn, exc)

    def after_fork(self) -> None:
        """Replace the locks in a forked child."""
        self._lock = threading.Lock()
        self._poll_lock = threading.RLock()


__all__ = ["FlagChange", "FlagValueChange", "FlagTracker", "FlagValueChangeListener",
           "SnapshotDigest", "Watcher", "changed_flags"]
