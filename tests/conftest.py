"""Shared fixtures: the ``backend`` fixture runs a test on every evaluator.

``backend`` is a factory ``make(flags, segments) -> object`` implementing the backend contract
of docs/internals.md (``evaluate``, ``all_flags_state``, ``flag_keys``, ``raw_flag``, ...):

* ``model`` — the reference evaluator over parsed model objects (no snapshot);
* ``python-snapshot`` — ``shmflags._pure.Snapshot`` over snapshot bytes;
* ``c`` — ``shmflags._native.Snapshot`` over the same bytes. Skipped when the C extension is
  not built, unless ``SHMFLAGS_REQUIRE_NATIVE=1`` (then the test fails instead).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Dict

import pytest

BACKENDS = ["model", "python-snapshot", "c"]


def native_module() -> Any:
    """Return ``shmflags._native``; skip (or fail under SHMFLAGS_REQUIRE_NATIVE=1) if absent."""
    try:
        return importlib.import_module("shmflags._native")
    except ImportError as exc:
        if os.environ.get("SHMFLAGS_REQUIRE_NATIVE") == "1":
            pytest.fail(f"SHMFLAGS_REQUIRE_NATIVE=1 but shmflags._native is missing: {exc}")
        pytest.skip(f"C extension not built: {exc}")


def snapshot_bytes(flags: Dict[str, Any], segments: Dict[str, Any]) -> bytes:
    """Build snapshot bytes (with compiled records) for LD flag and segment dicts."""
    from shmflags.snapshot.builder import SnapshotBuilder

    return SnapshotBuilder().build(flags, segments, built_at_ms=0)


@pytest.fixture(params=BACKENDS)
def backend(request: Any) -> Callable[[Dict[str, Any], Dict[str, Any]], Any]:
    """A factory building one evaluator backend over flag and segment dicts."""
    name = request.param
    if name == "model":
        from shmflags.evaluation.backend import ModelBackend
        from shmflags.model import parse_flag, parse_segment

        def make_model(flags: Dict[str, Any], segments: Dict[str, Any]) -> Any:
            return ModelBackend.from_dicts({k: parse_flag(v) for k, v in flags.items()},
                                           {k: parse_segment(v) for k, v in segments.items()})
        return make_model
    if name == "python-snapshot":
        from shmflags import _pure

        return lambda flags, segments: _pure.Snapshot(snapshot_bytes(flags, segments))
    native = native_module()
    return lambda flags, segments: native.Snapshot(snapshot_bytes(flags, segments))


def pytest_collection_modifyitems(config: Any, items: Any) -> None:
    """``c_only`` tests need the C evaluator: CI's pure-Python pass deselects them
    (``-m "not c_only"``); anywhere else without the C evaluator they are skipped with the
    reason, and under ``SHMFLAGS_REQUIRE_NATIVE=1`` they run (and fail if it is missing)."""
    if os.environ.get("SHMFLAGS_REQUIRE_NATIVE") == "1":
        return
    from shmflags import evaluator_backend
    if evaluator_backend() == "c":
        return
    skip = pytest.mark.skip(reason="needs the C evaluator (SHMFLAGS_EVALUATOR=c, extension built)")
    for item in items:
        if "c_only" in item.keywords:
            item.add_marker(skip)
