"""OpenFeature provider over a shmflags client: ``ShmflagsProvider``.

Safe in any worker; constructing the provider opens nothing. Needs ``openfeature-sdk``
(``pip install shmflags[openfeature]``). Also importable as ``shmflags.openfeature``::

    from openfeature import api
    from shmflags.openfeature import ShmflagsProvider
    api.set_provider(ShmflagsProvider())          # evaluates with shmflags.get()
    flag = api.get_client().get_boolean_value("new-checkout", False, ctx)

Answers are those of LaunchDarkly's own provider (``launchdarkly-openfeature-server`` 0.8)
over ldclient, so an application can switch providers without seeing a difference:

* evaluation context → LD context: ``targetingKey`` (or a string ``key`` attribute) is the
  key; ``kind`` the kind (default ``user``); ``kind: "multi"`` makes a multi-kind context
  from the other top-level attributes, each a dict of that kind's attributes; ``name``
  (string), ``anonymous`` (bool) and ``privateAttributes`` (list of strings) are the
  built-ins; datetimes become RFC 3339 strings in UTC; everything else is a custom attribute.
* reasons: ``OFF`` → ``DISABLED``, ``TARGET_MATCH`` → ``TARGETING_MATCH``, ``ERROR`` →
  ``ERROR``; ``FALLTHROUGH``, ``RULE_MATCH`` and ``PREREQUISITE_FAILED`` are passed through
  as LaunchDarkly's provider does (OpenFeature reasons are open strings);
  ``standard_reasons=True`` reports ``RULE_MATCH`` as ``TARGETING_MATCH``.
* error codes: ``FLAG_NOT_FOUND``; ``CLIENT_NOT_READY`` → ``PROVIDER_NOT_READY``;
  ``MALFORMED_FLAG`` → ``PARSE_ERROR``; ``USER_NOT_SPECIFIED`` (no key, invalid context) →
  ``TARGETING_KEY_MISSING``; ``WRONG_TYPE`` and a value of the wrong type for the typed call →
  ``TYPE_MISMATCH``; anything else → ``GENERAL``.
* variant: the variation index as a string (none when the default was served); flag metadata
  ``variationIndex``, ``inExperiment``, ``ruleIndex``, ``ruleId``, ``prerequisiteKey``,
  ``bigSegmentsStatus`` when present.
* ``track(name, context, details)`` → ``client.track(name, ctx, attributes, value)``.
* provider events: data source ``VALID`` → ready, ``INTERRUPTED`` → stale, ``OFF`` → error
  (not fatal: the last snapshot keeps serving), a changed flag → configuration changed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Union

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, Reason
from openfeature.hook import Hook
from openfeature.provider import AbstractProvider
from openfeature.provider.metadata import Metadata

from shmflags.context import Context, ContextBuilder, ContextMultiBuilder
from shmflags.evaluation.detail import EvaluationDetail

__all__ = ["ShmflagsProvider", "to_ld_context", "to_resolution_details", "PROVIDER_NAME"]

log = logging.getLogger(__name__)

#: ``get_metadata().name``.
PROVIDER_NAME = "shmflags"

_REASONS = {"OFF": Reason.DISABLED, "TARGET_MATCH": Reason.TARGETING_MATCH,
            "ERROR": Reason.ERROR}
_ERROR_CODES = {"CLIENT_NOT_READY": ErrorCode.PROVIDER_NOT_READY,
                "FLAG_NOT_FOUND": ErrorCode.FLAG_NOT_FOUND,
                "MALFORMED_FLAG": ErrorCode.PARSE_ERROR,
                "USER_NOT_SPECIFIED": ErrorCode.TARGETING_KEY_MISSING,
                "WRONG_TYPE": ErrorCode.TYPE_MISMATCH}
_BUILTINS = ("key", "targetingKey", "kind")


# -- evaluation context → LD context -------------------------------------------------------

def _ld_value(value: Any) -> Any:
    """An OpenFeature attribute value as an LD JSON value (datetimes as UTC RFC 3339)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): _ld_value(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_ld_value(v) for v in value]
    log.error("attribute value of type %s cannot be converted; using None", type(value).__name__)
    return None


