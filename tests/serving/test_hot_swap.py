"""A replica follows the live alias: it swaps on promote, and refuses a corrupted version while serving on."""

from __future__ import annotations

from fastapi.testclient import TestClient

from online.model import TextClassifier
from online.wiring.stores import Stores
from services.api.app import create_app
from tests.helpers import wait_for


def test_swaps_on_promote_and_refuses_a_corrupted_version(settings):
    registry = Stores.from_settings(settings).registry
    model = TextClassifier.from_base(settings.base_model, ["a", "b"])
    v1 = registry.publish(model, parent=None).version
    registry.promote(v1)
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v1, what="v1 served")

        model.grow(["c"])
        v2 = registry.publish(model, parent=v1).version
        registry.promote(v2)
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="swap to v2")
        body = client.post("/v1/predict", json={"text": "hello"}).json()
        assert body["model_version"] == v2 and {t["label"] for t in body["predictions"][0]["top_k"]} <= {"a", "b", "c"}

        v3 = registry.publish(model, parent=v2).version
        weights = registry.path(v3) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)  # flipped bytes: checksum fails
        registry.promote(v3)
        ready = wait_for(
            lambda: (r := client.get("/readyz").json())["last_load_error"] and r, what="the load failure reported"
        )
        assert ready["model_version"] == v2 and f"version {v3}" in ready["last_load_error"]
        assert client.post("/v1/predict", json={"text": "still up"}).json()["model_version"] == v2
        assert f'online_model_load_failures_total{{version="{v3}"}}' in client.get("/metrics").text
