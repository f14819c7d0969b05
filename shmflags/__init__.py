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
