"""The pure-Python reference evaluator (ld-protocol.md §3), safe in any process.

Modules: :mod:`~.attrref` (attribute references), :mod:`~.operators` (clause operators and
their codes), :mod:`~.dates`, :mod:`~.semver`, :mod:`~.bucketing`, :mod:`~.evaluator` (the
algorithm), :mod:`~.detail` (``EvaluationDetail``, reasons), :mod:`~.backend`
(``ModelBackend``, the backend contract of docs/internals.md over model objects).
"""
from __future__ import annotations

from shmflags.evaluation.backend import ModelBackend
from shmflags.evaluation.detail import BigSegmentsStatus, EvaluationDetail, error_reason
from shmflags.evaluation.evaluator import BigSegmentsProvider, EvalResult, Evaluator, PrereqEval

__all__ = ["Evaluator", "EvalResult", "PrereqEval", "EvaluationDetail", "BigSegmentsStatus",
           "BigSegmentsProvider", "ModelBackend", "error_reason"]
