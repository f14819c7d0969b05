"""``_native._pack_event`` (native/events.c) against the Python code it replaces.

The sender packs feature and debug events with the C function when the extension is built;
it must refuse exactly the events that ``datagram.check_event`` refuses and otherwise return
exactly ``msgpack.packb`` of the event (context spliced in last), for random, hostile and
malformed events, and never crash or raise for what the sender hands it.
"""
from __future__ import annotations

import math
import os
import random
import sys
from typing import Any, Dict

import msgpack
import pytest

from shmflags.events import datagram
from shmflags.events import sender as S

native = pytest.mark.c_only   # deselected in the pure-Python pass; see tests/conftest.py
if os.environ.get("SHMFLAGS_REQUIRE_NATIVE") == "1":
    assert S._pack_event is not None

CONTEXT = {"kind": "user", "key": "u1", "name": "Ünïcode"}
CBYTES = msgpack.packb(CONTEXT, use_bin_type=True)


class Str(str):
    """A str subclass (the JSON rules take exact types only)."""


class Int(int):
    pass


GOOD = [None, True, False, 0, 1, -1, 127, 128, 255, 256, -32, -33, -128, -129, 65535,
        65536, -32768, -32769, 2**31, -2**31, -2**31 - 1, 2**32, 2**63 - 1, -2**63, 0.5, -0.0,
        1e300, "", "a", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "v" * 65536, "é☃😀"]
BAD = [2**63, -2**63 - 1, 2**64, float("nan"), float("inf"), -float("inf"), "\ud800",
       Str("s"), Int(3), b"bytes", (1, 2), object(), 3 + 0j]


def _value(rng: random.Random, bad: float, depth: int = 0) -> Any:
    """A random value: JSON, with probability ``bad`` per atom something the schema refuses."""
    r = rng.random()
    if depth > 3 or r < 0.45:
        return rng.choice(BAD if rng.random() < bad else GOOD)
    sizes = [0, 1, 3, 15, 16, 17] if depth == 0 else [0, 1, 2]   # the fix/16-bit headers
    if r < 0.7:
        return [_value(rng, bad, depth + 1) for _ in range(rng.choice(sizes))]
    d: Dict[Any, Any] = {}
    for i in range(rng.choice(sizes)):
        k: Any = f"k{i}"
        if rng.random() < bad:
            k = rng.choice([1, None, Str("sub"), "\udcff", (1,)])
        d[k] = _value(rng, bad, depth + 1)
    return d


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


def _event(rng: random.Random) -> Dict[str, Any]:
    """A random feature/debug event, its context last; about half of them are malformed."""
    hostile = rng.random() < 0.5
    bad = 0.01 if hostile else 0.0

    def pick(good: list, wrong: list) -> Any:
        return rng.choice(wrong) if hostile and rng.random() < 0.1 else rng.choice(good)
    debug = rng.random() < 0.3
    ev: Dict[Any, Any] = {"kind": "debug" if debug else "feature",
                          "creationDate": pick([0, 1764145000123, 2**63 - 1], [-1, 2**63, 1.5,
                                                                                 True]),
                          "key": pick(["flag", "é"], ["", Str("flag"), 3]),
                          "value": _value(rng, bad), "default": _value(rng, bad)}
    for name, good, wrong in (
            ("version", [3, -5, -2**63], [2**63, None, "3", True]),
            ("variation", [0, 1], [-1, None, 2**63]),
            ("reason", [{"kind": "FALLTHROUGH"}, {"kind": "RULE_MATCH", "ruleIndex": 0,
                                                  "ruleId": "r", "inExperiment": True},
                        {"kind": "X", "deep": _deep(30)}],
             [{"kind": 1}, {}, "FALLTHROUGH", {"kind": "X", "deep": _deep(31)},
              {"kind": Str("X")}]),
            ("prereqOf", ["p"], ["", None, Str("p")]),
            ("debugUntil", [1764145000123, 0], [-1, None, 2.0]),
            ("extra", [], [1])):
        if name == "debugUntil":
            p = 0.98 if debug else (0.05 if hostile else 0)
        else:
            p = (0.05 if hostile else 0) if name == "extra" else 0.4
        if rng.random() < p:
            ev[name] = pick(good, wrong) if good else rng.choice(wrong)
    if hostile:
        for name in ("value", "default", "creationDate", "key"):
            if rng.random() < 0.03:
                del ev[name]
        if rng.random() < 0.05:
            ev["value"] = _deep(rng.choice([31, 32, 33]))
    items = list(ev.items())
    rng.shuffle(items)
    out = dict(items)
    out["context"] = CONTEXT
    return out


