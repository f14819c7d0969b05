"""Flag evaluations as OpenTelemetry span events (and optional per-evaluation spans).

Run it: ``pip install 'shmflags[otel]' opentelemetry-sdk`` then ``python
examples/otel_example.py``. It evaluates in-process data so it needs no supervisor; in a
server, register the hook once on ``shmflags.get()`` (or with ``Config(hooks=[...])``) and every
worker reports to the tracer provider it configures.
"""
from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import shmflags
from shmflags.integrations.otel import Hook, HookOptions

FLAGS = {"flagValues": {"new-checkout": True, "banner": "spring-sale"}}


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)

    client = shmflags.Client.from_data(FLAGS)
    client.add_hook(Hook(HookOptions(include_value=True, add_spans=True)))

    tracer = trace.get_tracer("example")
    context = shmflags.Context.builder("user-key-123").kind("user").name("Sandy").build()
    with tracer.start_as_current_span("GET /checkout"):
        # Each call adds a "feature_flag" event to "GET /checkout" and, with add_spans, a
        # child span named after the method ("variation", "variation_detail").
        print("new-checkout:", client.variation("new-checkout", context, False))
        print("banner:", client.variation_detail("banner", context, "none"))


if __name__ == "__main__":
    main()
