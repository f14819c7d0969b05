"""Flag tracker: version diffs, dependency propagation, listeners, watcher thread and fork."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List

from shmflags.client.source import TestDataSource, build_backend
from shmflags.client.tracker import (FlagChange, FlagTracker, SnapshotDigest, Watcher,
                                     changed_flags)
from shmflags.context import Context
from shmflags.testing import TestData


def _flag(key: str, version: int = 1, prereqs: List[str] = (), segments: List[str] = (),
          value: Any = True) -> Dict[str, Any]:
    rules = [{"id": "r", "variation": 0, "clauses": [
        {"attribute": "key", "op": "segmentMatch", "values": list(segments)}]}] if segments else []
    return {"key": key, "version": version, "on": True, "variations": [value, False],
            "fallthrough": {"variation": 0}, "offVariation": 1, "rules": rules,
            "prerequisites": [{"key": p, "variation": 0} for p in prereqs]}


def _segment(key: str, version: int = 1, refs: List[str] = ()) -> Dict[str, Any]:
    rules = [{"id": "s", "clauses": [
        {"attribute": "key", "op": "segmentMatch", "values": list(refs)}]}] if refs else []
    return {"key": key, "version": version, "included": [], "rules": rules}


def _digest(flags: List[dict], segments: List[dict] = ()) -> SnapshotDigest:
    return SnapshotDigest(build_backend({f["key"]: f for f in flags},
                                        {s["key"]: s for s in segments}))


def test_changed_flags_propagates_through_prerequisites_and_segments() -> None:
    old = _digest([_flag("a"), _flag("b", prereqs=["a"]), _flag("c", prereqs=["b"]),
                   _flag("d", segments=["s1"]), _flag("e"), _flag("x", segments=["unused"])],
                  [_segment("s1", refs=["s2"]), _segment("s2"), _segment("lonely")])
    new = _digest([_flag("a", 2), _flag("b", prereqs=["a"]), _flag("c", prereqs=["b"]),
                   _flag("d", segments=["s1"]), _flag("e"), _flag("x", segments=["unused"])],
                  [_segment("s1", refs=["s2"]), _segment("s2"), _segment("lonely", 5)])
    assert changed_flags(old, new) == ["a", "b", "c"]
    nested = _digest([_flag("a"), _flag("b", prereqs=["a"]), _flag("c", prereqs=["b"]),
                      _flag("d", segments=["s1"]), _flag("e"), _flag("x", segments=["unused"])],
                     [_segment("s1", refs=["s2"]), _segment("s2", 3), _segment("lonely")])
    assert changed_flags(old, nested) == ["d"]
    # a segment appearing where one was missing counts as a change
    appeared = _digest([_flag("a"), _flag("b", prereqs=["a"]), _flag("c", prereqs=["b"]),
                        _flag("d", segments=["s1"]), _flag("e"), _flag("x", segments=["unused"])],
                       [_segment("s1", refs=["s2"]), _segment("s2"), _segment("unused")])
    assert changed_flags(old, appeared) == ["x"]


def test_added_and_removed_flags_and_their_dependents() -> None:
    old = _digest([_flag("a"), _flag("b", prereqs=["gone"]), _flag("gone")])
    new = _digest([_flag("a"), _flag("b", prereqs=["gone"]), _flag("new")])
    assert changed_flags(old, new) == ["b", "gone", "new"]
    assert changed_flags(SnapshotDigest(None), old) == ["a", "b", "gone"]
    assert changed_flags(old, old) == []


class _Holder:
    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot

    def current(self) -> Any:
        return self.snapshot


def _evaluate(holder: _Holder):
    user = Context.create("u")

    def evaluate(key: str, context: Any) -> Any:
        snap = holder.current()
        return None if snap is None else snap.evaluate(key, user)[0]
    return evaluate


def test_listeners_and_value_change_listener_without_thread() -> None:
    holder = _Holder(build_backend({"a": _flag("a"), "b": _flag("b", prereqs=["a"])}, {}))
    watcher = Watcher(interval=60)
    tracker = FlagTracker(holder.current, _evaluate(holder), watcher)
    changes: List[str] = []
    values: List[Any] = []
    tracker.add_listener(lambda c: changes.append(c.key))
    sub = tracker.add_flag_value_change_listener("a", Context.create("u"),
                                                 lambda ch: values.append((ch.key, ch.old_value,
                                                                           ch.new_value)))
    watcher.poll_once()
    assert changes == [] and values == []
    # version bump without a value change: FlagChange yes, FlagValueChange no
    holder.snapshot = build_backend({"a": _flag("a", 2), "b": _flag("b", prereqs=["a"])}, {})
    watcher.poll_once()
    assert changes == ["a", "b"] and values == []
    holder.snapshot = build_backend({"a": _flag("a", 3, value="on"),
                                     "b": _flag("b", prereqs=["a"])}, {})
    watcher.poll_once()
    assert values == [("a", True, "on")]
    tracker.remove_listener(sub)
    holder.snapshot = build_backend({"a": _flag("a", 4, value="x"),
                                     "b": _flag("b", prereqs=["a"])}, {})
    watcher.poll_once()
    assert values == [("a", True, "on")]
    watcher.stop()


def test_raising_listener_does_not_stop_others() -> None:
    holder = _Holder(build_backend({"a": _flag("a")}, {}))
    watcher = Watcher(interval=60)
    tracker = FlagTracker(holder.current, _evaluate(holder), watcher)
    got: List[FlagChange] = []

    def bad(change: FlagChange) -> None:
        raise RuntimeError("listener bug")

    tracker.add_listener(bad)
    tracker.add_listener(got.append)
    holder.snapshot = build_backend({"a": _flag("a", 2)}, {})
    watcher.poll_once()
    assert got == [FlagChange("a")]
    watcher.stop()


def _wait(predicate: Any, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_watcher_thread_starts_lazily_with_testdata() -> None:
    td = TestData()
    td.update(td.flag("f").variation_for_all(False))
    source = TestDataSource(td)
    watcher = Watcher(interval=0.02)
    tracker = FlagTracker(source.current, lambda k, c: source.current().evaluate(
        k, Context.create("u"))[0], watcher)
    assert not watcher.running, "nothing starts before a listener is registered"
    values: List[Any] = []
    tracker.add_flag_value_change_listener("f", None, lambda ch: values.append(ch.new_value))
    assert watcher.running
    td.update(td.flag("f").variation_for_all(True))
    assert _wait(lambda: values == [True])
    watcher.stop()
    assert not watcher.running


def test_listener_registered_before_fork_fires_in_child() -> None:
    td = TestData()
    td.update(td.flag("f").variation_for_all(False))
    source = TestDataSource(td)
    watcher = Watcher(interval=0.02)
    tracker = FlagTracker(source.current, lambda k, c: source.current().evaluate(
        k, Context.create("u"))[0], watcher)
    r, w = os.pipe()
    tracker.add_flag_value_change_listener(
        "f", None, lambda ch: os.write(w, f"{os.getpid()}:{ch.new_value}\n".encode()))
    pid = os.fork()
    if pid == 0:
        try:
            # the parent's watcher thread does not exist here; the at-fork hook restarted one
            ok = _wait(lambda: watcher.running, 1.0)
            td.update(td.flag("f").variation_for_all(True))  # the child's own copy of td
            time.sleep(0.5)
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    watcher.stop()
    os.close(w)
    out = os.read(r, 1000).decode()
    os.close(r)
    assert os.WEXITSTATUS(status) == 0
    assert out == f"{pid}:True\n", out


def test_same_version_edit_is_a_change_but_identical_republish_is_not() -> None:
    base = _digest([_flag("a", value="x"), _flag("b", prereqs=["a"])])
    edited = _digest([_flag("a", value="y"), _flag("b", prereqs=["a"])])  # version still 1
    assert changed_flags(base, edited) == ["a", "b"]
    again = _digest([_flag("a", value="x"), _flag("b", prereqs=["a"])])
    assert changed_flags(base, again) == []
