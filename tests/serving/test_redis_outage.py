"""Serving survives its dependencies: with Redis killed, predictions keep being answered and the Redis
side effects are dropped (counted), not waited on; a failed version load is retried."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from online.model import TextClassifier
from online.stores import Stores
from services.api.app import create_app
from services.embedded import start_redis
from tests.helpers import wait_for


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_predictions_are_answered_while_redis_is_down(settings, tmp_path):
    server = start_redis(tmp_path / "redis")
    s = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{server.port}/0"})
    try:
        registry = Stores.from_settings(s).registry
        v1 = registry.publish(TextClassifier.from_base(s.base_model, ["a", "b"]), parent=None).version
        registry.promote(v1)
        with TestClient(create_app(s)) as client:
            wait_for(lambda: client.get("/readyz").json()["model_version"] == v1, what="v1 served")
            assert client.post("/v1/predict", json={"text": "before"}).status_code == 200

            server.kill()
            answers = [client.post("/v1/predict", json={"texts": [f"during {i}", "x"]}) for i in range(20)]
            assert [r.status_code for r in answers] == [200] * 20
            assert {r.json()["model_version"] for r in answers} == {v1}
            metrics = client.get("/metrics").text
            dropped = _metric(metrics, "online_side_effects_dropped_total")
            assert dropped >= 40  # every text's log/review write skipped or failed, none waited on
            assert _metric(metrics, "online_forward_hook_failures_total") == 0  # Redis faults are not bugs
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["model_version"] == v1
    finally:
        server.stop()


def test_a_version_that_fails_to_load_is_retried_with_backoff(settings):
    registry = Stores.from_settings(settings).registry
    model = TextClassifier.from_base(settings.base_model, ["a", "b"])
    v1 = registry.publish(model, parent=None).version
    registry.promote(v1)
    v2 = registry.publish(model, parent=v1).version
    weights = registry.path(v2) / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-16] + b"\0" * 16)
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v1, what="v1 served")
        registry.promote(v2)  # below the promotion module on purpose: a corrupted version goes live
        failed = wait_for(lambda: client.get("/readyz").json()["failed_loads"], what="the failure reported")
        assert failed[0]["slot"] == "live" and failed[0]["version"] == v2
        wait_for(lambda: client.get("/readyz").json()["failed_loads"][0]["tries"] >= 2, what="a retry")
        weights.write_bytes(good)  # the operator repairs the file: the next retry serves it
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, timeout=60, what="v2 after repair")
        assert client.get("/readyz").json()["failed_loads"] == []
