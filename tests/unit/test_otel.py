"""The OpenTelemetry hook (shmflags.integrations.otel) through a shmflags Client, read back
with the OpenTelemetry SDK's InMemorySpanExporter. Attribute names are those of
LaunchDarkly's launchdarkly-server-sdk-otel 1.3 (ldotel.tracing)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from shmflags import Client, Context  # noqa: E402
from shmflags.client.hooks import EvaluationSeriesContext, HookRunner  # noqa: E402
from shmflags.evaluation import EvaluationDetail  # noqa: E402
from shmflags.integrations.otel import Hook, HookOptions  # noqa: E402

FLAGS = {
    "flags": {
        "boolean": {"key": "boolean", "version": 3, "on": True, "salt": "s",
                    "fallthrough": {"variation": 0}, "offVariation": 1,
                    "variations": [True, False]},
        "json": {"key": "json", "version": 1, "on": True, "salt": "s",
                 "fallthrough": {"variation": 1}, "variations": [{"a": 1}, {"b": [1, 2]}]},
        "experiment": {"key": "experiment", "version": 1, "on": True, "salt": "s",
                       "trackEventsFallthrough": True,
                       "fallthrough": {"rollout": {"kind": "experiment", "variations": [
                           {"variation": 0, "weight": 100000}]}},
                       "variations": ["x", "y"]},
    }
}
ORG = Context.create("org-key", "org")

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def exporter():
    """The OTel API allows one global provider per process: set it once, clear per test."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(_PROVIDER)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def tracer(exporter):
    return trace.get_tracer("pytest")


class _Hooked:
    """Runs hooks around a Client's variation methods when the Client has no add_hook yet."""

    def __init__(self, client, hooks):
        self._client = client
        self._runner = HookRunner(hooks)

    def variation(self, key, context, default):
        return self._runner.run(key, context, default, "variation", lambda: (
            (d := self._client.variation_detail(key, context, default)), d.value))

    def variation_detail(self, key, context, default):
        return self._runner.run(key, context, default, "variation_detail", lambda: (
            (d := self._client.variation_detail(key, context, default)), d))


def make_client(*hooks):
    client = Client.from_data(FLAGS)
    if hasattr(client, "add_hook"):
        for hook in hooks:
            client.add_hook(hook)
        return client
    return _Hooked(client, hooks)


def test_nothing_recorded_outside_a_span(exporter):
    make_client(Hook()).variation("boolean", ORG, False)
    assert exporter.get_finished_spans() == ()


def test_event_on_current_span(exporter, tracer):
    client = make_client(Hook())
    with tracer.start_as_current_span("request"):
        assert client.variation("boolean", ORG, False) is True
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "feature_flag"
    assert dict(event.attributes) == {
        "feature_flag.key": "boolean",
        "feature_flag.provider.name": "LaunchDarkly",
        "feature_flag.context.id": "org:org-key",
        "feature_flag.result.variationIndex": 0,
    }


def test_include_value_is_json_text(exporter, tracer):
    client = make_client(Hook(HookOptions(include_value=True)))
    with tracer.start_as_current_span("request"):
        client.variation("boolean", ORG, False)
        client.variation_detail("json", {"key": "u1"}, None)
    (span,) = exporter.get_finished_spans()
    first, second = span.events
    assert first.attributes["feature_flag.result.value"] == "true"
    assert second.attributes["feature_flag.result.value"] == json.dumps({"b": [1, 2]})
    assert second.attributes["feature_flag.context.id"] == "u1"   # a dict context, user kind


def test_unknown_flag_has_no_variation_index(exporter, tracer):
    client = make_client(Hook(include_value=True))
    with tracer.start_as_current_span("request"):
        assert client.variation("missing", ORG, "dflt") == "dflt"
    (event,) = exporter.get_finished_spans()[0].events
    assert "feature_flag.result.variationIndex" not in event.attributes
    assert event.attributes["feature_flag.result.value"] == '"dflt"'


def test_in_experiment(exporter, tracer):
    client = make_client(Hook())
    with tracer.start_as_current_span("request"):
        detail = client.variation_detail("experiment", Context.create("u1"), "d")
    assert detail.reason.get("inExperiment") is True
    (event,) = exporter.get_finished_spans()[0].events
    assert event.attributes["feature_flag.result.reason.inExperiment"] is True


def test_environment_id_option_and_series_context(exporter, tracer):
    detail = EvaluationDetail(True, 0, {"kind": "FALLTHROUGH"})
    series = EvaluationSeriesContext(key="boolean", context=ORG, default_value=False,
                                     method="variation", environment_id="env-from-sdk")
    with tracer.start_as_current_span("request"):
        Hook().after_evaluation(series, {}, detail)
        Hook(HookOptions(environment_id="env-opt")).after_evaluation(series, {}, detail)
        Hook(HookOptions(environment_id="")).after_evaluation(series, {}, detail)
    events = exporter.get_finished_spans()[0].events
    assert [e.attributes["feature_flag.set.id"] for e in events] == [
        "env-from-sdk", "env-opt", "env-from-sdk"]


