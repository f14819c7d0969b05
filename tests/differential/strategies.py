"""Hypothesis strategies for LaunchDarkly flag data and contexts, for differential tests.

Test-only; importable by any test (C-vs-Python runs reuse :func:`datasets` and
:func:`contexts`). Values come from small shared pools so that clause values, context
attributes, keys, segment references and prerequisite keys collide often: the interesting
cases are the ones where something nearly matches. Every operator, reason and error path of
ld-protocol.md §3 is reachable, including invalid attribute references, cycles, out-of-range
variation indexes, empty rollouts and (with ``malformed=True``) values of the wrong JSON type.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Dict, List, Tuple

from hypothesis import strategies as st

__all__ = ["big_memberships", "FLAG_KEYS", "SEGMENT_KEYS", "json_scalars", "json_values", "clauses", "flags",
           "segments", "contexts", "datasets", "single_contexts"]

FLAG_KEYS = ["f0", "f1", "f2", "f3"]
SEGMENT_KEYS = ["s0", "s1", "s2"]
KINDS = ["user", "org", "device"]
CONTEXT_KEYS = ["a", "b", "ü", "33333", "userKeyA", "x:y%z"]
ATTR_NAMES = ["name", "email", "n", "tags", "obj", "date", "ver", "flag", "/slash", "a~b"]
# Attribute strings as they appear in clauses / bucketBy: names, paths, and broken refs.
CLAUSE_ATTRS = ATTR_NAMES + ["key", "kind", "anonymous", "/obj/x", "/obj/~1y", "/obj/~0z",
                             "/kind", "/key", "missing", "/obj", "/tags"]
BROKEN_ATTRS = ["", "/", "//obj", "/obj/", "/a~2", "/a~"]
OPERATORS = ["in", "startsWith", "endsWith", "contains", "matches", "lessThan",
             "lessThanOrEqual", "greaterThan", "greaterThanOrEqual", "before", "after",
             "semVerEqual", "semVerLessThan", "semVerGreaterThan", "segmentMatch", "unknownOp"]

STRINGS = ["a", "A", "ab", "ba", "", "ü", "Ü", "1", "33333", "userKeyA", "org", "user",
           "device", "x@example.com", "example.com",
           # dates
           "2017-12-06T00:00:00Z", "2017-12-06T07:00:00.000+07:00", "2017-12-06T00:00:00.5z",
           "2017-12-06", "2017-12-06T00:00:00", "1512518400000", "2017-12-06 00:00:00+00:00",
           # versions
           "2", "2.0", "2.0.0", "2-rc", "2.0.0-rc.1", "2.0.0-rc.2", "2.0.0-rc.10", "2.0.0+b",
           "2.0.1", "v2.0.0", "02.0.0", "2.0.0.0", "1.9.9-alpha.beta",
           # regexes
           ".*", "^a", "b$", "[", "(?=a)a", "(a|b)+", "\\d+"]
INTS = [0, 1, -1, 2, 33333, 1512518400000, 2 ** 53, 2 ** 53 + 1, -(2 ** 63), 10 ** 20]
HUGE = 10 ** 400  # beyond float: ldclient refuses it as a date clause value, raises comparing it
FLOATS = [0.0, -0.0, 1.0, 0.5, 33.0, 2.5, 1512518400000.0, 1e300, -1e-9]


_SCALARS = st.one_of(st.sampled_from(STRINGS), st.sampled_from(INTS), st.sampled_from(FLOATS),
                    st.booleans(), st.none())
_OBJ_KEYS = st.sampled_from(["x", "y", "/y", "z", "~z"])


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(_SCALARS, _SCALARS, st.lists(inner, max_size=3),
                     st.dictionaries(_OBJ_KEYS, inner, max_size=2))


_VALUES = {0: _SCALARS}
_VALUES[1] = _nest(_VALUES[0])
_VALUES[2] = _nest(_VALUES[1])


def json_scalars() -> st.SearchStrategy[Any]:
    """Scalars from the shared pools: strings, ints, floats, bools, null."""
    return _SCALARS


def json_values(depth: int = 2) -> st.SearchStrategy[Any]:
    """Scalars, arrays and objects (small, nested up to ``depth`` ≤ 2). Built once, shared."""
    return _VALUES[max(0, min(depth, 2))]


_CACHE: Dict[Any, st.SearchStrategy[Any]] = {}


def _pick(values: List[Any]) -> st.SearchStrategy[Any]:
    """``sampled_from(values)``, built once per distinct list (new strategies are costly)."""
    key = ("pick", repr(values))
    strategy = _CACHE.get(key)
    if strategy is None:
        strategy = _CACHE[key] = st.sampled_from(list(values))
    return strategy


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    key = ("ints", lo, hi)
    strategy = _CACHE.get(key)
    if strategy is None:
        strategy = _CACHE[key] = st.integers(lo, hi)
    return strategy


_BOOL = st.booleans()
# Variation indexes: mostly valid for the usual three variations, sometimes out of range.
_INDEXES = [0, 1, 2] * 10 + [-1, 3, 4]


def _n(draw: Any, hi: int) -> int:
    return draw(_ints(0, hi))


def _rare(draw: Any, one_in: int) -> bool:
    """True about once in ``one_in`` draws (integers() would favour the boundary)."""
    return draw(_pick([False] * (one_in - 1) + [True]))


def _some(draw: Any, values: List[Any], hi: int, unique: bool = False) -> List[Any]:
    out = [draw(_pick(values)) for _ in range(_n(draw, hi))]
    if unique:
        out = list(dict.fromkeys(out))
    return out


def _put(d: Dict[str, Any], key: str, value: Any, absent: Any = None) -> None:
    if value is not absent:
        d[key] = value


def _values(draw: Any, depth: int, hi: int) -> List[Any]:
    return [draw(json_values(depth)) for _ in range(_n(draw, hi))]


def _clause(draw: Any, segment_keys: List[str]) -> Dict[str, Any]:
    op = draw(_pick(OPERATORS))
    attrs = BROKEN_ATTRS if _rare(draw, 25) else CLAUSE_ATTRS
    clause: Dict[str, Any] = {"attribute": draw(_pick(attrs)), "op": op}
    if op == "segmentMatch":
        clause["values"] = _some(draw, segment_keys + ["nope"], 2)
    else:
        clause["values"] = _values(draw, 1, 3)
    _put(clause, "contextKind", draw(_pick([None, None, "user", "org", "", "device"])))
    _put(clause, "negate", draw(_pick([None, False, True])))
    return clause


@st.composite
def clauses(draw: Any, segment_keys: List[str] = SEGMENT_KEYS) -> Dict[str, Any]:
    """One clause: any operator, attribute (valid or not), context kind, values, negate."""
    return _clause(draw, segment_keys)


def _rollout(draw: Any) -> Dict[str, Any]:
    variations = []
    for _ in range(draw(_pick([2, 1, 2, 3, 2, 1, 3, 0]))):
        wv: Dict[str, Any] = {"variation": draw(_pick(_INDEXES)),
                              "weight": draw(_pick([0, 100000, 50000, 33333, 1, 99999, 60000, 40000]))}
        _put(wv, "untracked", draw(_pick([None, False, True])))
        variations.append(wv)
    rollout: Dict[str, Any] = {"variations": variations}
    _put(rollout, "kind", draw(_pick([None, "rollout", "experiment", "experiment"])))
    _put(rollout, "contextKind", draw(_pick([None, "user", "org", "device", ""])))
    _put(rollout, "bucketBy", draw(_pick(
        [None, None, "key", "name", "n", "/obj/x", "email", "/", "//", "33333", ""])))
    _put(rollout, "seed", draw(_pick([None, None, 61, 0, -5])))
    return rollout


@st.composite
def rollouts(draw: Any) -> Dict[str, Any]:
    """A rollout or experiment, including empty and odd weights."""
    return _rollout(draw)


def _variation_or_rollout(draw: Any, target: Dict[str, Any]) -> None:
    choice = draw(_pick(["variation", "rollout", "variation", "rollout", "variation",
                         "rollout", "variation", "rollout", "variation", "none"]))
    if choice == "variation":
        target["variation"] = draw(_pick(_INDEXES))
    elif choice == "rollout":
        target["rollout"] = _rollout(draw)


def _flag_metas() -> List[Dict[str, Any]]:
    out = []
    for track, fallthrough, debug, client, exclude, sampling in itertools.product(
            [None, False, True], [None, False, True], [None, None, 1000, 4102444800000],
            ["absent", False, True, "both-false", "both-true"], [None, False, True], [None, 1, 2, 0]):
        meta: Dict[str, Any] = {}
        _put(meta, "trackEvents", track)
        _put(meta, "trackEventsFallthrough", fallthrough)
        _put(meta, "debugEventsUntilDate", debug)
        if client in (False, True):
            meta["clientSide"] = client
        elif client != "absent":
            value = client == "both-true"
            meta["clientSide"] = value
            meta["clientSideAvailability"] = {"usingEnvironmentId": value, "usingMobileKey": not value}
        _put(meta, "excludeFromSummaries", exclude)
        _put(meta, "samplingRatio", sampling)
        out.append(meta)
    return out


_FLAG_META = st.sampled_from(_flag_metas())


def _flag(draw: Any, key: str, flag_keys: List[str], segment_keys: List[str]) -> Dict[str, Any]:
    flag: Dict[str, Any] = {"key": key, "version": draw(_ints(1, 5)),
                            "on": draw(_pick([True, True, True, False, None]))}
    flag["variations"] = [draw(json_values(1)) for _ in range(draw(_pick([3] * 9 + [2, 4, 1, 0])))]
    _put(flag, "offVariation", draw(_pick(_INDEXES + [None, None])))
    fallthrough: Dict[str, Any] = {}
    _variation_or_rollout(draw, fallthrough)
    flag["fallthrough"] = fallthrough
    flag["prerequisites"] = [{"key": draw(_pick(flag_keys + ["missing"])),
                              "variation": draw(_pick(_INDEXES))}
                             for _ in range(draw(_pick([0, 0, 0, 1, 1, 2])))]
    flag["targets"] = [{"values": _some(draw, CONTEXT_KEYS, 3), "variation": draw(_pick(_INDEXES))}
                       for _ in range(_n(draw, 2))]
    context_targets = []
    for _ in range(_n(draw, 3)):
        t: Dict[str, Any] = {"values": _some(draw, CONTEXT_KEYS, 3), "variation": draw(_pick(_INDEXES))}
        _put(t, "contextKind", draw(_pick([None] + KINDS)))
        context_targets.append(t)
    flag["contextTargets"] = context_targets
    rules = []
    for i in range(_n(draw, 3)):
        rule: Dict[str, Any] = {"clauses": [_clause(draw, segment_keys) for _ in range(_n(draw, 3))]}
        _put(rule, "id", draw(_pick([f"r{i}", f"r{i}", None])))
        _put(rule, "trackEvents", draw(_pick([None, False, True])))
        _variation_or_rollout(draw, rule)
        rules.append(rule)
    flag["rules"] = rules
    flag["salt"] = draw(_pick(["", "salt", "saltyA", "ü"]))
    # The event-related fields are drawn as one combination: one draw instead of eight keeps
    # the 10,000-example budget affordable.
    flag.update(copy.deepcopy(draw(_FLAG_META)))
    return flag


@st.composite
def flags(draw: Any, key: str, flag_keys: List[str] = FLAG_KEYS,
          segment_keys: List[str] = SEGMENT_KEYS) -> Dict[str, Any]:
    """A flag with every field LaunchDarkly sends, prerequisites among ``flag_keys``."""
    return _flag(draw, key, flag_keys, segment_keys)


def _seg_targets(draw: Any) -> List[Dict[str, Any]]:
    out = []
    for _ in range(_n(draw, 2)):
        t: Dict[str, Any] = {"values": _some(draw, CONTEXT_KEYS, 2)}
        _put(t, "contextKind", draw(_pick([None] + KINDS)))
        out.append(t)
    return out


def _segment(draw: Any, key: str, segment_keys: List[str]) -> Dict[str, Any]:
    seg: Dict[str, Any] = {"key": key, "version": draw(_ints(1, 5)),
                           "included": _some(draw, CONTEXT_KEYS, 2),
                           "excluded": _some(draw, CONTEXT_KEYS, 2),
                           "includedContexts": _seg_targets(draw),
                           "excludedContexts": _seg_targets(draw),
                           "salt": draw(_pick(["", "salt"]))}
    rules = []
    for _ in range(_n(draw, 2)):
        rule: Dict[str, Any] = {"clauses": [_clause(draw, segment_keys) for _ in range(_n(draw, 2))]}
        _put(rule, "weight", draw(_pick([None, None, 0, 50000, 100000, 99999])))
        _put(rule, "bucketBy", draw(_pick([None, "key", "name", "/obj/x", "//"])))
        _put(rule, "rolloutContextKind", draw(_pick([None, "user", "org", "device"])))
        rules.append(rule)
    seg["rules"] = rules
    if _rare(draw, 6):
        seg["unbounded"] = True
        _put(seg, "generation", draw(_pick([None, 1, 1, 1])))
        _put(seg, "unboundedContextKind", draw(_pick([None, "user", "org"])))
    return seg


@st.composite
def segments(draw: Any, key: str, segment_keys: List[str] = SEGMENT_KEYS) -> Dict[str, Any]:
    """A segment: include/exclude lists per kind, weighted rules, nesting, Big Segments."""
    return _segment(draw, key, segment_keys)


# Wrong JSON types ldclient refuses (used with ``malformed=True``).
_FLAG_BREAKS: List[Tuple[Tuple[str, ...], Any]] = [
    (("version",), "1"), (("on",), "yes"), (("variations",), {"a": 1}), (("offVariation",), 1.0),
    (("fallthrough",), []), (("fallthrough", "variation"), "0"), (("prerequisites",), [1]),
    (("targets",), [{"values": ["a"]}]), (("salt",), 5), (("trackEvents",), 1),
    (("debugEventsUntilDate",), "soon"), (("samplingRatio",), 1.5), (("key",), None),
    (("rules",), [{"clauses": [{"attribute": "a", "op": "in"}]}]),
    (("rules",), [{"clauses": [{"attribute": 5, "op": "in", "values": []}]}]),
    (("rules",), [{"clauses": [{"op": "in", "values": []}], "variation": 0}]),
    (("contextTargets",), [{"values": [1], "variation": 0}]),
    (("fallthrough", "rollout"), {"variations": [{"variation": 0}]}),
    (("migration",), {"checkRatio": "x"}), (("deleted",), "no"), (("prerequisites",), "NULL"),
    (("key",), "not-its-key"), (("prerequisites",), [{"key": ["f0"], "variation": 0}]),
    (("rules",), [{"clauses": [{"attribute": "n", "op": "after", "values": [HUGE]}], "variation": 0}]),
]
_SEGMENT_BREAKS: List[Tuple[Tuple[str, ...], Any]] = [
    (("included",), "a"), (("excluded",), [1]), (("rules",), [{"clauses": "x"}]),
    (("rules",), [{"clauses": [], "weight": "1"}]), (("generation",), 1.5),
    (("includedContexts",), [{"contextKind": "org"}]), (("version",), None), (("salt",), []),
]


def _break(draw: Any, item: Dict[str, Any], breaks: List[Tuple[Tuple[str, ...], Any]]) -> None:
    path, value = draw(st.sampled_from(breaks))
    target = item
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    if value is None:
        target.pop(path[-1], None)
    elif value == "NULL":
        target[path[-1]] = None
    else:
        target[path[-1]] = value


@st.composite
def datasets(draw: Any, malformed: bool = True, big: bool = False,
             tombstones: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(flags, segments)`` keyed like an LD payload; occasionally one item has a wrong type.

    With ``big=True`` most segments are Big Segments and every flag starts with a rule that
    matches one of them (to exercise membership and ``bigSegmentsStatus``). With
    ``tombstones=True`` an item is now and then a deleted-item tombstone
    (``{"key", "version", "deleted": true}``), which must behave as missing.
    """
    flag_keys = _some(draw, FLAG_KEYS, 4, unique=True) or ["f0"]
    seg_keys = _some(draw, SEGMENT_KEYS, 3, unique=True)
    flag_map = {k: _flag(draw, k, FLAG_KEYS, SEGMENT_KEYS) for k in flag_keys}
    seg_map = {k: _segment(draw, k, SEGMENT_KEYS) for k in seg_keys}
    if big:
        for seg in seg_map.values():
            if not _rare(draw, 4):
                seg["unbounded"] = True
                seg["generation"] = draw(_pick([1, 1, 1, None]))
                _put(seg, "unboundedContextKind", draw(_pick([None, None, "user", "org"])))
        for flag in flag_map.values():
            clause = {"attribute": "", "op": "segmentMatch", "negate": _rare(draw, 5),
                      "values": _some(draw, SEGMENT_KEYS, 2) or ["s0"]}
            flag["rules"].insert(0, {"id": "big", "clauses": [clause], "variation": draw(_pick(_INDEXES))})
    if tombstones:
        for items in (flag_map, seg_map):
            for key in list(items):
                if _rare(draw, 12):
                    items[key] = {"key": key, "version": draw(_ints(1, 5)), "deleted": True}
    if malformed and tombstones and flag_map and _rare(draw, 40):
        # what ldclient's store checks even on tombstones: prerequisites shape and the key
        key = draw(_pick(sorted(flag_map)))
        flag_map[key] = dict({"version": 1, "deleted": True},
                             **draw(_pick([{}, {"prerequisites": [1]}, {"prerequisites": None},
                                           {"prerequisites": {}}, {"prerequisites": [{"key": 5}]}])))
        if draw(_BOOL):
            flag_map[key]["key"] = key
    if malformed and _rare(draw, 20):
        if seg_map and draw(_BOOL):
            _break(draw, seg_map[draw(_pick(sorted(seg_map)))], _SEGMENT_BREAKS)
        else:
            _break(draw, flag_map[draw(_pick(sorted(flag_map)))], _FLAG_BREAKS)
    return flag_map, seg_map


