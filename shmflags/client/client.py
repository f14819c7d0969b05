"""The worker-side ``Client``: ldclient's evaluation API over any backend of docs/internals.md.

Safe in any worker; this first version opens nothing (no threads, sockets or mappings), so it
survives fork unchanged. Events go to an optional recorder with the interface of
``shmflags/events/recorder.py``; without one nothing is recorded.

``variation*`` never raises: an invalid context gives the default with ``USER_NOT_SPECIFIED``,
an unexpected error ``EXCEPTION``, a typed variation whose value has the wrong JSON type
``WRONG_TYPE`` (ld-protocol.md §3.9).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple, Union

from shmflags.client.flags_state import FeatureFlagsState
from shmflags.context import coerce
from shmflags.errors import DataError
from shmflags.evaluation.backend import ModelBackend
from shmflags.evaluation.detail import EvaluationDetail, error_reason
from shmflags.evaluation.evaluator import BigSegmentsProvider
from shmflags.model import parse_flag, parse_segment

__all__ = ["Client", "load_data"]

log = logging.getLogger(__name__)

DataLike = Union[Dict[str, Any], str, bytes, "os.PathLike[str]"]


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
            path = os.fspath(data)
            with open(path, "rb") as fh:
                raw = fh.read()
            if path.endswith((".yaml", ".yml")):
                import yaml  # only needed for YAML files
                obj = yaml.safe_load(raw)
            else:
                obj = json.loads(raw.decode("utf-8"))
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(value: Any) -> Any:
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise TypeError
    return int(value)


def _as_float(value: Any) -> Any:
    if not _is_number(value):
        raise TypeError
    return float(value)


def _as_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _as_str(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError
    return value


class Client:
    """Evaluate flags through a backend (``evaluate`` / ``all_flags_state`` per docs/internals.md).

    :param backend: a ``ModelBackend``, ``_pure.Snapshot`` or ``_native.Snapshot``-like object
    :param recorder: optional event recorder (``record_evaluation(key, context, eval_tuple,
        default, with_reason)``)
    """

    def __init__(self, backend: Any, recorder: Any = None) -> None:
        self._backend = backend
        self._recorder = recorder

    @classmethod
    def from_data(cls, data: DataLike,
                  big_segments: Optional[BigSegmentsProvider] = None) -> "Client":
        """An in-process client over LD flag data, without a supervisor or shared memory.

        :param data: see :func:`load_data`
        :param big_segments: optional Big Segment membership provider
        :raises shmflags.errors.DataError: when the data cannot be read at all (a malformed
            individual flag does not raise: its evaluations return ``MALFORMED_FLAG``)
        """
        flags, segments = load_data(data)
        parsed_flags = {key: parse_flag(value) for key, value in flags.items()}
        parsed_segments = {key: parse_segment(value) for key, value in segments.items()}
        return cls(ModelBackend.from_dicts(parsed_flags, parsed_segments, big_segments))

    @property
    def backend(self) -> Any:
        """The backend object evaluations run on."""
        return self._backend

    def is_initialized(self) -> bool:
        """``True``: an in-process client always has its data."""
        return True

    def close(self) -> None:
        """Flush the recorder, if any."""
        if self._recorder is not None:
            try:
                self._recorder.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                log.exception("closing the event recorder failed")

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shmflags.Client backend={type(self._backend).__name__}>"

    # -- evaluation --------------------------------------------------------------------

    def _evaluate(self, key: str, context: Any, default: Any, with_reason: bool,
                  check: Optional[Callable[[Any], Any]] = None) -> EvaluationDetail:
        try:
            ctx = coerce(context)
            if not ctx.valid:
                log.warning("Context was invalid for flag evaluation (%s); returning default value",
                            ctx.error)
                return EvaluationDetail(default, None, error_reason("USER_NOT_SPECIFIED"))
            result = self._backend.evaluate(key, ctx)
        except Exception as exc:  # noqa: BLE001 - variation() never raises
            log.error('Unexpected error while evaluating feature flag "%s": %r', key, exc)
            return EvaluationDetail(default, None, error_reason("EXCEPTION"))
        value, index, reason = result[0], result[1], result[2]
        if self._recorder is not None:
            try:
                self._recorder.record_evaluation(key, ctx, result, default, with_reason)
            except Exception:  # noqa: BLE001 - events must not break evaluation
                log.exception("recording an evaluation event failed")
        if index is None:
            return EvaluationDetail(default, None, reason)
        if check is not None:
            try:
                value = check(value)
            except (TypeError, ValueError, OverflowError):
                return EvaluationDetail(default, None, error_reason("WRONG_TYPE"))
        return EvaluationDetail(value, index, reason)

    def variation(self, key: str, context: Any, default: Any) -> Any:
        """The flag's value for ``context``, or ``default``.

        :param key: flag key
        :param context: a :class:`shmflags.Context`, an ``ldclient.Context`` or LD context JSON
        :param default: returned when the flag cannot be evaluated
        """
        return self._evaluate(key, context, default, False).value

    def variation_detail(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        """Like :meth:`variation`, with the variation index and the reason."""
        return self._evaluate(key, context, default, True)

    def bool_variation(self, key: str, context: Any, default: bool) -> bool:
        """The flag's value if it is a JSON boolean, else ``default``."""
        return self._evaluate(key, context, default, False, _as_bool).value

    def bool_variation_detail(self, key: str, context: Any, default: bool) -> EvaluationDetail:
        """:meth:`bool_variation` with details (``WRONG_TYPE`` when not a boolean)."""
        return self._evaluate(key, context, default, True, _as_bool)

    def int_variation(self, key: str, context: Any, default: int) -> int:
        """The flag's value if it is a JSON number (floats truncated toward zero), else ``default``."""
        return self._evaluate(key, context, default, False, _as_int).value

    def int_variation_detail(self, key: str, context: Any, default: int) -> EvaluationDetail:
        """:meth:`int_variation` with details (``WRONG_TYPE`` when not a number)."""
        return self._evaluate(key, context, default, True, _as_int)

    def float_variation(self, key: str, context: Any, default: float) -> float:
        """The flag's value as a float if it is a JSON number, else ``default``."""
        return self._evaluate(key, context, default, False, _as_float).value

    def float_variation_detail(self, key: str, context: Any, default: float) -> EvaluationDetail:
        """:meth:`float_variation` with details (``WRONG_TYPE`` when not a number)."""
        return self._evaluate(key, context, default, True, _as_float)

    def string_variation(self, key: str, context: Any, default: str) -> str:
        """The flag's value if it is a JSON string, else ``default``."""
        return self._evaluate(key, context, default, False, _as_str).value

    def string_variation_detail(self, key: str, context: Any, default: str) -> EvaluationDetail:
        """:meth:`string_variation` with details (``WRONG_TYPE`` when not a string)."""
        return self._evaluate(key, context, default, True, _as_str)

    def json_variation(self, key: str, context: Any, default: Any) -> Any:
        """The flag's value, whatever its JSON type (same as :meth:`variation`)."""
        return self._evaluate(key, context, default, False).value

    def json_variation_detail(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        """Same as :meth:`variation_detail`."""
        return self._evaluate(key, context, default, True)

    def all_flags_state(self, context: Any, with_reasons: bool = False,
                        client_side_only: bool = False,
                        details_only_for_tracked_flags: bool = False) -> FeatureFlagsState:
        """Every flag's value and metadata for ``context``; records no events.

        :returns: a :class:`FeatureFlagsState`, ``valid`` ``False`` for an invalid context or
            an internal error
        """
        try:
            ctx = coerce(context)
            if not ctx.valid:
                log.warning("Context was invalid for all_flags_state (%s)", ctx.error)
                return FeatureFlagsState(False)
            state = self._backend.all_flags_state(
                ctx, bool(with_reasons), bool(client_side_only),
                bool(details_only_for_tracked_flags), int(time.time() * 1000))
        except Exception as exc:  # noqa: BLE001
            log.error("Unable to compute all_flags_state: %r", exc)
            return FeatureFlagsState(False)
        return FeatureFlagsState(True, state)
