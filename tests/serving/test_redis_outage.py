"""Serving survives its dependencies: with Redis killed, predictions keep being answered and the Redis
side effects are dropped (counted), not waited on; a failed version load is retried."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from online.model import TextClassifier
from online.wiring.stores import Stores
from services.api.app import create_app
from services.embedded import start_redis, start_tansu
from tests.helpers import live_untrained, served_app, wait_for


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
            # every text's log/review write skipped or failed, none waited on (counted by the side-effect
            # thread, moments after the answers)
            metrics = wait_for(
                lambda: (
                    (t := client.get("/metrics").text) and _metric(t, "online_side_effects_dropped_total") >= 40 and t
                ),
                timeout=10,
                what="the dropped side effects counted",
            )
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


def _label(text: str) -> dict:
    return {"kind": "label", "text": text, "label": "a", "source": "outage-test", "event_id": text.replace(" ", "-")}


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_redis_down_feedback_follows_the_rate_limit_fail_mode_and_is_logged_once(
    kafka_settings, tmp_path, caplog, fail_mode
):
    server = start_redis(tmp_path / "redis")
    s = kafka_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{server.port}/0", "feedback_rate_limit_fail": fail_mode}
    )
    try:
        live_untrained(s)
        with served_app(s) as client:
            assert client.post("/v1/feedback", json=_label("before")).status_code == 202
            assert client.get("/readyz").json()["dependencies"]["redis"]["up"] is True

            caplog.clear()
            with caplog.at_level(logging.INFO, logger="online"):
                server.kill()
                predictions = [client.post("/v1/predict", json={"text": f"during {i}"}) for i in range(10)]
                feedback = [client.post("/v1/feedback", json=_label(f"during {i}")) for i in range(10)]
            assert [r.status_code for r in predictions] == [200] * 10
            if fail_mode == "open":  # the broker still takes feedback; only the limit is skipped
                assert [r.status_code for r in feedback] == [202] * 10
            else:
                assert {r.status_code for r in feedback} == {503}
                assert all(int(r.headers["Retry-After"]) >= 1 for r in feedback)
                assert "rate limiter" in feedback[0].json()["detail"]
            outage_lines = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
            assert len(outage_lines) == 1, [r.getMessage() for r in caplog.records]  # once, not per call
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r not in outage_lines]

            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True  # still routable
            redis_state = ready.json()["dependencies"]["redis"]
            assert redis_state["up"] is False and redis_state["last_error"]
            assert _metric(client.get("/metrics").text, 'online_dependency_up{dependency="redis"}') == 0

            server = start_redis(tmp_path / "redis", port=server.port)  # back, same port and data
            wait_for(
                lambda: client.get("/readyz").json()["dependencies"]["redis"]["up"], timeout=60, what="redis seen up"
            )
            assert _metric(client.get("/metrics").text, 'online_dependency_up{dependency="redis"}') == 1
    finally:
        server.stop()


def test_broker_down_feedback_is_refused_at_once_and_predictions_go_on(kafka_settings, tmp_path):
    broker = start_tansu(tmp_path / "tansu")
    s = kafka_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{broker.port}"})
    try:
        live_untrained(s)
        with served_app(s) as client:
            assert client.post("/v1/feedback", json=_label("before")).status_code == 202
            broker.kill()
            first = client.post("/v1/feedback", json=_label("first"))  # waits at most feedback_timeout_s
            assert first.status_code == 503 and int(first.headers["Retry-After"]) >= 1
            ready = client.get("/readyz").json()
            assert ready["ready"] is True and ready["dependencies"]["broker"]["up"] is False
            # the breaker is open: the next calls are refused without waiting on the broker again
            later = [client.post("/v1/feedback", json=_label(f"later {i}")) for i in range(5)]
            assert {r.status_code for r in later} == {503}
            assert all("unreachable" in r.json()["detail"] for r in later), [r.json() for r in later]
            assert client.post("/v1/predict", json={"text": "still answered"}).status_code == 200
    finally:
        broker.stop()
