"""The HTTP API: predictions name their version and id, bad input gets a 4xx naming the field."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from online.contract import ModelDetail, PredictResponse
from online.lifecycle.registry import ModelRegistry
from online.model import TextClassifier
from online.serving.forward import ServedPrediction
from online.wiring.stores import Stores
from services.api.app import create_app
from services.api.routers.predict import predict_body
from tests.helpers import wait_for

LABELS = ["balance", "transfer", "weather"]


@pytest.fixture
def registry(settings) -> ModelRegistry:
    return Stores.from_settings(settings).registry


@pytest.fixture
def client(settings, registry):
    manifest = registry.publish(TextClassifier.from_base(settings.base_model, LABELS), parent=None)
    registry.promote(manifest.version)
    with TestClient(create_app(settings)) as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, what="a loaded model")
        yield c


def test_not_ready_without_a_model(settings):
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        resp = c.post("/v1/predict", json={"text": "hello"})
        assert resp.status_code == 503 and "Retry-After" in resp.headers


def test_predict_one_and_many(client, settings, registry):
    one = client.post("/v1/predict", json={"text": "what is my balance"}).json()
    assert one["model_version"] == registry.live()
    (pred,) = one["predictions"]
    assert pred["label"] in LABELS and 0 <= pred["score"] <= 1
    assert len(pred["top_k"]) == settings.top_k
    assert pred["top_k"][0]["label"] == pred["label"]

    many = client.post("/v1/predict", json={"texts": ["a", "b", "c"], "top_k": 2}).json()
    assert len(many["predictions"]) == 3
    assert all(len(p["top_k"]) == 2 for p in many["predictions"])
    assert len({p["prediction_id"] for p in many["predictions"]}) == 3


def test_predictions_are_logged_for_feedback(client, settings, monkeypatch):
    from online.feedback import pii

    log = Stores.from_settings(settings).predictions  # (configures the process's masker: before counting it)
    masked: list[str] = []
    masker = pii._masker
    monkeypatch.setattr(pii, "_masker", lambda text: masked.append(text) or masker(text))
    text = "mail me at jane@example.com about my balance"
    pred = client.post("/v1/predict", json={"text": text}).json()["predictions"][0]
    # written by the replica's side-effect thread just after the answer: moments later, not before it
    record = wait_for(lambda: log.get(pred["prediction_id"]), timeout=10, what="the prediction logged")
    assert record.label == pred["label"] and record.version == pred["model_version"]
    assert "jane@example.com" not in record.text and "<EMAIL>" in record.text
    assert masked.count(text) == 1  # once for the log and the review queue (it was up to three times)


def test_the_answer_bytes_are_the_documented_response_model():
    served = [
        ServedPrediction("a" * 32, "balance", 0.5, [("balance", 0.5), ("transfer", 0.25)], 3),
        ServedPrediction("b" * 32, "ünïcode", 1.0, [("ünïcode", 1.0)], 3, source="memory", memory_event_id="e1"),
    ]
    body = predict_body(served)
    typed = PredictResponse.model_validate_json(body)
    assert json.loads(body) == json.loads(typed.model_dump_json())  # every field, nothing more
    assert typed.predictions[1].source == "memory" and typed.predictions[1].memory_event_id == "e1"


def test_the_fast_path_and_the_route_answer_alike(client, registry):
    """A JSON body is answered before FastAPI's routing (services.api.routers.predict.PredictFastPath);
    another JSON media type goes through the route: the same document either way."""
    fast = client.post("/v1/predict", json={"texts": ["what is my balance", "b"], "top_k": 2})
    routed = client.post(
        "/v1/predict",
        content=json.dumps({"texts": ["what is my balance", "b"], "top_k": 2}),
        headers={"content-type": "application/merge-patch+json"},
    )
    assert fast.status_code == routed.status_code == 200
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    for answer in (fast.json(), routed.json()):
        typed = PredictResponse.model_validate(answer)
        assert typed.model_version == registry.live() and len(typed.predictions) == 2
        assert all(len(p.top_k) == 2 for p in typed.predictions)
    strip = lambda a: [{k: v for k, v in p.items() if k != "prediction_id"} for p in a["predictions"]]
    assert strip(fast.json()) == strip(routed.json())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 1001}, "text"),
        ({"texts": []}, "texts"),
        ({"texts": ["ok"] * 65}, "texts"),
        ({"texts": ["ok", ""]}, "texts.1"),
        ({"text": 42}, "text"),
        ({"texts": "not a list"}, "texts"),
        ({"text": "ok", "top_k": 0}, "top_k"),
        ({"text": "ok", "top_k": 11}, "top_k"),
        ({"text": "ok", "unknown": 1}, "unknown"),
        ({}, "body"),
        ({"text": "a", "texts": ["b"]}, "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client, body, field):
    resp = client.post("/v1/predict", json=body)
    assert resp.status_code == 422, resp.text
    fields = [e["field"] for e in resp.json()["errors"]]
    assert any(f == field or f.startswith(field) for f in fields), fields
    assert resp.json()["detail"]


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"text": "unterminated', {"content-type": "application/json"}),
        (b"text=hello", {"content-type": "application/x-www-form-urlencoded"}),
        (b"", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
    ],
)
def test_malformed_bodies_are_4xx(client, content, headers):
    resp = client.post("/v1/predict", content=content, headers=headers)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"]


def test_a_body_that_is_not_json_is_named_as_such(client):
    """Not "1: JSON decode error" (the character offset read as a field): the body, and why."""
    resp = client.post("/v1/predict", content=b'{"text": "unterminated', headers={"content-type": "application/json"})
    assert resp.status_code == 422
    (issue,) = resp.json()["errors"]
    assert issue["field"] == "body" and issue["reason"].startswith("not valid JSON (at character")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "label", "text": "hi", "label": "balance", "source": "s", "timestamp": 1e300 * 1e300}, "timestamp"),
        ({"kind": "label", "text": "", "label": "balance", "source": "s"}, "text"),
        ({"kind": "label", "text": "hi", "source": "s"}, "label"),
        ({"kind": "nope", "source": "s"}, "kind"),
        ({"text": "hi", "label": "balance"}, "kind"),
        ({"events": [{"kind": "label", "text": "hi", "label": "b", "source": "s"}, {"kind": "thumbs", "vote": "up"}]},
         "events.1.prediction_id"),
        ({"events": [{"kind": "label", "text": "hi", "label": "b", "source": "s", "extra": 1}]}, "events.0.extra"),
        ({"events": []}, "events"),
        ([], "body"),
    ],
)  # fmt: skip
def test_bad_feedback_names_the_field_as_it_was_written(client, body, field):
    """An event is told against the one model its shape asks for, its field named as the caller wrote it
    (a bad timestamp was the last of seven errors, "tagged-union[LabelEvent,...].label.timestamp", after
    "FeedbackBatch.events: Field required" and five of "Extra inputs are not permitted")."""
    raw = json.dumps(body).replace("Infinity", "1e400").encode()
    resp = client.post("/v1/feedback", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    fields = [e["field"] for e in resp.json()["errors"]]
    assert field in fields, fields
    assert all(not f.startswith(("FeedbackBatch", "tagged-union", "event.", "batch.")) for f in fields), fields


def test_models_lists_live_version(client, registry):
    body = client.get("/v1/models").json()
    assert body["live"] == registry.live() == body["served_by_this_replica"]
    assert [v["version"] for v in body["versions"] if v["live"]] == [registry.live()]
    assert body["history"][-1]["action"] == "promote"


def test_one_model_in_full_and_an_unknown_one_is_404(client, registry):
    live = registry.live()
    body = client.get(f"/v1/models/{live}").json()
    manifest = registry.get(live)
    assert body["version"] == live and body["live"] and body["label_names"] == manifest.labels
    assert body["sha256"] == manifest.sha256 and body["base_model"] == manifest.base_model
    detail = ModelDetail.model_validate(body)
    assert detail.gate == manifest.gate and detail.round == manifest.round
    missing = client.get("/v1/models/999")
    assert missing.status_code == 404 and "999" in missing.json()["detail"]


def test_metrics_exposed(client):
    client.post("/v1/predict", json={"text": "hello"})
    text = client.get("/metrics").text
    assert "online_predictions_total" in text and "online_model_version" in text


def test_a_replica_stopped_right_after_its_start_stops(settings, caplog):
    """redis-py's pubsub can swallow the cancellation of the registry watch when it lands in its first
    read; the watch then looped for good and the replica's shutdown hung (3 of 4 tries here, before
    the fix). Each start-and-stop must end within seconds, its watch ended, not left behind."""
    import threading

    errors: list[BaseException] = []

    def start_and_stop() -> None:
        try:
            with TestClient(create_app(settings)):
                pass
        except BaseException as exc:  # re-raised below: a thread's exception would pass unseen
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="online.serving.follower")
    for _ in range(4):
        t = threading.Thread(target=start_and_stop, daemon=True)
        t.start()
        t.join(20)
        assert not t.is_alive(), "the replica's shutdown hung"
    assert not errors, errors
    assert not [r for r in caplog.records if "left behind" in r.getMessage()], "a registry watch was left behind"
