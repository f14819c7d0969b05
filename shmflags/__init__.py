"""shmflags: LaunchDarkly feature flags for preforking Python servers.

One supervisor per host publishes flag data into POSIX shared memory; every worker maps it
read-only and evaluates in C, with no post-fork hook. Importing this package starts nothing
(no threads, sockets or mappings).
"""
from __future__ import annotations

__version__ = "0.1.0"

from shmflags.client import Client, FeatureFlagsState
from shmflags.context import Context
from shmflags.evaluation import EvaluationDetail
from shmflags.backend import evaluator_backend
from shmflags.client.singleton import get, set_config
from shmflags.config import Config
from shmflags.context import ContextBuilder, ContextMultiBuilder
from shmflags.testing import FlagBuilder, FlagRuleBuilder, TestData
from shmflags.client.hooks import EvaluationSeriesContext, Hook, Metadata
from shmflags.client.migrations import (ExecutionOrder, MigrationConfig, Migrator,
                                        MigratorBuilder, Operation, OperationResult, OpTracker,
                                        Origin, Result, Stage, WriteResult)
from shmflags.client.status import (BigSegmentStoreStatus, DataSourceErrorInfo,
                                    DataSourceErrorKind, DataSourceState, DataSourceStatus)
from shmflags.client.tracker import FlagChange, FlagValueChange
