"""OpenTelemetry tracing hook: flag evaluations as ``feature_flag`` span events.

Safe in any worker; starts nothing. Needs ``opentelemetry-api`` (``pip install
shmflags[otel]``). Register it like any ldclient hook::

    from shmflags.integrations.otel import Hook, HookOptions
    client.add_hook(Hook(HookOptions(include_value=True)))

Names, attributes and options are those of LaunchDarkly's ``launchdarkly-server-sdk-otel``
package (``ldotel.tracing``, version 1.3), so dashboards and queries built for it keep
working: after each evaluation an event named ``feature_flag`` is added to the current span
with ``feature_flag.key``, ``feature_flag.provider.name`` (``"LaunchDarkly"``),
``feature_flag.context.id`` (the context's fully-qualified key), and when known
``feature_flag.set.id`` (environment id), ``feature_flag.result.variationIndex``,
``feature_flag.result.reason.inExperiment`` and, with ``include_value``,
``feature_flag.result.value`` (the value as JSON text). With ``add_spans`` each evaluation
also gets its own span, named after the client method (``variation``, ``variation_detail``,
...), carrying ``feature_flag.key`` and ``feature_flag.context.id``; the event then goes to
the enclosing span, as in ldotel.

The tracer is looked up on each use, not at construction, so a hook created before the
application installs its tracer provider (or in a gunicorn master before fork) still reports
to the provider in force.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

from opentelemetry import trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import Span, get_current_span, set_span_in_context

from shmflags.client.hooks import EvaluationSeriesContext, Metadata
from shmflags.client.hooks import Hook as _BaseHook

__all__ = ["Hook", "HookOptions", "TRACER_NAME", "EVENT_NAME", "PROVIDER_NAME"]

#: Instrumentation scope of the spans (ldotel's).
TRACER_NAME = "launchdarkly"
#: Name of the span event recorded per evaluation.
EVENT_NAME = "feature_flag"
#: Value of ``feature_flag.provider.name``.
PROVIDER_NAME = "LaunchDarkly"

ATTR_KEY = "feature_flag.key"
ATTR_PROVIDER = "feature_flag.provider.name"
ATTR_CONTEXT = "feature_flag.context.id"
ATTR_SET_ID = "feature_flag.set.id"
ATTR_VARIATION = "feature_flag.result.variationIndex"
ATTR_IN_EXPERIMENT = "feature_flag.result.reason.inExperiment"
ATTR_VALUE = "feature_flag.result.value"


@dataclass
class HookOptions:
    """What the tracing hook records (ldotel's ``HookOptions``).

    :ivar add_spans: also open a span per evaluation (experimental in ldotel too).
    :ivar include_variant: deprecated alias of ``include_value``.
    :ivar include_value: add the evaluated value, as JSON text, to the span event.
    :ivar environment_id: ``feature_flag.set.id`` to report; overrides the environment id the
        client passes to hooks. Anything but a non-empty string is ignored.
    """

    add_spans: bool = False
    include_variant: bool = False
    include_value: bool = False
    environment_id: Optional[str] = None


def _valid_environment_id(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value != "" else None


def _context_id(context: Any) -> str:
    """The fully-qualified key of whatever the caller passed as the context."""
    fqk = getattr(context, "fully_qualified_key", None)
    if isinstance(fqk, str):
        return fqk
    from shmflags.context import coerce  # a dict or another Context type
    ctx = coerce(context)
    return ctx.fully_qualified_key if ctx.valid else ""


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(str(value))


class Hook(_BaseHook):
    """Evaluation hook that reports flag evaluations to OpenTelemetry.

    :param options: a :class:`HookOptions`; the keyword arguments, when given, override the
        fields of the same name (``create_spans`` is accepted as a synonym of ``add_spans``).
    """

    def __init__(self, options: Optional[HookOptions] = None, *,
                 add_spans: Optional[bool] = None, create_spans: Optional[bool] = None,
                 include_value: Optional[bool] = None,
                 environment_id: Optional[str] = None) -> None:
        opts = options if options is not None else HookOptions()
        spans = add_spans if add_spans is not None else create_spans
        self._add_spans = bool(opts.add_spans if spans is None else spans)
        self._include_value = bool(opts.include_value or opts.include_variant
                                   if include_value is None else include_value)
        self._environment_id = _valid_environment_id(
            opts.environment_id if environment_id is None else environment_id)
        if opts.include_variant:
            warnings.warn("HookOptions.include_variant is deprecated; use include_value",
                          DeprecationWarning, stacklevel=2)

    @property
    def metadata(self) -> Metadata:
        """``Metadata(name="LaunchDarkly Tracing Hook")``, as ldotel's."""
        return Metadata(name="LaunchDarkly Tracing Hook")

    def before_evaluation(self, series_context: EvaluationSeriesContext, data: dict) -> dict:
        """Open the evaluation's span when ``add_spans`` is on and make it current."""
        if not self._add_spans:
            return data
        attributes = {ATTR_CONTEXT: _context_id(series_context.context),
                      ATTR_KEY: series_context.key}
        span = trace.get_tracer(TRACER_NAME).start_span(name=series_context.method,
                                                        attributes=attributes)
        token = attach(set_span_in_context(span))
        return {**data, "span": span, "token": token}

    def after_evaluation(self, series_context: EvaluationSeriesContext, data: dict,
                         detail: Any) -> dict:
        """End the evaluation's span, if any, then add the ``feature_flag`` event to the
        current span (a no-op when there is no recording span)."""
        span = data.get("span") if isinstance(data, dict) else None
        if isinstance(span, Span):
            detach(data["token"])
            span.end()
        current = get_current_span()
        if current is None or not current.is_recording():
            return data
        attributes: Dict[str, Any] = {
            ATTR_CONTEXT: _context_id(series_context.context),
            ATTR_KEY: series_context.key,
            ATTR_PROVIDER: PROVIDER_NAME,
        }
        env = self._environment_id or _valid_environment_id(
            getattr(series_context, "environment_id", None))
        if env is not None:
            attributes[ATTR_SET_ID] = env
        index = getattr(detail, "variation_index", None)
        if index is not None:
            attributes[ATTR_VARIATION] = index
        reason = getattr(detail, "reason", None) or {}
        if isinstance(reason, dict) and reason.get("inExperiment"):
            attributes[ATTR_IN_EXPERIMENT] = True
        if self._include_value:
            attributes[ATTR_VALUE] = _json(getattr(detail, "value", None))
        current.add_event(EVENT_NAME, attributes=attributes)
        return data
