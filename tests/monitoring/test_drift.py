"""Drift monitoring: out-of-scope traffic raises the input-drift and out-of-scope alerts, in-domain
traffic does not, and a version with bad live accuracy shows it against its parent."""

from __future__ import annotations

import random
import time

import pytest
from fastapi.testclient import TestClient

from online.data import Clinc150
from online.monitoring.live_accuracy import Judgement
from online.wiring.stores import Stores
from services.api.app import create_app
from tests import helpers
from tests.helpers import wait_for

WINDOW = 60


@pytest.fixture
def dsettings(settings, tmp_path):
    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 40, seed=7))
    return settings.model_copy(update={"golden_path": golden, "drift_window": WINDOW, "max_batch_size": 20})


@pytest.fixture
def live_v1(dsettings):
    registry = Stores.from_settings(dsettings).registry
    _, manifest = helpers.train_v1(dsettings, registry)
    return registry, manifest


def send(client: TestClient, texts: list[str]) -> None:
    for start in range(0, len(texts), 20):
        resp = client.post("/v1/predict", json={"texts": texts[start : start + 20]})
        assert resp.status_code == 200, resp.text


def windows(client: TestClient) -> list[dict]:
    return client.get("/v1/drift", params={"history": 100}).json()["history"]


def test_out_of_scope_traffic_alerts_and_in_domain_traffic_does_not(dsettings, live_v1):
    _, v1 = live_v1
    oos = [t for t, _ in Clinc150.open(dsettings.data_dir).split("oos_test")]
    with TestClient(create_app(dsettings)) as client:
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v1.version, what="v1 served")
        in_domain = [t for t, _ in helpers.examples(helpers.OLD, WINDOW, seed=99)]  # 3 windows
        random.Random(0).shuffle(in_domain)  # live traffic mixes its intents
        send(client, in_domain)
        quiet = wait_for(lambda: len(w := windows(client)) >= 3 and w, what="three in-domain windows")
        for window in quiet:
            assert set(window["signals"]) == {"knn_rate", "mmd_p", "oos_rate", "js_p"}
            assert not any(s["alert"] for s in window["signals"].values()), window["signals"]
        assert client.get("/v1/drift").json()["alerts"] == []

        send(client, oos[: 2 * WINDOW])
        report = wait_for(
            lambda: len((r := client.get("/v1/drift", params={"history": 100}).json())["history"]) >= 5 and r,
            what="two out-of-scope windows",
        )
        last = report["history"][-1]["signals"]
        assert last["knn_rate"]["alert"] and last["mmd_p"]["alert"], last
        assert last["oos_rate"]["alert"], last
        raised = {a["signal"] for a in report["alerts"]}
        assert {"knn_rate", "mmd_p", "oos_rate"} <= raised
        metrics = client.get("/metrics").text
        assert 'online_drift_alert{signal="knn_rate"} 1.0' in metrics
        assert 'online_drift_alerts_total{signal="oos_rate"} 1.0' in metrics


def test_a_bad_version_shows_lower_live_accuracy_than_its_parent(dsettings, live_v1):
    registry, v1 = live_v1
    model, _ = registry.load(v1.version)
    v2 = registry.publish(model, parent=v1.version).version
    registry.promote(v2)
    live_acc = Stores.from_settings(dsettings).live_accuracy
    now = time.time()
    live_acc.record(
        [Judgement(f"a{i}", v1.version, i % 10 != 0, now, f"pa{i}", f"u{i % 5}") for i in range(100)]
    )  # 90%
    live_acc.record([Judgement(f"b{i}", v2, i % 2 == 0, now, f"pb{i}", f"u{i % 5}") for i in range(100)])  # 50%
    with TestClient(create_app(dsettings)) as client:
        report = client.get("/v1/drift").json()
        accs = {e["version"]: e for e in report["live_accuracy"]}
        assert accs[v2]["accuracy"] < accs[v1.version]["accuracy"]
        assert accs[v2]["vs_parent"]["worse"] is True and accs[v2]["vs_parent"]["p_value"] < 0.01
        assert report["feedback"]["live_accuracy"]["alert"] is True
        assert "live_accuracy" in {a["signal"] for a in report["alerts"]}
