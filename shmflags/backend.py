"""Chooses the evaluator backend once, at import: the C extension or the pure-Python reader.

Safe in any process; the choice is a module constant computed from the environment at import
(no threads, no I/O besides one warning log line), so a fork inherits it unchanged.

``SHMFLAGS_EVALUATOR=c`` forces the C backend (ImportError when it is not built),
``SHMFLAGS_EVALUATOR=python`` forces the pure-Python one. Otherwise the C backend is used when
``shmflags._native`` imports, else the Python one with one warning. ``SHMFLAGS_REQUIRE_NATIVE=1``
turns a missing C build into an ImportError whatever else is set (CI runs the suite so).
"""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any, Tuple

__all__ = ["evaluator_backend", "open_snapshot", "Snapshot"]

log = logging.getLogger(__name__)


def _choose() -> Tuple[str, ModuleType]:
    forced = os.environ.get("SHMFLAGS_EVALUATOR", "").strip().lower()
    require = os.environ.get("SHMFLAGS_REQUIRE_NATIVE", "").strip().lower() in ("1", "true")
    if forced not in ("", "c", "python"):
        raise ImportError(f"SHMFLAGS_EVALUATOR must be 'c' or 'python', got {forced!r}")
    if forced == "python" and not require:
        return "python", importlib.import_module("shmflags._pure")
    try:
        native = importlib.import_module("shmflags._native")
    except ImportError as exc:
        if forced == "c" or require:
            why = "SHMFLAGS_EVALUATOR=c" if forced == "c" else "SHMFLAGS_REQUIRE_NATIVE=1"
            raise ImportError(f"{why} but the C extension shmflags._native is not "
                              f"available: {exc}") from exc
        log.warning("shmflags: C extension not available (%s); using the pure-Python "
                    "evaluator", exc)
        return "python", importlib.import_module("shmflags._pure")
    if forced == "python":
        # REQUIRE_NATIVE only checks the build; an explicit python choice still wins.
        return "python", importlib.import_module("shmflags._pure")
    return "c", native


_NAME, _MODULE = _choose()

#: The chosen backend's ``Snapshot`` class.
Snapshot: Any = _MODULE.Snapshot


def evaluator_backend() -> str:
    """Return ``"c"`` or ``"python"``: the evaluator chosen at import."""
    return _NAME


def open_snapshot(buffer: Any, **parts: Any) -> Any:
    """Open ``buffer`` (snapshot bytes or a mapping) with the chosen backend.

    :param parts: ``base``, ``state``, ``base_state`` (an overlay's base object and the
        verification states kept with the mappings: ``shm.Attachment.snapshot_parts``).
    :raises SnapshotFormatError: the bytes are not a valid snapshot.
    """
    return Snapshot(buffer, **parts)