def _python(event: Dict[str, Any]) -> Any:
    return S._encode_event_py(event, len(event), CBYTES)


@native
@pytest.mark.parametrize("seed", range(4))
def test_c_packing_equals_python(seed):
    rng = random.Random(seed)
    accepted = refused = 0
    for _ in range(3000):
        ev = _event(rng)
        if not 1 < len(ev) <= 15:
            continue
        want = _python(ev)
        got = S._pack_event(ev, CBYTES)
        assert got == want, ev
        if got is None:
            refused += 1
        else:
            accepted += 1
            # bytes the supervisor accepts, equal to the event
            assert msgpack.unpackb(got, raw=False) == ev or _has_nan(ev)
    assert accepted > 600 and refused > 300, (accepted, refused)


def _has_nan(v: Any) -> bool:
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, list):
        return any(_has_nan(x) for x in v)
    if isinstance(v, dict):
        return any(_has_nan(x) for x in v.values())
    return False


@native
def test_every_msgpack_size_class():
    vals = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32, -33,
            -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63, 0.1, -2.5e-300, "",
            "a" * 31, "a" * 32, "a" * 255, "a" * 256, "a" * 65535, "a" * 65536,
            list(range(15)), list(range(16)), list(range(65536)),
            {f"k{i}": i for i in range(15)}, {f"k{i}": i for i in range(16)},
            {f"k{i}": i for i in range(65536)}, "😀" * 100]
    for v in vals:
        ev = {"kind": "feature", "creationDate": 1, "key": "k", "value": v, "default": v,
              "context": CONTEXT}
        got = S._pack_event(ev, CBYTES)
        assert got == _python(ev) == msgpack.packb(ev, use_bin_type=True), repr(v)[:40]


@native
def test_sender_uses_it_and_packs_the_same_window():
    events = [_event(random.Random(i)) for i in range(400)]
    events = [e for e in events if 1 < len(e) <= 15]
    c_packs, c_bad = S.pack_window(1, 0, 0, 0, 0, {}, {}, events)
    py_packs, py_bad = _without_c(S.pack_window, 1, 0, 0, 0, 0, {}, {}, events)
    assert c_bad == py_bad > 0
    assert [p.data for p in c_packs] == [p.data for p in py_packs]
    for p in c_packs:
        datagram.decode(p.data)   # the supervisor's validation accepts every datagram


