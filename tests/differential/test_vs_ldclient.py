"""Differential property test: shmflags' reference evaluator against ldclient.

Hypothesis generates flag/segment data sets (every field and operator, prerequisites and
segment nesting with cycles, rollouts and experiments, broken references, out-of-range indexes
and, now and then, values of the wrong JSON type) plus single- and multi-kind contexts. Each is
loaded into ldclient (the oracle) and into ``shmflags.Client.from_data``; for every flag and
context we require the same value, variation index and reason from ``variation_detail``, and
the same ``all_flags_state(...).to_json_dict()`` for all eight option combinations, and the
same evaluation events (prerequisite events in order with ``prereqOf``, tracking and reason
flags, sampling ratio, ``excludeFromSummaries``, debug date, version) as ldclient's evaluator.

Budget: ``SHMFLAGS_DIFF_EXAMPLES`` examples per run (default 10000, about a minute here);
``SHMFLAGS_DIFF_SEED`` fixes the seed (default 0, so CI is repeatable). A longer hunt::

    SHMFLAGS_DIFF_EXAMPLES=200000 SHMFLAGS_DIFF_SEED=$RANDOM .venv/bin/pytest tests/differential

The (shrunk) disagreement is written to ``tests/corpus/found-<hash>.json``, with ldclient's
answers as the expectation, when the test module finishes; commit it as a corpus case.

Documented divergence (ld-protocol.md §2.1): ``client_side_only`` reads
``clientSideAvailability.usingEnvironmentId`` when present; ldclient reads only ``clientSide``.
The strategies keep the two consistent, as LaunchDarkly does.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import HealthCheck, given, seed, settings

from shmflags import Client, Context
from shmflags.evaluation.backend import BIT_EXCLUDE_FROM_SUMMARIES, BIT_EXPERIMENT, BIT_TRACK_EVENTS
from shmflags.errors import DataError
from shmflags.model import validate_payload
from differential import strategies as S
from differential.oracle import Oracle, OracleRejected

EXAMPLES = int(os.environ.get("SHMFLAGS_DIFF_EXAMPLES", "10000"))
SEED = int(os.environ.get("SHMFLAGS_DIFF_SEED", "0"))
CORPUS = Path(__file__).resolve().parent.parent / "corpus"
DEFAULT = "dflt"
OPTIONS = [dict(zip(("with_reasons", "client_side_only", "details_only_for_tracked_flags"), combo))
           for combo in itertools.product([False, True], repeat=3)]


_LAST_FAILURE: List[Any] = []


@pytest.fixture(scope="module")
def oracle():
    o = Oracle()
    yield o
    if _LAST_FAILURE:  # hypothesis replays the shrunk example last: save that one only
        flags, segments, contexts, note = _LAST_FAILURE[-1]
        path = _save(flags, segments, contexts, o, note)
        print(f"\ndisagreement saved as {path}")
        _LAST_FAILURE.clear()
    o.close()


def _save(flags: Dict[str, Any], segments: Dict[str, Any], contexts: List[Dict[str, Any]],
          oracle: Oracle, note: str) -> Path:
    oracle.load(flags, segments)
    evaluations = []
    for ctx in contexts:
        for key in list(flags) + ["missing"]:
            evaluations.append({"flag": key, "context": ctx, "default": DEFAULT,
                                "expect": oracle.detail(key, ctx, DEFAULT)})
    case = {"description": f"found by tests/differential: {note}", "flags": flags,
            "segments": segments, "evaluations": evaluations}
    text = json.dumps(case, indent=1, sort_keys=True)
    path = CORPUS / f"found-{hashlib.sha1(text.encode()).hexdigest()[:12]}.json"
    path.write_text(text + "\n")
    return path


def _strict(value: Any) -> str:
    """JSON text with sorted keys: tells ``true`` from ``1`` and ``1.0`` from ``1`` at any depth."""
    return json.dumps(value, sort_keys=True, default=repr)


def our_events(result: tuple, key: str) -> Optional[List[tuple]]:
    """Our EvalTuple in the shape of :meth:`Oracle.events`."""
    value, index, reason, info, prereqs = result
    if info is None:
        return None
    if reason.get("errorKind") == "EXCEPTION":
        return []

    def shape(prereq_of, k, v, i, r, inf):
        version, bits, debug, sampling = inf
        return (prereq_of, k, i, v, r if bits & BIT_EXPERIMENT else None,
                bool(bits & (BIT_TRACK_EVENTS | BIT_EXPERIMENT)), sampling,
                bool(bits & BIT_EXCLUDE_FROM_SUMMARIES), debug, version)

    out = [shape(*p) for p in prereqs]
    out.append(shape(None, key, None, None, reason, info))
    return out


def check_case(oracle: Oracle, flags: Dict[str, Any], segments: Dict[str, Any],
               contexts: List[Dict[str, Any]], save: bool = True) -> None:
    """Assert shmflags and ldclient agree on one data set and its contexts."""
    try:
        validate_payload(flags, segments)
        ours_refuse = False
    except DataError:
        ours_refuse = True
    try:
        oracle.load(flags, segments)
        theirs_refuse = False
    except OracleRejected:
        theirs_refuse = True
    assert ours_refuse == theirs_refuse, "validation differs from ldclient's"
    if theirs_refuse:
        return
    client = Client.from_data({"flags": flags, "segments": segments}, evaluator="model")
    for ctx in contexts:
        if Context.from_dict(ctx).valid:
            for key in list(flags) + ["missing"]:
                expected_events = oracle.events(key, ctx)
                got_events = our_events(client.backend.evaluate(key, Context.from_dict(ctx)), key)
                if _strict(got_events) != _strict(expected_events):
                    if save:
                        _LAST_FAILURE.append((flags, segments, contexts, f"{key}: events differ"))
                    assert _strict(got_events) == _strict(expected_events), f"events of {key!r} context {ctx!r}"
        for key in list(flags) + ["missing"]:
            expected = oracle.detail(key, ctx, DEFAULT)
            d = client.variation_detail(key, ctx, DEFAULT)
            got = {"value": d.value, "variationIndex": d.variation_index, "reason": d.reason}
            if _strict(got) != _strict(expected):
                if save:
                    _LAST_FAILURE.append((flags, segments, contexts, f"{key}: {got} != {expected}"))
                assert _strict(got) == _strict(expected), f"flag {key!r} context {ctx!r}"
        for opts in OPTIONS:
            expected_all = oracle.all_flags(ctx, **opts)
            got_all = client.all_flags_state(ctx, **opts).to_json_dict()
            if _strict(got_all) != _strict(expected_all):
                if save:
                    _LAST_FAILURE.append((flags, segments, contexts, f"all_flags_state {opts}"))
                assert _strict(got_all) == _strict(expected_all), f"all_flags_state {opts} context {ctx!r}"


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=S.datasets(tombstones=True), contexts=S.context_lists(2))
def test_reference_evaluator_matches_ldclient(oracle, data, contexts):
    flags, segments = data
    check_case(oracle, flags, segments, contexts)


class _MemoryBigSegments:
    """The same memberships for both sides: ldclient's store (by context hash) and our provider."""

    def __init__(self) -> None:
        self.by_key: Dict[str, Dict[str, bool]] = {}

    # ldclient BigSegmentStore
    def get_metadata(self) -> Any:
        import time

        from ldclient.interfaces import BigSegmentStoreMetadata
        return BigSegmentStoreMetadata(int(time.time() * 1000))

    def get_membership(self, context_hash: str) -> Any:
        import base64
        for key, membership in self.by_key.items():
            digest = hashlib.sha256(key.encode("utf-8")).digest()
            if base64.b64encode(digest).decode("ascii") == context_hash:
                return membership
        return None

    def stop(self) -> None:
        pass


