"""Optional integrations: OpenTelemetry tracing (``otel``), an OpenFeature provider
(``openfeature``) and the worker side of Big Segments (``bigsegments``).

Safe in any process; importing this package imports none of the optional dependencies. Each
submodule imports its third-party package (``opentelemetry-api``, ``openfeature-sdk``) itself,
so ``pip install shmflags[otel]`` / ``shmflags[openfeature]`` is needed only for the one used.
"""
