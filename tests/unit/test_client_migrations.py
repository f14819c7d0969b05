"""Migrations: stage dispatch, results and the migration_op event, against ldclient."""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Dict, List, Tuple

import ldclient
import ldclient.migrations as ldm
import pytest
from ldclient.impl.events.event_processor_common import EventOutputFormatter
from ldclient.integrations.test_data import TestData as LDTestData

import shmflags
from shmflags.client import migrations as ours

STAGES = ["off", "dualwrite", "shadow", "live", "rampdown", "complete"]


class _Capture:
    events: List[Any] = []

    def __init__(self, config: Any) -> None:
        pass

    def send_event(self, event: Any) -> None:
        _Capture.events.append(event)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _Recorder:
    def __init__(self) -> None:
        self.events: List[dict] = []

    def record_evaluation(self, *a: Any) -> None:
        pass

    def record_migration_op(self, event: dict) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def _run(api: Any, client: Any, stage_flag: str, fail_new: bool) -> Tuple[list, list]:
    calls: List[str] = []

    def fn(tag: str, ok: bool) -> Any:
        def call(payload: Any) -> Any:
            calls.append(tag)
            return api.Result.success(f"{tag}:{payload}") if ok else api.Result.fail(f"{tag} down")
        return call

    migrator = (api.MigratorBuilder(client)
                .read(fn("read-old", True), fn("read-new", not fail_new), lambda a, b: a == b)
                .write(fn("write-old", True), fn("write-new", not fail_new))
                .read_execution_order(api.ExecutionOrder.SERIAL)
                .track_latency(False)
                .build())
    ctx = api.Context.create("u")
    read = migrator.read(stage_flag, ctx, api.Stage.OFF, "p")
    write = migrator.write(stage_flag, ctx, api.Stage.OFF, "q")
    nonauth = write.nonauthoritative
    results = [read.is_success(), read.value, read.error, read.origin.value,
               write.authoritative.value, write.authoritative.origin.value,
               None if nonauth is None else (nonauth.is_success(), nonauth.value, nonauth.error,
                                             nonauth.origin.value)]
    return calls, results


LD_API = type("LD", (), {"Result": ldclient.Result, "MigratorBuilder": ldm.MigratorBuilder,
                         "ExecutionOrder": ldm.ExecutionOrder, "Stage": ldm.Stage,
                         "Context": ldclient.Context})
SHM_API = type("SHM", (), {"Result": shmflags.Result, "MigratorBuilder": shmflags.MigratorBuilder,
                           "ExecutionOrder": shmflags.ExecutionOrder, "Stage": shmflags.Stage,
                           "Context": shmflags.Context})


def _strip(event: Dict[str, Any]) -> Dict[str, Any]:
    event = dict(event)
    event.pop("creationDate", None)
    return event


@pytest.mark.parametrize("fail_new", [False, True])
@pytest.mark.parametrize("stage", STAGES + ["not-a-stage"])
def test_same_dispatch_results_and_events_as_ldclient(stage: str, fail_new: bool) -> None:
    ld_td = LDTestData.data_source()
    ld_td.update(ld_td.flag("mig").variations(*STAGES, "not-a-stage")
                 .variation_for_all((STAGES + ["not-a-stage"]).index(stage)))
    _Capture.events = []
    ld_client = ldclient.LDClient(ldclient.Config("k", update_processor_class=ld_td,
                                                  event_processor_class=_Capture), start_wait=0)
    try:
        theirs = _run(LD_API, ld_client, "mig", fail_new)
    finally:
        ld_client.close()
    fmt = EventOutputFormatter(ldclient.Config("k"))
    their_events = [_strip(fmt.make_output_event(e)) for e in _Capture.events
                    if type(e).__name__ == "MigrationOpEvent"]

    td = shmflags.TestData()
    td.update(td.flag("mig").variations(*STAGES, "not-a-stage")
              .variation_for_all((STAGES + ["not-a-stage"]).index(stage)))
    rec = _Recorder()
    client = shmflags.Client(shmflags.Config(update_processor_class=td, environ={}),
                             recorder=rec)
    assert _run(SHM_API, client, "mig", fail_new) == theirs
    assert [_strip(e) for e in rec.events] == their_events
    assert len(their_events) == 2