def _key(targeting_key: Any, key: Any) -> str:
    """``targetingKey`` unless empty, else a string ``key`` attribute, else ``""``."""
    if key is not None and not isinstance(key, str):
        log.warning("a non-string 'key' attribute was given")
    elif isinstance(key, str) and targeting_key:
        log.warning("the evaluation context has both 'key' and 'targetingKey'")
    if isinstance(key, str) and not targeting_key:
        targeting_key = key
    if not isinstance(targeting_key, str) or targeting_key == "":
        log.error("the evaluation context needs a string 'targetingKey' or 'key'")
        return ""
    return targeting_key


def _single(attributes: Mapping[str, Any], kind: str, key: str) -> Context:
    builder = ContextBuilder(key).kind(kind)
    for name, value in attributes.items():
        if name in _BUILTINS:
            continue
        if name == "name":
            if isinstance(value, str):
                builder.name(value)
            else:
                log.error("the attribute 'name' must be a string")
        elif name == "anonymous":
            if isinstance(value, bool):
                builder.anonymous(value)
            else:
                log.error("the attribute 'anonymous' must be a boolean")
        elif name == "privateAttributes":
            if isinstance(value, list):
                refs = [r for r in value if isinstance(r, str)]
                if len(refs) != len(value):
                    log.error("'privateAttributes' must hold only strings")
                if refs:
                    builder.private(*refs)
            else:
                log.error("the attribute 'privateAttributes' must be a list")
        else:
            builder.set(name, _ld_value(value))
    return builder.build()


def to_ld_context(evaluation_context: EvaluationContext) -> Context:
    """The LD context for an OpenFeature evaluation context (never raises; the result may
    be invalid, and evaluating with it then gives ``TARGETING_KEY_MISSING``)."""
    attributes = evaluation_context.attributes or {}
    kind = attributes.get("kind")
    if kind == "multi":
        multi = ContextMultiBuilder()
        for kind_name, attrs in attributes.items():
            if kind_name == "kind":
                continue
            if not isinstance(attrs, Mapping):
                log.warning("top-level attributes of a multi-kind context must be dicts")
                continue
            targeting_key = attrs.get("targetingKey")
            if targeting_key is not None and not isinstance(targeting_key, str):
                continue
            multi.add(_single(attrs, kind_name, _key(targeting_key, attrs.get("key"))))
        return multi.build()
    if kind is not None and not isinstance(kind, str):
        log.warning("'kind' is not a string; using 'user'")
        kind = "user"
    return _single(attributes, kind or "user",
                   _key(evaluation_context.targeting_key, attributes.get("key")))


# -- EvaluationDetail → resolution ---------------------------------------------------------

def to_resolution_details(detail: Any, standard_reasons: bool = False) -> FlagResolutionDetails:
    """OpenFeature resolution details for an LD evaluation detail (see the module doc).

    :param standard_reasons: also map ``RULE_MATCH`` to ``TARGETING_MATCH`` (OpenFeature's
        reason for any dynamic targeting) instead of passing it through.
    """
    reason = detail.reason if isinstance(detail.reason, dict) else {}
    kind = reason.get("kind")
    kind = kind if isinstance(kind, str) else ""
    error_code = None
    if kind == "ERROR":
        error_code = _ERROR_CODES.get(reason.get("errorKind"), ErrorCode.GENERAL)
    index = detail.variation_index
    metadata: Dict[str, Union[bool, int, float, str]] = {}
    if index is not None:
        metadata["variationIndex"] = index
    if reason.get("inExperiment") is True:
        metadata["inExperiment"] = True
    for name, typ in (("ruleIndex", int), ("ruleId", str), ("prerequisiteKey", str),
                      ("bigSegmentsStatus", str)):
        value = reason.get(name)
        if isinstance(value, typ) and not isinstance(value, bool):
            metadata[name] = value
    return FlagResolutionDetails(value=detail.value, error_code=error_code, error_message=None,
                                 reason=(Reason.TARGETING_MATCH
                                         if standard_reasons and kind == "RULE_MATCH"
                                         else _REASONS.get(kind, kind)),
                                 variant=None if index is None else str(index),
                                 flag_metadata=metadata)


