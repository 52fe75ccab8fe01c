"""Volume cannot buy a verdict (real stack: Tansu, Redis, the consumer, the API).

Thumbs count once per prediction, and auto-rollback needs judgements from ``verdict_min_sources``
independent sources (a feedback key, or the client address the API saw): a flood of votes on one
prediction each, or on many predictions from one client, rolls nothing back.
"""

from __future__ import annotations

import uuid

import pytest

from online.lifecycle import auto_rollback
from online.model import TextClassifier
from online.wiring.stores import Stores
from tests.helpers import ConsumerThread, served_app, wait_for


@pytest.fixture
def stack(kafka_settings):
    settings = kafka_settings
    stores = Stores.from_settings(settings)
    model = TextClassifier.from_base(settings.base_model, ["a", "b"])
    v1 = stores.registry.publish(model, parent=None).version
    stores.registry.promote(v1)
    with ConsumerThread(settings), served_app(settings) as client:
        yield settings, stores, client, v1, model


def predict(client, n: int = 1) -> list[tuple[str, int]]:
    body = client.post("/v1/predict", json={"texts": [f"text number {uuid.uuid4().hex[:6]}" for _ in range(n)]}).json()
    return [(p["prediction_id"], p["model_version"]) for p in body["predictions"]]


def vote(client, prediction_ids: list[str], vote: str) -> list[tuple[str, str]]:
    """Votes under fresh names; returns (source, event_id) of each, the key the buffer dedups by."""
    events = [
        {"kind": "thumbs", "prediction_id": pid, "vote": vote, "source": f"name-{uuid.uuid4().hex[:6]}"}
        for pid in prediction_ids
    ]
    resp = client.post("/v1/feedback", json={"events": events})
    assert resp.status_code == 202, resp.text
    return [(e["source"], eid) for e, eid in zip(events, resp.json()["event_ids"], strict=True)]


def promote_child(stores, client, v1: int, model) -> int:
    v2 = stores.registry.publish(model, parent=v1).version
    stores.registry.promote(v2)
    wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="v2 served")
    return v2


def logged(stores, prediction_ids: list[str]) -> None:
    """The side-effect thread has written these predictions' log (what a thumbs vote resolves against)."""
    wait_for(lambda: all(stores.predictions.get_many(prediction_ids)), timeout=30, what="predictions logged")


def consumed(stores, event_ids: list[tuple[str, str]]) -> None:
    wait_for(lambda: all(stores.buffer.seen(event_ids)), timeout=60, what="every vote consumed")


def test_a_flood_of_thumbs_on_one_prediction_each_rolls_nothing_back(stack):
    settings, stores, client, v1, model = stack
    ((p1, on1),) = predict(client)
    v2 = promote_child(stores, client, v1, model)
    ((p2, on2),) = predict(client)
    assert (on1, on2) == (v1, v2)

    logged(stores, [p1, p2])
    ids = vote(client, [p1] * 50, "up") + vote(client, [p2] * 50, "down")  # fresh event ids, fresh names
    consumed(stores, ids)

    parent, child = stores.live_accuracy.get(v1), stores.live_accuracy.get(v2)
    assert (parent.n, parent.correct, child.n, child.correct) == (1, 1, 1, 0)  # once per prediction
    assert auto_rollback.check(stores.registry, stores.live_accuracy, settings) is None
    assert stores.registry.live() == v2


def test_one_client_voting_on_many_predictions_is_one_source(stack):
    """50 predictions of each version, each judged once, all from one client under invented names: the
    counts are there, the independent sources are not (and with one source required, it would fire)."""
    settings, stores, client, v1, model = stack
    first = [pid for pid, _ in predict(client, 50)]
    v2 = promote_child(stores, client, v1, model)
    second = [pid for pid, _ in predict(client, 50)]
    logged(stores, first + second)
    ids = vote(client, first, "up") + vote(client, second, "down")
    consumed(stores, ids)

    parent, child = stores.live_accuracy.get(v1), stores.live_accuracy.get(v2)
    assert (parent.n, child.n, parent.sources, child.sources) == (50, 50, 1, 1)
    assert auto_rollback.check(stores.registry, stores.live_accuracy, settings) is None
    assert stores.registry.live() == v2
    one = settings.model_copy(update={"verdict_min_sources": 1})  # the same evidence, were one source enough
    change = auto_rollback.check(stores.registry, stores.live_accuracy, one)
    assert change is not None and stores.registry.live() == v1