def test_check_ratio_and_sampling_ratio_in_the_event() -> None:
    td = shmflags.TestData()
    td.update_raw("flags", {"key": "m", "version": 3, "on": True, "variations": ["shadow"],
                            "fallthrough": {"variation": 0}, "samplingRatio": 4,
                            "migration": {"checkRatio": 1}})
    rec = _Recorder()
    client = shmflags.Client.from_test_data(td)
    client._recorder = rec
    stage, tracker = client.migration_variation("m", shmflags.Context.create("u"),
                                                shmflags.Stage.OFF)
    assert stage is shmflags.Stage.SHADOW
    tracker.operation(shmflags.Operation.READ)
    tracker.invoked(shmflags.Origin.OLD).invoked(shmflags.Origin.NEW)
    tracker.latency(shmflags.Origin.OLD, timedelta(milliseconds=12.5))
    tracker.consistent(lambda: False)
    client.track_migration_op(tracker)
    [event] = rec.events
    assert event["samplingRatio"] == 4
    assert event["evaluation"] == {"key": "m", "value": "shadow", "version": 3,
                                   "default": "off", "variation": 0,
                                   "reason": {"kind": "FALLTHROUGH"}}
    assert event["measurements"] == [
        {"key": "invoked", "values": {"old": True, "new": True}},
        {"key": "consistent", "value": False},
        {"key": "latency_ms", "values": {"old": 12.5}}]
    assert event["context"] == {"kind": "user", "key": "u"}


def test_incomplete_trackers_build_no_event() -> None:
    detail = shmflags.EvaluationDetail("off", 0, {"kind": "FALLTHROUGH"})
    ctx = shmflags.Context.create("u")
    t = ours.OpTracker("k", None, ctx, detail, ours.Stage.OFF)
    assert t.build() == "operation not provided"
    t.operation(ours.Operation.WRITE)
    assert t.build() == "no origins were invoked"
    t.invoked(ours.Origin.OLD).error(ours.Origin.NEW)
    assert "without recording invocation" in t.build()
    t2 = ours.OpTracker("k", None, ctx, detail, ours.Stage.OFF).operation(ours.Operation.READ)
    t2.invoked(ours.Origin.OLD).consistent(lambda: True)
    assert t2.build() == "provided consistency without recording both invocations"
    assert ours.OpTracker("", None, ctx, detail, ours.Stage.OFF).operation(
        ours.Operation.READ).invoked(ours.Origin.OLD).build().startswith("migration operation")
    assert ours.MigratorBuilder(None).build() == "read configuration not provided"


def test_parallel_reads_run_both_and_compare() -> None:
    td = shmflags.TestData()
    td.update(td.flag("m").value_for_all("live"))
    client = shmflags.Client.from_test_data(td)
    rec = _Recorder()
    client._recorder = rec
    migrator = (shmflags.MigratorBuilder(client)
                .read(lambda p: shmflags.Result.success(1), lambda p: shmflags.Result.success(1),
                      lambda a, b: a == b)
                .write(lambda p: shmflags.Result.success(None),
                       lambda p: shmflags.Result.success(None))
                .build())
    result = migrator.read("m", shmflags.Context.create("u"), shmflags.Stage.OFF)
    assert result.origin is shmflags.Origin.NEW and result.value == 1
    keys = [m["key"] for m in rec.events[0]["measurements"]]
    assert keys == ["invoked", "consistent", "latency_ms"]
    assert rec.events[0]["measurements"][1]["value"] is True


def test_invalid_default_stage_becomes_off() -> None:
    client = shmflags.Client.from_data({"flags": {}})
    stage, _ = client.migration_variation("missing", shmflags.Context.create("u"), "bogus")
    assert stage is shmflags.Stage.OFF
