"""The names an ldclient application imports exist in shmflags with the same use."""
from __future__ import annotations

import ldclient
import ldclient.hook
import ldclient.interfaces
import ldclient.migrations

import shmflags

LDCLIENT_TOP = ["Config", "Context", "ContextBuilder", "ContextMultiBuilder", "Result"]
MIGRATIONS = ["ExecutionOrder", "MigrationConfig", "Migrator", "MigratorBuilder", "OpTracker",
              "Operation", "OperationResult", "Origin", "Stage"]
HOOKS = ["EvaluationSeriesContext", "Hook", "Metadata"]
INTERFACES = ["BigSegmentStoreStatus", "DataSourceErrorInfo", "DataSourceErrorKind",
              "DataSourceState", "DataSourceStatus", "FlagChange", "FlagValueChange"]
SHMFLAGS_OWN = ["get", "set_config", "Client", "TestData", "FlagBuilder", "FlagRuleBuilder",
                "EvaluationDetail", "FeatureFlagsState", "evaluator_backend", "WriteResult"]


def test_public_names() -> None:
    for module, names in ((ldclient, LDCLIENT_TOP), (ldclient.migrations, MIGRATIONS),
                          (ldclient.hook, HOOKS), (ldclient.interfaces, INTERFACES)):
        for name in names:
            assert hasattr(module, name), f"ldclient has no {name} (test list is wrong)"
            assert hasattr(shmflags, name), f"shmflags does not export {name}"
    for name in SHMFLAGS_OWN:
        assert hasattr(shmflags, name), name


def test_enum_values_match_ldclient() -> None:
    for ours, theirs in ((shmflags.Stage, ldclient.migrations.Stage),
                         (shmflags.Operation, ldclient.migrations.Operation),
                         (shmflags.Origin, ldclient.migrations.Origin),
                         (shmflags.ExecutionOrder, ldclient.migrations.ExecutionOrder),
                         (shmflags.DataSourceState, ldclient.interfaces.DataSourceState),
                         (shmflags.DataSourceErrorKind, ldclient.interfaces.DataSourceErrorKind)):
        assert [(m.name, m.value) for m in ours] == [(m.name, m.value) for m in theirs]
    assert shmflags.Stage.from_str("live") is shmflags.Stage.LIVE
    assert shmflags.Stage.from_str("nope") is None


def test_client_has_ldclients_public_methods() -> None:
    theirs = {n for n in dir(ldclient.LDClient) if not n.startswith("_")}
    ours = {n for n in dir(shmflags.Client) if not n.startswith("_")}
    assert theirs - ours == set()