def test_spans_per_evaluation(exporter, tracer):
    client = make_client(Hook(HookOptions(add_spans=True)))
    with tracer.start_as_current_span("request"):
        client.variation("boolean", ORG, False)
        client.variation_detail("boolean", ORG, False)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["variation", "variation_detail", "request"]
    request = spans[2]
    for span in spans[:2]:
        assert dict(span.attributes) == {"feature_flag.context.id": "org:org-key",
                                         "feature_flag.key": "boolean"}
        assert span.parent.span_id == request.context.span_id
        assert span.events == ()            # the event goes to the enclosing span
    assert [e.name for e in request.events] == ["feature_flag", "feature_flag"]


def test_create_spans_keyword_and_nesting(exporter, tracer):
    client = make_client(Hook(create_spans=True), Hook(create_spans=True))
    with tracer.start_as_current_span("request"):
        client.variation("boolean", ORG, False)
    inner, middle, top = exporter.get_finished_spans()
    assert inner.parent.span_id == middle.context.span_id
    assert middle.parent.span_id == top.context.span_id
    assert [e.name for e in middle.events] == ["feature_flag"]
    assert [e.name for e in top.events] == ["feature_flag"]


def test_spans_without_a_parent_are_still_recorded(exporter):
    make_client(Hook(HookOptions(add_spans=True))).variation("boolean", ORG, False)
    (span,) = exporter.get_finished_spans()
    assert span.name == "variation" and span.parent is None


def test_include_variant_is_deprecated(exporter, tracer):
    with pytest.warns(DeprecationWarning):
        hook = Hook(HookOptions(include_variant=True))
    client = make_client(hook)
    with tracer.start_as_current_span("request"):
        client.variation("boolean", ORG, False)
    (event,) = exporter.get_finished_spans()[0].events
    assert event.attributes["feature_flag.result.value"] == "true"


def test_metadata_name():
    assert Hook().metadata.name == "LaunchDarkly Tracing Hook"


def test_broken_detail_never_breaks_the_evaluation(exporter, tracer):
    client = make_client(Hook(include_value=True))
    with tracer.start_as_current_span("request"):
        assert client.variation("boolean", {"kind": "org"}, "d") == "d"   # invalid context
    (event,) = exporter.get_finished_spans()[0].events
    assert event.attributes["feature_flag.context.id"] == ""


def test_example_runs():
    import subprocess
    import sys
    from pathlib import Path
    if not hasattr(Client, "add_hook"):
        pytest.skip("Client.add_hook (ldclient's API) is not there yet")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "examples" / "otel_example.py")],
                         capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert '"feature_flag.key": "new-checkout"' in out.stdout


# -- the same spans and events as LaunchDarkly's ldotel hook on ldclient -----------------------

def _ld_client():
    import logging
    import threading

    from ldclient.client import LDClient
    from ldclient.config import Config as LDConfig
    from ldclient.interfaces import UpdateProcessor
    from ldclient.versioned_data_kind import FEATURES, SEGMENTS

    class Stub(UpdateProcessor):
        def __init__(self, config, store, ready: threading.Event):
            store.init({FEATURES: FLAGS["flags"], SEGMENTS: {}})
            self._ready = ready

        def start(self):
            self._ready.set()

        def stop(self):
            pass

        def initialized(self):
            return True

        def is_alive(self):
            return True

    logging.getLogger("ldclient").setLevel(logging.CRITICAL)
    return LDClient(LDConfig("sdk-key", update_processor_class=Stub, send_events=False,
                             diagnostic_opt_out=True), start_wait=1)


def _recorded(exporter):
    out = []
    for span in exporter.get_finished_spans():
        out.append((span.name, dict(span.attributes or {}),
                    [(e.name, dict(e.attributes)) for e in span.events]))
    return out


@pytest.mark.parametrize("options", [{}, {"include_value": True}, {"add_spans": True},
                                     {"add_spans": True, "include_value": True,
                                      "environment_id": "env-1"}])
def test_same_telemetry_as_ldotel(exporter, tracer, options):
    ldotel = pytest.importorskip("ldotel.tracing")
    from ldclient.context import Context as LDContext
    ld = _ld_client()
    try:
        ld.add_hook(ldotel.Hook(ldotel.HookOptions(**options)))
        ours = make_client(Hook(HookOptions(**options)))
        contexts = [ORG, Context.create("u1"),
                    Context.create_multi(Context.create("u2"), Context.create("o", "org"))]
        calls = [("variation", "boolean", False), ("variation_detail", "json", None),
                 ("variation_detail", "experiment", "d"), ("variation", "missing", 3)]
        recorded = []
        for client, convert in ((ld, lambda c: LDContext.from_dict(c.to_dict())),
                                (ours, lambda c: c)):
            exporter.clear()
            for ctx in contexts:
                for method, key, default in calls:
                    with tracer.start_as_current_span("request"):
                        getattr(client, method)(key, convert(ctx), default)
            recorded.append(_recorded(exporter))
        assert recorded[1] == recorded[0]
        assert any(events for _n, _a, events in recorded[0])
    finally:
        ld.close()