def _cast(flag_type: FlagType, value: Any) -> Any:
    """``value`` as the typed call wants it, or ``None`` when it has another JSON type."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if flag_type == FlagType.BOOLEAN and isinstance(value, bool):
        return value
    if flag_type == FlagType.STRING and isinstance(value, str):
        return value
    if flag_type == FlagType.INTEGER and number:
        return int(value)                 # floats truncated toward zero, as LaunchDarkly's
    if flag_type == FlagType.FLOAT and number:
        return float(value)
    if flag_type == FlagType.OBJECT and isinstance(value, (dict, list)):
        return value
    return None


# -- the provider --------------------------------------------------------------------------

class ShmflagsProvider(AbstractProvider):
    """OpenFeature provider evaluating with a shmflags client.

    :param client: a :class:`shmflags.Client` (or anything with ldclient's
        ``variation_detail``); ``None`` uses :func:`shmflags.get` on each call, so a provider
        set in a preforking server's master keeps working in every worker.
    :param start_wait: seconds :meth:`initialize` waits for the client's first snapshot
        before reporting the provider not ready (it becomes ready by itself later).
    :param standard_reasons: report ``RULE_MATCH`` as ``TARGETING_MATCH``, OpenFeature's
        standard reason for rule and individual targeting; off by default, so the answers
        are exactly those of LaunchDarkly's provider.
    """

    def __init__(self, client: Any = None, start_wait: float = 5.0,
                 standard_reasons: bool = False) -> None:
        super().__init__()
        self._client = client
        self._standard_reasons = bool(standard_reasons)
        self._start_wait = float(start_wait)
        self._lock = threading.Lock()
        self._last_state: Optional[str] = None
        self._listening: List[Callable[[], None]] = []

    @property
    def client(self) -> Any:
        """The shmflags client evaluations go to."""
        if self._client is not None:
            return self._client
        from shmflags.client.singleton import get
        return get()

    # -- lifecycle ---------------------------------------------------------------------

    def get_metadata(self) -> Metadata:
        """``Metadata(name="shmflags")``."""
        return Metadata(name=PROVIDER_NAME)

    def get_provider_hooks(self) -> List[Hook]:
        """No provider hooks."""
        return []

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Wait up to ``start_wait`` for the client's data, then follow its status.

        :raises ProviderNotReadyError: no snapshot yet (the provider still emits a ready
            event once the supervisor publishes one).
        """
        client = self.client
        deadline = time.monotonic() + self._start_wait
        while not _initialized(client) and _state(client) != "OFF" \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        self._listen(client)
        if not _initialized(client):
            raise ProviderNotReadyError(error_message="shmflags client has no flag data yet")

    def shutdown(self) -> None:
        """Stop following the client's status and flag changes (the client stays open:
        it may be the process-wide ``shmflags.get()``)."""
        for undo in self._listening:
            try:
                undo()
            except Exception:  # noqa: BLE001 - shutting down must not raise
                log.exception("removing a listener failed")
        self._listening = []

    def _listen(self, client: Any) -> None:
        if self._listening:
            return
        status_provider = getattr(client, "data_source_status_provider", None)
        if status_provider is not None:
            status_provider.add_listener(self._on_status)
            self._listening.append(lambda: status_provider.remove_listener(self._on_status))
        tracker = getattr(client, "flag_tracker", None)
        if tracker is not None:
            tracker.add_listener(self._on_flag_change)
            self._listening.append(lambda: tracker.remove_listener(self._on_flag_change))

    def _on_status(self, status: Any) -> None:
        state = getattr(status.state, "name", str(status.state)).upper()
        if state == "INITIALIZING":
            return
        with self._lock:
            if state == self._last_state:
                return
            self._last_state = state
        error = getattr(status, "error", None)
        message = getattr(error, "message", None) or None
        if state == "VALID":
            self.emit_provider_ready(ProviderEventDetails())
        elif state == "OFF":
            self.emit_provider_error(ProviderEventDetails(
                error_code=ErrorCode.GENERAL,
                message=message or "the data source has stopped permanently"))
        elif state == "INTERRUPTED":
            self.emit_provider_stale(ProviderEventDetails(
                message=message or "the data source is interrupted"))

    def _on_flag_change(self, change: Any) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=[change.key]))

    # -- tracking ----------------------------------------------------------------------

    def track(self, tracking_event_name: str,
              evaluation_context: Optional[EvaluationContext] = None,
              tracking_event_details: Any = None) -> None:
        """Send a custom event (``client.track``); without a context nothing is sent."""
        if evaluation_context is None:
            log.info("track(%r) without an evaluation context: no event sent",
                     tracking_event_name)
            return
        context = to_ld_context(evaluation_context)
        client = self.client
        if tracking_event_details is None:
            client.track(tracking_event_name, context)
            return
        data = tracking_event_details.attributes or None
        value = tracking_event_details.value
        if value is not None:
            client.track(tracking_event_name, context, data, value)
        elif data is not None:
            client.track(tracking_event_name, context, data)
        else:
            client.track(tracking_event_name, context)

    # -- resolution --------------------------------------------------------------------

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: Optional[EvaluationContext] = None
                                ) -> FlagResolutionDetails[bool]:
        """The flag as a boolean."""
        return self._resolve(FlagType.BOOLEAN, flag_key, default_value, evaluation_context)

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: Optional[EvaluationContext] = None
                               ) -> FlagResolutionDetails[str]:
        """The flag as a string."""
        return self._resolve(FlagType.STRING, flag_key, default_value, evaluation_context)

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: Optional[EvaluationContext] = None
                                ) -> FlagResolutionDetails[int]:
        """The flag as an integer (a float value is truncated toward zero)."""
        return self._resolve(FlagType.INTEGER, flag_key, default_value, evaluation_context)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: Optional[EvaluationContext] = None
                              ) -> FlagResolutionDetails[float]:
        """The flag as a float."""
        return self._resolve(FlagType.FLOAT, flag_key, default_value, evaluation_context)

    def resolve_object_details(self, flag_key: str, default_value: Any,
                               evaluation_context: Optional[EvaluationContext] = None
                               ) -> FlagResolutionDetails[Union[dict, list]]:
        """The flag as a JSON object or array."""
        return self._resolve(FlagType.OBJECT, flag_key, default_value, evaluation_context)

    def _resolve(self, flag_type: FlagType, flag_key: str, default_value: Any,
                 evaluation_context: Optional[EvaluationContext]) -> FlagResolutionDetails:
        if evaluation_context is None:
            return FlagResolutionDetails(value=default_value, reason=Reason.ERROR,
                                         error_code=ErrorCode.TARGETING_KEY_MISSING)
        detail = self.client.variation_detail(flag_key, to_ld_context(evaluation_context),
                                              default_value)
        value = _cast(flag_type, detail.value)
        if value is None:
            return FlagResolutionDetails(value=default_value, reason=Reason.ERROR,
                                         error_code=ErrorCode.TYPE_MISMATCH)
        return to_resolution_details(
            EvaluationDetail(value, detail.variation_index, detail.reason),
            self._standard_reasons)


def _initialized(client: Any) -> bool:
    try:
        return bool(client.is_initialized())
    except Exception:  # noqa: BLE001 - treat a broken client as not ready
        return False


def _state(client: Any) -> str:
    provider = getattr(client, "data_source_status_provider", None)
    if provider is None:
        return ""
    try:
        state = provider.status.state
    except Exception:  # noqa: BLE001
        return ""
    return getattr(state, "name", str(state)).upper()
