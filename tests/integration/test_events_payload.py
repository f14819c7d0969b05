"""Payload equality: one scripted sequence through ldclient and through shmflags gives the same events.

ldclient (the oracle) evaluates against an in-memory store and posts to one fake events
service; shmflags evaluates with ``ModelBackend`` in two forked worker processes that
record with :class:`EventRecorder`, and the supervisor's :class:`EventService` posts to a
second fake. After normalising timestamps, payload IDs, summary splitting and ordering, the
two sets of events must be identical.
"""
from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from typing import Any, Dict, List, Tuple

import ldclient
import pytest
from ldclient.config import Config as LDConfig
from ldclient.feature_store import InMemoryFeatureStore
from ldclient.versioned_data_kind import FEATURES, SEGMENTS

from shmflags.config import Config
from shmflags.context import Context
from shmflags.evaluation.backend import ModelBackend
from shmflags.events.recorder import EventRecorder
from shmflags.events.service import EventService
from shmflags.model import parse_flag
from tests.fakes.fake_ld import FakeLD

SDK_KEY = "sdk-events-test-0001"
HOUR_MS = 3600 * 1000


def _flag(key: str, **extra: Any) -> Dict[str, Any]:
    flag = {"key": key, "version": 7, "on": True, "variations": [False, True],
            "offVariation": 0, "fallthrough": {"variation": 1}, "salt": key,
            "targets": [], "contextTargets": [], "rules": [], "prerequisites": []}
    flag.update(extra)
    return flag


def flags() -> Dict[str, Dict[str, Any]]:
    rule = {"id": "r-gold", "variation": 0, "trackEvents": True,
            "clauses": [{"contextKind": "user", "attribute": "tier", "op": "in",
                         "values": ["gold"], "negate": False}]}
    rollout = {"kind": "experiment", "seed": 61,
               "variations": [{"variation": 0, "weight": 50000},
                              {"variation": 1, "weight": 50000}]}
    out = [
        _flag("untracked"),
        _flag("tracked", trackEvents=True),
        _flag("exp-rule", rules=[rule]),
        _flag("exp-fallthrough", trackEventsFallthrough=True),
        _flag("exp-rollout", fallthrough={"rollout": rollout}),
        _flag("deep", trackEvents=True, version=3),
        _flag("prereq-tracked", trackEvents=True,
              prerequisites=[{"key": "deep", "variation": 1}]),
        _flag("prereq-untracked", version=11),
        _flag("parent", prerequisites=[{"key": "prereq-tracked", "variation": 1},
                                       {"key": "prereq-untracked", "variation": 1}]),
        _flag("debugged", debugEventsUntilDate=int(time.time() * 1000) + HOUR_MS),
        _flag("debug-expired", debugEventsUntilDate=int(time.time() * 1000) - HOUR_MS),
        _flag("excluded", trackEvents=True, excludeFromSummaries=True),
        _flag("off-no-offvar", on=False, offVariation=None),
        _flag("never-sampled", trackEvents=True, samplingRatio=0),
        _flag("strings", variations=["a", "b", {"obj": [1, 2]}], fallthrough={"variation": 2},
              trackEvents=True),
    ]
    return {f["key"]: f for f in out}


def contexts() -> List[Dict[str, Any]]:
    return [
        {"kind": "user", "key": "u-1", "name": "Sandy", "email": "s@example.com",
         "tier": "gold", "address": {"street": "1 Main", "city": "Berlin"}},
        {"kind": "user", "key": "u-2", "anonymous": True, "name": "Anon", "tier": "silver"},
        {"kind": "multi",
         "user": {"key": "u-3", "email": "m@example.com", "tier": "gold",
                  "_meta": {"privateAttributes": ["/tier"]}},
         "org": {"key": "acme:eu", "name": "Acme", "address": {"country": "DE", "city": "B"}}},
        {"kind": "org", "key": "o-4", "name": "Org four", "_meta": {"privateAttributes": ["name"]}},
        {"kind": "user", "key": "u-5", "email": "five@example.com"},
        {"kind": "device", "key": "d-6", "anonymous": True, "model": "x"},
    ]


FLAG_CALLS: List[Tuple[str, Any, bool]] = [
    ("untracked", False, False), ("untracked", False, True), ("tracked", False, False),
    ("tracked", False, True), ("exp-rule", True, False), ("exp-fallthrough", False, False),
    ("exp-rollout", False, False), ("parent", False, False), ("parent", False, True),
    ("debugged", False, False), ("debug-expired", False, False), ("excluded", True, False),
    ("off-no-offvar", "dflt", False), ("missing-flag", "dflt", False),
    ("missing-flag", 3, True), ("never-sampled", False, False), ("strings", "z", True),
    ("untracked", 1, False),
]