def _single(draw: Any) -> Dict[str, Any]:
    ctx: Dict[str, Any] = {"key": draw(_pick(CONTEXT_KEYS))}
    for name in _some(draw, ATTR_NAMES, 4, unique=True):
        if name == "name":
            value = draw(_pick([None] + STRINGS))
        elif name == "obj":
            value = {draw(_pick(["x", "/y", "~z", "y"])): draw(json_values(1))
                     for _ in range(_n(draw, 3))}
        elif _rare(draw, 30):
            value = HUGE
        else:
            value = draw(json_values(2))
        if value is not None:
            ctx[name] = value
    if _rare(draw, 4):
        ctx["anonymous"] = draw(_BOOL)
    return ctx


@st.composite
def single_contexts(draw: Any, kind: str) -> Dict[str, Any]:
    """One individual context (without ``kind``) with attributes from the shared pools."""
    return _single(draw)


def _context(draw: Any) -> Dict[str, Any]:
    n = draw(_pick([1, 1, 1, 2, 3]))
    kinds = list(dict.fromkeys(draw(_pick(KINDS)) for _ in range(n)))
    if len(kinds) == 1:
        ctx = _single(draw)
        ctx["kind"] = kinds[0]
    else:
        ctx = {"kind": "multi"}
        for kind in kinds:
            ctx[kind] = _single(draw)
    if _rare(draw, 40):
        ctx["kind"] = draw(_pick(["", "kind", "bad kind!"]))
    return ctx


@st.composite
def contexts(draw: Any) -> Dict[str, Any]:
    """LD context JSON: single-kind (any kind) or multi-kind; occasionally invalid."""
    return _context(draw)


@st.composite
def context_lists(draw: Any, n: int = 2) -> List[Dict[str, Any]]:
    """``n`` contexts."""
    return [_context(draw) for _ in range(n)]


@st.composite
def big_memberships(draw: Any) -> Dict[str, Dict[str, bool]]:
    """Big Segment membership per context key: ``{key: {"<segment>.g1": bool}}``."""
    out: Dict[str, Dict[str, bool]] = {}
    for key in _some(draw, CONTEXT_KEYS, 4, unique=True):
        out[key] = {f"{seg}.g1": draw(_BOOL) for seg in _some(draw, SEGMENT_KEYS, 3, unique=True)}
    return out
