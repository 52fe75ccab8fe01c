"""Rollback by hand: admin token required, replicas swap back."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from online.model import TextClassifier
from online.wiring.stores import Stores
from services.api.app import create_app
from services.cli import app as cli
from tests.helpers import settings_env, wait_for


@pytest.fixture
def two_versions(settings):
    registry = Stores.from_settings(settings).registry
    model = TextClassifier.from_base(settings.base_model, ["a", "b"])
    v1 = registry.publish(model, parent=None).version
    registry.promote(v1)
    v2 = registry.publish(model, parent=v1).version
    registry.promote(v2)
    return registry, v1, v2


def served(client) -> int | None:
    return client.get("/readyz").json()["model_version"]


def test_rollback_needs_the_admin_token(settings, two_versions):
    registry, v1, v2 = two_versions
    with TestClient(create_app(settings)) as client:  # no token configured: refused, not open
        resp = client.post("/v1/models/rollback", json={})
        assert resp.status_code == 403 and "ONLINE_ADMIN_TOKEN" in resp.json()["detail"]
    secured = settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    with TestClient(create_app(secured)) as client:
        assert client.post("/v1/models/rollback", json={}).status_code == 401
        wrong = client.post("/v1/models/rollback", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert registry.live() == v2


def test_rollback_swaps_every_replica_back(settings, two_versions):
    registry, v1, v2 = two_versions
    secured = settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(secured)) as a, TestClient(create_app(secured)) as b:
        wait_for(lambda: served(a) == v2 and served(b) == v2, what="both replicas on v2")
        resp = a.post("/v1/models/rollback", json={"reason": "test"}, headers=auth)
        assert resp.status_code == 200, resp.text
        assert (resp.json()["version"], resp.json()["previous"]) == (v1, v2)
        wait_for(lambda: served(a) == v1 and served(b) == v1, what="both replicas back on v1")
        assert a.post("/v1/models/rollback", json={}, headers=auth).status_code == 409  # v1 has no parent
        assert a.get("/v1/models").json()["history"][-1]["action"] == "rollback"


def test_rollback_cli(settings, two_versions, monkeypatch):
    registry, v1, v2 = two_versions
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli, ["rollback"])
    assert result.exit_code == 0, result.output
    assert registry.live() == v1
    result = CliRunner().invoke(cli, ["rollback", "--to", str(v2)])
    assert result.exit_code == 0 and registry.live() == v2