def script() -> List[List[Tuple]]:
    """Per-context sequences of operations; contexts are split between workers, so every
    ordering that matters for index events stays within one process."""
    per_ctx = []
    for i, ctx in enumerate(contexts()):
        ops: List[Tuple] = []
        if i % 3 == 0:
            ops.append(("identify", ctx))
        for n, (key, default, detail) in enumerate(FLAG_CALLS):
            if (n + i) % 4 != 3:
                ops.append(("eval", key, ctx, default, detail))
        ops.append(("track", "purchase", ctx, {"sku": "A1", "n": i} if i % 2 else None,
                    12.5 if i % 2 == 0 else None))
        ops.append(("eval", "untracked", ctx, False, False))
        if i % 3 == 1:
            ops.append(("identify", ctx))
        per_ctx.append(ops)
    return per_ctx


# -- normalisation -----------------------------------------------------------------------


def normalise(payloads: List[List[Dict[str, Any]]]) -> Tuple[List[str], Dict[str, Any]]:
    """Events without timestamps (sorted JSON strings) and one merged summary."""
    events: List[str] = []
    features: Dict[str, Dict[str, Any]] = {}
    for payload in payloads:
        for event in payload:
            event = copy.deepcopy(event)
            if event["kind"] == "summary":
                for key, flag in event["features"].items():
                    merged = features.setdefault(key, {"default": flag["default"],
                                                       "contextKinds": set(), "counters": {}})
                    merged["contextKinds"].update(flag["contextKinds"])
                    for c in flag["counters"]:
                        ck = json.dumps({k: v for k, v in c.items() if k != "count"},
                                        sort_keys=True)
                        merged["counters"][ck] = merged["counters"].get(ck, 0) + c["count"]
                continue
            event.pop("creationDate", None)
            events.append(json.dumps(event, sort_keys=True))
    for flag in features.values():
        flag["contextKinds"] = sorted(flag["contextKinds"])
    return sorted(events), features


def bodies(fake: FakeLD) -> List[List[Dict[str, Any]]]:
    return [p.payload for p in fake.events]


# -- the two runs ------------------------------------------------------------------------


def run_ldclient(flag_data: Dict[str, Any], sink: FakeLD, private: List[str]) -> None:
    store = InMemoryFeatureStore()
    store.init({FEATURES: copy.deepcopy(flag_data), SEGMENTS: {}})
    client = ldclient.LDClient(LDConfig(
        SDK_KEY, events_uri=sink.url, use_ldd=True, feature_store=store, send_events=True,
        flush_interval=60, diagnostic_opt_out=True, private_attributes=private))
    try:
        for ops in script():
            for op in ops:
                _apply_ld(client, op)
        client.flush()
    finally:
        client.close()


def _apply_ld(client: Any, op: Tuple) -> None:
    if op[0] == "eval":
        _, key, ctx, default, detail = op
        c = ldclient.Context.from_dict(ctx)
        (client.variation_detail if detail else client.variation)(key, c, default)
    elif op[0] == "track":
        _, key, ctx, data, metric = op
        client.track(key, ldclient.Context.from_dict(ctx), data, metric)
    else:
        client.identify(ldclient.Context.from_dict(op[1]))


def _worker(flag_data: Dict[str, Any], config: Config, ops_lists: List[List[Tuple]]) -> None:
    backend = ModelBackend.from_dicts({k: parse_flag(v) for k, v in flag_data.items()}, {})
    recorder = EventRecorder(config)
    for ops in ops_lists:
        for op in ops:
            if op[0] == "eval":
                _, key, ctx, default, detail = op
                c = Context.from_dict(ctx)
                recorder.record_evaluation(key, c, backend.evaluate(key, c), default, detail)
            elif op[0] == "track":
                _, key, ctx, data, metric = op
                recorder.record_custom(key, Context.from_dict(ctx), data, metric)
            else:
                recorder.record_identify(Context.from_dict(op[1]))
    recorder.close()


def run_shmflags(flag_data: Dict[str, Any], sink: FakeLD, private: List[str], tmp_path: Any,
                 workers: int = 2) -> EventService:
    config = Config(sdk_key=SDK_KEY, events_uri=sink.url, socket=str(tmp_path / "ev.sock"),
                    flush_interval=60, diagnostic_opt_out=True, private_attributes=private)
    service = EventService(config)
    service.start()
    try:
        per_ctx = script()
        pids = []
        for w in range(workers):
            pid = os.fork()
            if pid == 0:  # child: record its share, flush at close, leave without cleanup
                code = 0
                try:
                    _worker(flag_data, config, per_ctx[w::workers])
                except BaseException:  # noqa: BLE001 - report through the exit status
                    import traceback
                    traceback.print_exc()
                    code = 1
                os._exit(code)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert service.flush()
    finally:
        service.stop(flush=True)
    return service


