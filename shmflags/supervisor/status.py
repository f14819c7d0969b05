"""The status report of a namespace: one JSON object for ``shmflags status`` and ``/status``.

Safe in any process: :func:`read_report` reads the control block (through
:class:`shmflags.shm.Attachment`) and the supervisor's event counters file, and writes nothing.
The supervisor's ``/status`` endpoint and the CLI call the same :func:`read_report`, so the two
always agree.

The event counters live in the supervisor process; it writes them once a second, atomically, to
``<socket>.stats.json`` beside the event socket (:func:`stats_path`), where the CLI reads them.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional

from shmflags.errors import ShmflagsError
from shmflags.supervisor import atomicfile

EVENT_COUNTERS = ("received", "sent", "dropped", "invalid")


def stats_path(socket_path: str) -> str:
    """Where the supervisor writes its event counters for the socket ``socket_path``."""
    return socket_path + ".stats.json"


def write_stats(socket_path: str, counters: Mapping[str, Any]) -> None:
    """Atomically replace the counters file (advisory: not fsynced)."""
    data = json.dumps(dict(counters)).encode()
    atomicfile.replace(stats_path(socket_path), data, mode=0o644, durable=False)


def read_stats(socket_path: str) -> Optional[Dict[str, int]]:
    """The counters file's content, or ``None`` when it is absent or unreadable."""
    if not socket_path:
        return None
    try:
        with open(stats_path(socket_path)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: int(v) for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def build_report(name: str, shm_status: Mapping[str, Any], evaluator: str,
                 heartbeat_timeout: float = 5.0) -> Dict[str, Any]:
    """The status object from :meth:`shmflags.shm.Attachment.status` plus what it lacks.

    Adds ``name``, ``serving`` (a snapshot is published), ``evaluator`` and the ``events``
    counters (``None`` when events are off). ``state``, ``state_since`` and ``last_error`` are
    what a worker reports: ``INTERRUPTED`` with a heartbeat error once the supervisor's
    heartbeat is older than ``heartbeat_timeout`` (the same rule as the client's); the
    control block's own state is then kept as ``supervisor_state``. Times are Unix seconds,
    as in ldclient's data-source status.

    :param name: the namespace.
    :param shm_status: the control block as :mod:`shmflags.shm` decodes it.
    :param evaluator: the evaluator backend this process would use.
    :param heartbeat_timeout: the ``heartbeat_timeout`` setting.
    """
    from shmflags.client.source import status_from_control
    report = {k: v for k, v in shm_status.items() if k != "mapped_generation"}
    socket_path = report.get("socket") or ""
    events = None
    if socket_path:
        stats = read_stats(socket_path) or {}
        events = {k: stats.get(k, 0) for k in EVENT_COUNTERS}
    serving = int(report.get("generation") or 0) > 0
    report.update(name=name, serving=serving, evaluator=evaluator, events=events)
    seen = status_from_control(report, heartbeat_timeout, serving)
    if seen.state.name != report.get("state") and report.get("state") is not None:
        error = seen.error
        report.update(supervisor_state=report["state"], state=seen.state.name,
                      state_since=seen.since, last_error=error and {
                          "kind": error.kind.name, "statusCode": error.status_code or None,
                          "time": error.time, "message": error.message})
    return report


def absent_report(name: str, evaluator: str, error: str) -> Dict[str, Any]:
    """The status object when the namespace has no control block at all."""
    return {"name": name, "state": None, "state_since": None, "source": None,
            "from_cache": False, "generation": 0, "serving": False, "flags": 0, "segments": 0,
            "data_size": 0, "last_update": None,
            "last_error": {"kind": "UNKNOWN", "statusCode": None, "message": error,
                           "time": None},
            "supervisor_pid": None, "supervisor_alive": False, "heartbeat_age_s": None,
            "evaluator": evaluator, "socket": None, "events": None, "environment_id": None}


def read_report(name: str, heartbeat_timeout: float = 5.0) -> Dict[str, Any]:
    """The status report of namespace ``name`` (what ``shmflags status --json`` prints)."""
    from shmflags import shm
    evaluator = evaluator_backend()
    try:
        attachment = shm.Attachment(name)
    except ShmflagsError as exc:  # absent namespace, permissions, another layout
        return absent_report(name, evaluator, str(exc))
    try:
        return build_report(name, attachment.status(), evaluator, heartbeat_timeout)
    finally:
        attachment.close()


def evaluator_backend() -> str:
    """The evaluator backend this process uses (``"c"``, ``"python"`` or ``"unavailable"``)."""
    try:
        from shmflags import backend
    except ImportError:
        return "unavailable"
    return str(backend.evaluator_backend())
