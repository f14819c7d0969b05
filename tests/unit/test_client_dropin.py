"""Drop-in: one small application written against ldclient's API gives the same results with
ldclient and with shmflags swapped in (only the imports differ)."""
from __future__ import annotations

import types
from typing import Any, Dict, List

import ldclient
import ldclient.hook
import ldclient.migrations
from ldclient.integrations.test_data import TestData as LDTestData

import shmflags

LD = types.SimpleNamespace(
    sdk=ldclient, Config=ldclient.Config, Context=ldclient.Context, TestData=LDTestData,
    Hook=ldclient.hook.Hook, Metadata=ldclient.hook.Metadata, Result=ldclient.Result,
    MigratorBuilder=ldclient.migrations.MigratorBuilder, Stage=ldclient.migrations.Stage,
    ExecutionOrder=ldclient.migrations.ExecutionOrder)

SHM = types.SimpleNamespace(
    sdk=shmflags, Config=shmflags.Config, Context=shmflags.Context, TestData=shmflags.TestData,
    Hook=shmflags.Hook, Metadata=shmflags.Metadata, Result=shmflags.Result,
    MigratorBuilder=shmflags.MigratorBuilder, Stage=shmflags.Stage,
    ExecutionOrder=shmflags.ExecutionOrder)


def application(api: Any) -> Dict[str, Any]:
    """The 'application': nothing below knows which SDK it runs on."""
    out: Dict[str, Any] = {}
    td = api.TestData.data_source()
    td.update(td.flag("new-ui").variation_for_user("alice", True).fallthrough_variation(False))
    td.update(td.flag("banner").variations("red", "green", "blue")
              .if_match("country", "fr").then_return(2)
              .if_match_context("org", "tier", "gold").and_not_match_context("org", "key", "x")
              .then_return(1)
              .fallthrough_variation(0).off_variation(1))
    td.update(td.flag("limits").value_for_all({"rps": 10, "burst": [1, 2]}))
    td.update(td.flag("db-migration")
              .variations("off", "dualwrite", "shadow", "live", "rampdown", "complete")
              .variation_for_all(2))
    td.update(td.flag("dark").on(False))

    calls: List[Any] = []

    class AuditHook(api.Hook):
        @property
        def metadata(self) -> Any:
            return api.Metadata(name="audit")

        def before_evaluation(self, series_context: Any, data: dict) -> dict:
            calls.append(("before", series_context.key, series_context.method,
                          series_context.default_value))
            return {"seen": series_context.key}

        def after_evaluation(self, series_context: Any, data: dict, detail: Any) -> dict:
            calls.append(("after", data.get("seen"), detail.value, detail.variation_index,
                          detail.reason))
            return data

    api.sdk.set_config(api.Config("sdk-example-key", update_processor_class=td,
                                  send_events=False, hooks=[AuditHook()]))
    client = api.sdk.get()
    assert client is api.sdk.get()
    out["initialized"] = client.is_initialized()

    alice = api.Context.builder("alice").set("country", "fr").name("Alice").build()
    bob = api.Context.create("bob")
    org = api.Context.builder("acme").kind("org").set("tier", "gold").build()
    multi = api.Context.create_multi(bob, org)
    invalid = api.Context.create("")
    keys = ["new-ui", "banner", "limits", "dark", "missing"]
    contexts = [alice, bob, org, multi, invalid]
    out["values"] = [client.variation(k, c, "dflt") for k in keys for c in contexts]
    out["details"] = [(d.value, d.variation_index, d.reason, d.is_default_value())
                      for d in (client.variation_detail(k, c, "dflt")
                                for k in keys for c in contexts)]
    out["all_flags"] = client.all_flags_state(multi, with_reasons=True).to_json_dict()
    out["all_flags_client"] = client.all_flags_state(
        alice, client_side_only=True).to_json_dict()
    out["all_flags_invalid"] = client.all_flags_state(invalid).valid
    out["secure_hash"] = client.secure_mode_hash(alice)
    out["sdk_key"] = client.get_sdk_key()
    client.track("purchase", alice, {"sku": "A1"}, 12.5)
    client.identify(org)
    client.flush()

    migrator = (api.MigratorBuilder(client)
                .read(lambda payload: api.Result.success(f"old:{payload}"),
                      lambda payload: api.Result.success(f"new:{payload}"),
                      lambda a, b: a == b)
                .write(lambda payload: api.Result.success("wrote-old"),
                       lambda payload: api.Result.fail("new store down"))
                .read_execution_order(api.ExecutionOrder.SERIAL)
                .build())
    read = migrator.read("db-migration", alice, api.Stage.OFF, "p")
    write = migrator.write("db-migration", alice, api.Stage.OFF)
    out["migration"] = [read.is_success(), read.value, read.origin.value,
                        write.authoritative.value, write.authoritative.origin.value,
                        write.nonauthoritative.is_success(), write.nonauthoritative.error]
    stage, tracker = client.migration_variation("banner", alice, api.Stage.LIVE)
    out["migration_wrong_type"] = stage.value
    out["status"] = client.data_source_status_provider.status.state.value
    out["big_segments"] = (client.big_segment_store_status_provider.status.available,
                           client.big_segment_store_status_provider.status.stale)
    store = client.data_store_status_provider
    out["data_store"] = (store.status.available, store.status.stale,
                         store.is_monitoring_enabled())
    changes: List[str] = []
    value_changes: List[Any] = []
    client.flag_tracker.add_listener(lambda change: changes.append(change.key))
    client.flag_tracker.add_flag_value_change_listener(
        "new-ui", bob, lambda ch: value_changes.append((ch.key, ch.old_value, ch.new_value)))
    # (the value listener's first evaluation goes through the hooks, as in ldclient)
    out["hook_calls"] = list(calls)
    td.update(td.flag("new-ui").variation_for_all(True))
    td.update(td.flag("banner").on(False))
    out["changes"] = sorted(changes)
    out["value_changes"] = value_changes
    out["after_update"] = [client.variation("new-ui", bob, None),
                           client.variation("banner", alice, None)]

    return out


def test_same_results_with_ldclient_and_shmflags() -> None:
    try:
        theirs = application(LD)
    finally:
        ldclient._reset_client()
    try:
        ours = application(SHM)
    finally:
        old = shmflags.client.singleton._reset()
        if old is not None:
            old.close()
    assert theirs["hook_calls"], "the application really ran hooks"
    # ldclient's TestData writes to the store behind the change notifier, so its flag tracker
    # never fires with TestData; shmflags notifies as for any other data change (ld-protocol
    # §10.2). For the same reason its data source status stays INITIALIZING with TestData,
    # while shmflags reports VALID. Everything else must be identical.
    assert theirs["changes"] == [] and theirs["value_changes"] == []
    assert ours.pop("changes") == ["banner", "new-ui"]
    assert ours.pop("value_changes") == [("new-ui", False, True)]
    assert (theirs.pop("status"), ours.pop("status")) == ("initializing", "valid")
    del theirs["changes"], theirs["value_changes"]
    for key in theirs:
        assert ours[key] == theirs[key], key
    assert ours == theirs
