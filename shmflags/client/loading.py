"""What a user hands the worker client, turned into what it runs on: configuration, flag data,
the event recorder.

Safe in any worker; runs at client construction only, never on the evaluation path.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Tuple, Union

from shmflags.config import Config
from shmflags.errors import DataError

__all__ = ["DataLike", "as_config", "load_data", "make_recorder"]

log = logging.getLogger(__name__)

DataLike = Union[Dict[str, Any], str, bytes, "os.PathLike[str]"]

# ldclient.Config attributes a worker cares about, read by :func:`as_config`.
_LD_CONFIG_ATTRS = ("sdk_key", "offline", "send_events", "flush_interval", "events_max_pending",
                    "all_attributes_private", "private_attributes", "hooks", "application",
                    "wrapper_name", "wrapper_version", "update_processor_class",
                    "diagnostic_opt_out", "context_keys_capacity", "context_keys_flush_interval",
                    "omit_anonymous_contexts", "use_ldd")


def as_config(config: Any) -> Config:
    """A :class:`shmflags.Config` from ours, from an ``ldclient.Config``, or ``None`` (env).

    Of an ``ldclient.Config`` only the settings a worker uses are read (SDK key, offline,
    events, hooks, application, ``update_processor_class`` for TestData); the rest are the
    supervisor's business and come from its own configuration.
    """
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    kwargs: Dict[str, Any] = {}
    for attr in _LD_CONFIG_ATTRS:
        try:
            value = getattr(config, attr)
        except Exception:  # noqa: BLE001 - a missing or failing attribute is just skipped
            continue
        if value is None or callable(value) and attr != "update_processor_class":
            continue
        if attr in ("hooks", "private_attributes"):
            value = list(value)
        kwargs[attr] = value
    return Config(**kwargs)


def load_data(data: DataLike) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Read LD flag data ``{"flags": ..., "segments": ..., "flagValues": ...}``.

    :param data: a dict, JSON text (``str``/``bytes``), or the path of a JSON or YAML file
    :returns: ``(flags, segments)`` as dicts of raw LD JSON objects
    :raises shmflags.errors.DataError: when the data cannot be read or is not an object
    """
    obj: Any = data
    try:
        if isinstance(data, bytes):
            obj = json.loads(data.decode("utf-8"))
        elif isinstance(data, str) and data.lstrip()[:1] in ("{", "["):
            obj = json.loads(data)
        elif isinstance(data, (str, os.PathLike)):
            from shmflags.filedata import load_files
            return load_files([os.fspath(data)])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read flag data: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError("flag data must be a JSON object with \"flags\" and \"segments\"")
    flags = obj.get("flags")
    segments = obj.get("segments")
    values = obj.get("flagValues")
    flags = {} if flags is None else flags
    segments = {} if segments is None else segments
    values = {} if values is None else values
    if not isinstance(flags, dict) or not isinstance(segments, dict) or not isinstance(values, dict):
        raise DataError("\"flags\", \"segments\" and \"flagValues\" must be JSON objects")
    flags = dict(flags)
    for key, value in values.items():
        if key in flags:
            raise DataError(f"flag {key!r} given twice")
        flags[key] = {"key": key, "version": 1, "on": True, "fallthrough": {"variation": 0},
                      "variations": [value]}
    return flags, segments


def make_recorder(config: Config, source: Any) -> Any:
    """The worker's event recorder, or ``None`` when events are off or not built yet.

    The socket is the one the supervisor announces in the control block when it is there
    (``socket`` may be set on the supervisor only), else ``config.socket_path``.
    """
    if config.offline or not config.send_events:
        return None
    try:
        from shmflags.events.recorder import EventRecorder
    except ImportError:
        log.warning("shmflags: the event recorder is not available; analytics events are off")
        return None
    socket_path = None
    if config.socket is None and getattr(source, "_attachment", None) is not None:
        try:
            socket_path = source._attachment.status().get("socket") or None
        except Exception:  # noqa: BLE001 - fall back to the configured path
            socket_path = None
    try:
        return EventRecorder(config, socket_path)
    except Exception as exc:  # noqa: BLE001 - events must never stop the client
        log.error("shmflags: cannot start the event recorder (%r); analytics events are off",
                  exc)
        return None
