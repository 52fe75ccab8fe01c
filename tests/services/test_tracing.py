"""Optional OpenTelemetry tracing: a span per API request carrying the access log's request id; health
and metrics scrapes untraced; a clear error when it is switched on without the extra installed."""

from __future__ import annotations

import sys

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.api import tracing
from services.api.app import create_app


def test_a_span_per_request_with_its_request_id(settings, monkeypatch):
    spans = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "default_exporter", lambda: spans)
    app = create_app(settings.model_copy(update={"otel_traces": True}))
    client = TestClient(app)  # no lifespan: /dashboard needs no stores
    answer = client.get("/dashboard", headers={"X-Request-ID": "trace-me-42"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-me-42"
    assert client.get("/healthz").status_code in (200, 503)
    app.state.tracer_provider.force_flush()

    servers = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert [s.attributes["http.route"] for s in servers] == ["/dashboard"]  # /healthz is not traced
    assert servers[0].attributes[tracing.REQUEST_ID] == "trace-me-42"
    assert servers[0].resource.attributes["service.name"] == "online-api"


def test_switched_on_without_the_extra_is_a_clear_error(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", None)  # as if not installed
    with pytest.raises(tracing.TracingUnavailable, match=r"pip install 'online\[otel\]'"):
        create_app(settings.model_copy(update={"otel_traces": True}))


def test_off_by_default(settings):
    app = create_app(settings)
    assert settings.otel_traces is False and not hasattr(app.state, "tracer_provider")