class _Provider:
    def __init__(self, store: _MemoryBigSegments) -> None:
        self.store = store

    def get_membership(self, key: str) -> Any:
        return self.store.by_key.get(key, {}), "HEALTHY"


@pytest.fixture(scope="module")
def big_oracle():
    store = _MemoryBigSegments()
    o = Oracle(big_segments=store)
    yield o, store
    o.close()


@seed(SEED)
@settings(max_examples=max(1, EXAMPLES // 10), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=S.datasets(malformed=False, big=True), contexts=S.context_lists(2),
       memberships=S.big_memberships())
def test_big_segments_match_ldclient(big_oracle, data, contexts, memberships):
    """Same, with a healthy Big Segment store holding generated memberships (a tenth of the budget)."""
    oracle, store = big_oracle
    flags, segments = data
    store.by_key = memberships
    try:
        oracle.load(flags, segments)
    except OracleRejected:
        return
    client = Client.from_data({"flags": flags, "segments": segments}, big_segments=_Provider(store),
                              evaluator="model")
    for ctx in contexts:
        for key in flags:
            expected = oracle.detail(key, ctx, DEFAULT)
            d = client.variation_detail(key, ctx, DEFAULT)
            assert {"value": d.value, "variationIndex": d.variation_index, "reason": d.reason} == expected, \
                f"flag {key!r} context {ctx!r} memberships {memberships!r}"