@pytest.mark.parametrize("private", [[], ["email", "/address/city"]])
def test_payloads_equal_ldclient(tmp_path, private):
    flag_data = flags()
    with FakeLD(heartbeat_interval=None) as ld_sink, FakeLD(heartbeat_interval=None) as sf_sink:
        run_ldclient(flag_data, ld_sink, private)
        service = run_shmflags(flag_data, sf_sink, private, tmp_path)
        ld_events, ld_summary = normalise(bodies(ld_sink))
        sf_events, sf_summary = normalise(bodies(sf_sink))
    assert ld_events, "the oracle produced no events"
    kinds = {json.loads(e)["kind"] for e in ld_events}
    assert kinds == {"index", "feature", "debug", "custom", "identify"}
    assert sf_summary == ld_summary
    assert sf_events == ld_events
    counters = service.counters()
    assert counters["invalid"] == 0 and counters["dropped"] == 0
    assert counters["received"] >= 2


def test_headers_match_ldclient_shape(tmp_path):
    flag_data = flags()
    with FakeLD(heartbeat_interval=None) as sf_sink:
        run_shmflags(flag_data, sf_sink, [], tmp_path, workers=1)
        assert sf_sink.events
        headers = {k.lower(): v for k, v in sf_sink.events[0].headers.items()}
    assert headers["authorization"] == SDK_KEY
    assert headers["x-launchdarkly-event-schema"] == "4"
    assert headers["x-launchdarkly-wrapper"].startswith("shmflags/")
    assert headers["content-type"] == "application/json"
    assert len(headers["x-launchdarkly-payload-id"]) == 36


def test_migration_op_event_passes_through_like_ldclient(tmp_path):
    from datetime import timedelta

    from ldclient.migrations import Operation, Origin, Stage

    flag_data = {"mig": _flag("mig", variations=["off", "dualwrite", "shadow"],
                              fallthrough={"variation": 2}, samplingRatio=1)}
    ctx = {"kind": "user", "key": "m-1", "anonymous": True, "name": "hidden"}
    with FakeLD(heartbeat_interval=None) as ld_sink, FakeLD(heartbeat_interval=None) as sf_sink:
        store = InMemoryFeatureStore()
        store.init({FEATURES: copy.deepcopy(flag_data), SEGMENTS: {}})
        client = ldclient.LDClient(LDConfig(
            SDK_KEY, events_uri=ld_sink.url, use_ldd=True, feature_store=store,
            flush_interval=60, diagnostic_opt_out=True))
        try:
            _, tracker = client.migration_variation("mig", ldclient.Context.from_dict(ctx),
                                                    Stage.OFF)
            tracker.operation(Operation.READ)
            tracker.invoked(Origin.OLD)
            tracker.invoked(Origin.NEW)
            tracker.latency(Origin.OLD, timedelta(milliseconds=5))
            client.track_migration_op(tracker)
            client.flush()
        finally:
            client.close()
        (ld_event,) = [e for p in bodies(ld_sink) for e in p if e["kind"] == "migration_op"]

        config = Config(sdk_key=SDK_KEY, events_uri=sf_sink.url,
                        socket=str(tmp_path / "ev.sock"), flush_interval=60,
                        diagnostic_opt_out=True)
        service = EventService(config)
        service.start()
        try:
            recorder = EventRecorder(config)
            recorder.record_migration_op(dict(ld_event, context=ctx))  # unredacted, as the client
            recorder.close()
            service.flush()
        finally:
            service.stop()
        sf_events = [e for p in bodies(sf_sink) for e in p]
    assert [e["kind"] for e in sf_events] == ["migration_op"]  # primes the LRU, no index
    assert sf_events[0] == ld_event
    assert sf_events[0]["context"]["_meta"] == {"redactedAttributes": ["name"]}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_scripts_equal_ldclient(tmp_path, seed, monkeypatch):
    """Random operation sequences over the same flags and contexts, in one worker so that the
    call order is ldclient's exactly (across workers a summary's ``default`` is the first to
    arrive, see docs/events.md)."""
    rng = random.Random(seed)
    ctxs = contexts()
    keys = list(flags()) + ["missing-flag"]
    per_ctx = []
    for ctx in ctxs:
        ops: List[Tuple] = []
        for _ in range(rng.randint(0, 25)):
            r = rng.random()
            if r < 0.8:
                ops.append(("eval", rng.choice(keys), ctx, rng.choice([False, "d", None, 3]),
                            rng.random() < 0.3))
            elif r < 0.9:
                ops.append(("track", rng.choice(["a", "b"]), ctx,
                            rng.choice([None, {"x": 1}]), rng.choice([None, 1, 2.5])))
            else:
                ops.append(("identify", ctx))
        per_ctx.append(ops)
    monkeypatch.setattr(sys.modules[__name__], "script", lambda: per_ctx)
    flag_data = flags()
    with FakeLD(heartbeat_interval=None) as ld_sink, FakeLD(heartbeat_interval=None) as sf_sink:
        run_ldclient(flag_data, ld_sink, ["email"])
        run_shmflags(flag_data, sf_sink, ["email"], tmp_path, workers=1)
        ld_events, ld_summary = normalise(bodies(ld_sink))
        sf_events, sf_summary = normalise(bodies(sf_sink))
    assert sf_summary == ld_summary
    assert sf_events == ld_events
