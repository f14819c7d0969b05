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


def _preload_attach_path() -> None:
    """Import, at ``import shmflags``, the modules a worker's first evaluation needs (the
    attach path: ``shm``, the Big Segments reader, ``snapshot.compile`` which the C Snapshot
    imports, the reader). A prefork master imports ``shmflags``, so forked workers inherit
    them instead of importing ~5-10 ms of modules before their first answer. Imports only:
    no threads, sockets or mappings; a platform without POSIX shared memory skips it."""
    import importlib
    for module in ("shmflags.config", "shmflags.client.source", "shmflags.snapshot.reader",
                   "shmflags.shm", "shmflags.integrations.bigsegments",
                   "shmflags.snapshot.compile"):
        try:
            importlib.import_module(module)
        except ImportError:    # e.g. posix_ipc missing: the worker reports it when attaching
            pass


_preload_attach_path()
del _preload_attach_path