def _without_c(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with the sender's C packing functions switched off."""
    saved = S._pack_event, S._pack_event_run
    S._pack_event = S._pack_event_run = None
    try:
        return fn(*args)
    finally:
        S._pack_event, S._pack_event_run = saved


@native
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_runs_of_events_pack_as_one_at_a_time(seed):
    """_pack_event_run packs a datagram's worth of events per call; a window of events that
    share their contexts (some refused), mixed with events it does not take (other kinds,
    malformed, too large for a datagram), packs into the same datagrams, with the same
    items and the same count of unsendable events, as the per-event Python code."""
    rng = random.Random(seed)
    good = [dict(CONTEXT, key=f"u{i}") for i in range(5)]
    refused = [{"kind": "user", "key": "bad", "x": float("nan")}, {"kind": "user", "key": ""}]
    events: list = []
    for i in range(3000):
        r = rng.random()
        if r < 0.02:
            events.append({"kind": "custom", "creationDate": 1, "key": "c",
                           "context": rng.choice(good)})
        elif r < 0.025:
            events.append({"kind": "feature", "creationDate": 1, "key": "big",
                           "value": "x" * 70_000, "default": None, "version": 1,
                           "context": rng.choice(good)})
        else:
            ev = _event(rng)
            ev.pop("context", None)
            ev["context"] = rng.choice(refused if rng.random() < 0.03 else good)
            events.append(ev)
    events = [e for e in events if 1 < len(e) <= 15]
    contexts = {f"user:u{i}": [good[i], 1, 2, True] for i in range(3)}
    c_packs, c_bad = S.pack_window(1, 0, 0, 0, 0, {}, contexts, events)
    py_packs, py_bad = _without_c(S.pack_window, 1, 0, 0, 0, 0, {}, contexts, events)
    assert c_bad == py_bad > 0
    assert [p.data for p in c_packs] == [p.data for p in py_packs]
    assert [p.events for p in c_packs] == [p.events for p in py_packs]
    assert len(c_packs) > 5   # the runs stopped at a datagram's end, many times
    for p in c_packs:
        datagram.decode(p.data)


@native
def test_event_run_bad_calls_raise_type_error_or_stop():
    run = S._pack_event_run
    ok = {"kind": "feature", "creationDate": 1, "key": "k", "value": 1, "default": 1,
          "context": CONTEXT}
    cb = {id(CONTEXT): CBYTES}
    for args in ((), ([ok], 0, cb), ((ok,), 0, cb, 100), ([ok], "0", cb, 100),
                 ([ok], 0, [], 100), ([ok], 0, cb, 1.5)):
        with pytest.raises(TypeError):
            run(*args)
    blob, end = run([ok, ok, "x", ok], 0, cb, 10_000)   # stops before what it does not take
    assert end == 2 and blob == S._pack_event(ok, CBYTES) * 2
    assert run([ok, ok], 0, cb, len(blob) // 2) == (blob[:len(blob) // 2], 1)   # room
    assert run([ok], 0, {}, 10_000) == (b"", 0)              # context not packed yet
    assert run([ok], 0, {id(CONTEXT): b""}, 10_000) == (b"", 0)   # context refused
    assert run([ok], 5, cb, 10_000) == (b"", 5) and run([ok], -3, cb, 10_000)[1] == 1


@native
def test_bad_calls_raise_type_error_not_crash():
    ok = {"kind": "feature", "creationDate": 1, "key": "k", "value": 1, "default": 1,
          "context": CONTEXT}
    for args in ((), (ok,), (ok, "str"), ([], CBYTES), (ok, CBYTES, 1),
                 ({"kind": "custom", "creationDate": 1, "context": {}}, CBYTES),
                 ({"context": {}}, CBYTES), ({"kind": Str("feature"), "context": {}}, CBYTES),
                 (dict(ok, **{f"x{i}": i for i in range(20)}), CBYTES)):
        with pytest.raises(TypeError):
            S._pack_event(*args)
    # context not last: refused by the contract (the sender never passes it)
    with pytest.raises(TypeError):
        S._pack_event({"kind": "feature", "context": CONTEXT, "key": "k"}, CBYTES)
    # the sender never raises for the same hostile events
    hostile = [{"kind": Str("feature"), "creationDate": 1, "key": "k", "value": 1,
                "default": 1, "context": CONTEXT},
               {Str("kind"): "feature", "creationDate": 1, "key": "k", "value": 1,
                "default": 1, "context": CONTEXT}]
    for ev in hostile:
        assert S._encode_event(ev, {}) == _python(ev)
    assert sys.getrefcount(CBYTES) < 10


@pytest.mark.parametrize("seed", range(3))
def test_context_bytes_carried_to_the_next_pack_give_the_same_datagrams(seed):
    """pack_window reuses the bytes of the context dicts the previous pack of the recorder
    packed (``carry``): window after window the datagrams are those of a pack without it,
    refused contexts included, and ``carry`` then holds this window's sighted dicts only."""
    rng = random.Random(seed)
    pool = [dict(CONTEXT, key=f"u{i}") for i in range(40)]
    pool += [{"kind": "user", "key": "bad", "x": float("nan")}, {"kind": "user", "key": ""}]
    carry: Dict[int, Any] = {}
    for window in range(6):
        sighted = rng.sample(pool, 25)
        contexts = {f"user:{i}": [c, 1, 2, True] for i, c in enumerate(sighted)}
        events = []
        for _ in range(300):
            ev = _event(rng)
            ev.pop("context", None)
            # mostly the window's sighted dicts; a few others (carried from an earlier
            # window, or never packed)
            ev["context"] = rng.choice(sighted if rng.random() < 0.9 else pool)
            events.append(ev)
        events = [e for e in events if 1 < len(e) <= 15]
        got, got_bad = S.pack_window(1, window, 0, 0, 0, {}, contexts, events, carry)
        want, want_bad = S.pack_window(1, window, 0, 0, 0, {}, contexts, events)
        assert [p.data for p in got] == [p.data for p in want] and got_bad == want_bad
        assert [p.events for p in got] == [p.events for p in want]
        assert {i: d for i, (d, _) in carry.items()} == {id(c): c for c in sighted}
        if window == 0:
            assert carry   # (the next windows then start with bytes to reuse)
