"""Shadow evaluation: a candidate answers a share of live traffic, its answers are logged and counted,
never returned to a client; feedback judges it next to live on the same requests; the trainer promotes
it after the shadow period."""

from __future__ import annotations

import threading

import torch
from fastapi.testclient import TestClient

from online.wiring.stores import Stores
from services.api.app import create_app
from services.trainer import Scheduler
from tests import helpers
from tests.helpers import ConsumerThread, wait_for


def test_a_shadow_candidates_answers_never_reach_a_client(kafka_settings, tmp_path):
    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 15, seed=7))
    s = kafka_settings.model_copy(
        update={
            "golden_path": golden,
            "shadow_min_requests": 20,
            "shadow_min_agreement": 0.0,
            "shadow_min_judged": 5,
            "verdict_min_sources": 1,  # one test client judges; tests/lifecycle/test_verdict_floods.py covers more
        }  # fmt: skip
    )
    registry = Stores.from_settings(s).registry
    model, v1 = helpers.train_v1(s, registry)
    with torch.no_grad():  # the candidate answers differently: every label's row moved to the next label
        model.head.weight.copy_(model.head.weight[[1, 2, 0]].clone())
        model.head.bias.copy_(model.head.bias[[1, 2, 0]].clone())
    v2 = registry.publish(model, parent=v1.version).version
    registry.set_shadow(v2, share=1.0)
    texts = [t for t, _ in helpers.examples(helpers.OLD, 8, seed=9)]
    with TestClient(create_app(s)) as client:
        wait_for(lambda: client.get("/readyz").json()["ready"], what="live served")
        wait_for(lambda: client.get("/v1/shadow").json().get("loaded_by_this_replica"), what="shadow loaded")
        live_answers = []
        for start in range(0, len(texts), 8):
            body = client.post("/v1/predict", json={"texts": texts[start : start + 8]}).json()
            for p in body["predictions"]:
                assert p["model_version"] == v1.version  # always live's answer
                assert "shadow" not in str(p)
            live_answers += body["predictions"]
        report = client.get("/v1/shadow").json()
        assert report["requests"] == len(texts) and report["agreement"] < 0.5  # it was asked, and disagreed

        # Feedback on shadowed requests judges both on the same requests.
        events = [
            {"kind": "thumbs", "prediction_id": p["prediction_id"], "vote": "up", "source": "t"} for p in live_answers
        ]
        assert client.post("/v1/feedback", json={"events": events}).status_code == 202
        with ConsumerThread(s):
            report = wait_for(
                lambda: (r := client.get("/v1/shadow").json())["judged"] == len(events) and r, what="judgements"
            )
        assert report["live_accuracy_same_requests"] == 1.0 and report["shadow_accuracy"] < 0.5

        # The trainer's housekeeping ends a shadow that does worse than live: it never goes live.
        Scheduler(Stores.from_settings(s), threading.Event()).housekeeping()
        assert registry.shadow() is None and registry.live() == v1.version
        wait_for(lambda: client.get("/v1/shadow").json()["shadow"] is None, what="shadow ended")


def test_the_trainer_promotes_a_shadow_that_agrees_after_its_period(settings):
    from online.model import TextClassifier

    s = settings.model_copy(update={"shadow_min_requests": 50, "shadow_min_agreement": 0.9, "shadow_min_judged": 10})
    stores = Stores.from_settings(s)
    registry = stores.registry
    model = TextClassifier.from_base(s.base_model, ["a", "b"])
    v1 = registry.publish(model, parent=None).version
    registry.promote(v1)
    v2 = registry.publish(model, parent=v1).version
    registry.set_shadow(v2, share=0.5)
    ledger = stores.shadow
    scheduler = Scheduler(stores, threading.Event())
    ledger.count(v2, requests=30, agreed=29)
    scheduler.housekeeping()
    assert registry.shadow().version == v2 and registry.live() == v1  # the period is not over yet
    ledger.count(v2, requests=30, agreed=28)
    scheduler.housekeeping()
    assert registry.live() == v2 and registry.shadow() is None
    last = registry.history()[-1]
    assert last.action == "promote" and "shadow period passed" in last.reason
