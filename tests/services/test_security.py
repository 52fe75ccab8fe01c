"""Locked-down surfaces: admin endpoints, per-source feedback keys, body size limits, CORS."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from online.wiring.stores import Stores
from services.api.app import create_app
from tests.helpers import live_untrained

ADMIN = [
    ("/v1/models/rollback", {}),
    ("/v1/models/promote", {"version": 1}),
    ("/v1/training/pause", {}),
    ("/v1/training/resume", None),
    ("/v1/quarantine/release", {"source": "mallory"}),
    ("/v1/quarantine/drop", {"sids": ["abc"]}),
]


@pytest.mark.parametrize("path,body", ADMIN)
def test_admin_endpoints_refuse_without_the_token_and_with_a_wrong_one(settings, path, body):
    with TestClient(create_app(settings)) as client:  # no token configured: refused, not open
        resp = client.post(path, json=body)
        assert resp.status_code == 403 and "ONLINE_ADMIN_TOKEN" in resp.json()["detail"]
    secured = settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    with TestClient(create_app(secured)) as client:
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers={"Authorization": "Bearer guess"}).status_code == 403
        assert client.post(path, json=body, headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
    assert Stores.from_settings(settings).control.paused() is False  # nothing changed


def test_feedback_keys_are_per_source(kafka_settings):
    s = kafka_settings.model_copy(update={"feedback_api_keys": {"crm": SecretStr("k-crm"), "app": SecretStr("k-app")}})
    event = {"kind": "label", "text": "book a flight", "label": "book_flight", "source": "crm"}
    with TestClient(create_app(s)) as client:
        assert client.post("/v1/feedback", json=event).status_code == 401
        assert client.post("/v1/feedback", json=event, headers={"X-API-Key": "nope"}).status_code == 401
        wrong = client.post("/v1/feedback", json=event, headers={"X-API-Key": "k-app"})
        assert wrong.status_code == 403 and "'app'" in wrong.json()["detail"]
        ok = client.post("/v1/feedback", json=event, headers={"X-API-Key": "k-crm"})
        assert ok.status_code == 202, ok.text


def test_request_bodies_over_the_limit_are_refused(settings):
    s = settings.model_copy(update={"max_body_bytes": 2048})
    live_untrained(s)
    with TestClient(create_app(s)) as client:
        big = {"texts": ["x" * 100] * 30}
        resp = client.post("/v1/predict", json=big)
        assert resp.status_code == 413 and "2048" in resp.json()["detail"]

        def chunks():  # no Content-Length: the limit is counted as the body streams in
            yield b'{"texts": ['
            for _ in range(40):
                yield b'"' + b"y" * 100 + b'",'
            yield b'"end"]}'

        resp = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
        assert resp.status_code == 413
        assert client.post("/v1/predict", json={"text": "small"}).status_code in (200, 503)


def test_cors_is_off_unless_configured(settings):
    preflight = {"Origin": "https://ops.example.com", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings)) as client:
        resp = client.options("/v1/predict", headers=preflight)
        assert "access-control-allow-origin" not in resp.headers
    allowed = settings.model_copy(update={"cors_origins": ["https://ops.example.com"]})
    with TestClient(create_app(allowed)) as client:
        resp = client.options("/v1/predict", headers=preflight)
        assert resp.headers["access-control-allow-origin"] == "https://ops.example.com"
        other = client.options("/v1/predict", headers={**preflight, "Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers
