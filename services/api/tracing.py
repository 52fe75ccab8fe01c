"""Optional OpenTelemetry tracing of the API (``ONLINE_OTEL_TRACES=true``, ``pip install 'online[otel]'``).

A span per request (route, status, duration) from the maintained FastAPI instrumentation, tagged with
the request id of the access log (``online.request_id``), so a trace and a log line find each other.
Where spans go is OpenTelemetry's own configuration, not ours: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME`` (default ``online-api``) and the other standard ``OTEL_*`` variables. Health,
readiness and metrics scrapes are not traced (they would drown the rest).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastapi import FastAPI

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

EXCLUDED = "healthz,readyz,metrics"
REQUEST_ID = "online.request_id"


class TracingUnavailable(RuntimeError):
    """Tracing is on but the ``otel`` extra is not installed."""


def instrument(app: FastAPI, exporter: "SpanExporter | None" = None) -> None:
    """Trace every request of ``app``; spans go to ``exporter`` (default: OTLP over HTTP, configured by
    the standard ``OTEL_*`` variables), batched off the request path."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"ONLINE_OTEL_TRACES is on but OpenTelemetry is not installed ({exc.name}): pip install 'online[otel]'"
        ) from None
    exporter = exporter or default_exporter()
    service = os.environ.get("OTEL_SERVICE_NAME", "online-api")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    app.state.tracer_provider = provider  # flushed at shutdown by the app's lifespan
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED)


def default_exporter() -> "SpanExporter":
    """OTLP over HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default http://localhost:4318)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tag_request(request_id: str) -> None:
    """Put the request id on the current span (a no-op without tracing or without the package)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(REQUEST_ID, request_id)
