"""Registry lifecycle: automatic rollback on live feedback, version collection, promotion by an admin,
and two API processes following promote and rollback."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from online.lifecycle import auto_rollback, promotion
from online.lifecycle.registry import ModelRegistry
from online.model import TextClassifier
from online.monitoring.live_accuracy import Judgement, LiveAccuracy, VersionAccuracy
from online.wiring.stores import Stores
from services.api.app import create_app
from services.supervisor import api_process
from services.trainer import Scheduler
from tests.helpers import wait_for


@pytest.fixture
def registry(settings) -> ModelRegistry:
    return Stores.from_settings(settings).registry


@pytest.fixture
def model(settings) -> TextClassifier:
    return TextClassifier.from_base(settings.base_model, ["a", "b"])


def judge(live_acc: LiveAccuracy, version: int, right: int, wrong: int) -> None:
    """Feedback on ``version``'s own predictions: ``right`` thumbs up, ``wrong`` corrections."""
    tag = f"{version}-{time.monotonic_ns()}"
    live_acc.record(
        [
            Judgement(f"{tag}-{i}", version, i < right, time.time(), f"p{tag}-{i}", f"user{i % 5}")
            for i in range(right + wrong)
        ]
    )


def chain(registry: ModelRegistry, model: TextClassifier, n: int) -> list[int]:
    versions, parent = [], None
    for _ in range(n):
        v = registry.publish(model, parent=parent).version
        registry.promote(v)
        versions.append(v)
        parent = v
    return versions


def test_auto_rollback_fires_on_a_bad_version_and_not_on_a_good_one(settings, registry, model):
    live_acc = Stores.from_settings(settings).live_accuracy
    s = settings.model_copy(update={"auto_rollback_min_samples": 50})
    v1, good = chain(registry, model, 2)
    judge(live_acc, v1, right=85, wrong=15)
    judge(live_acc, good, right=40, wrong=8)  # too few judgements yet: no decision
    assert auto_rollback.check(registry, live_acc, s) is None
    judge(live_acc, good, right=42, wrong=10)  # 82/100 vs 85/100: not significantly worse
    assert auto_rollback.check(registry, live_acc, s) is None and registry.live() == good

    bad = registry.publish(model, parent=good).version
    registry.promote(bad)
    judge(live_acc, bad, right=30, wrong=40)  # 43% vs 82%
    scheduler = Scheduler(Stores.from_settings(s), stop=__import__("threading").Event())
    scheduler.housekeeping()  # the trainer's loop runs the check under the leader lock
    assert registry.live() == good
    last = registry.history()[-1]
    assert (last.action, last.version, last.previous) == ("auto_rollback", good, bad)
    assert "p=" in last.reason
    assert scheduler.metrics.auto_rollbacks._value.get() == 1
    # Once rolled back it does not fire again, and a version made live by a rollback is not judged.
    scheduler.housekeeping()
    assert registry.history()[-1] == last


def test_two_proportion_test():
    parent, child = VersionAccuracy(1, 200, 180), VersionAccuracy(2, 200, 150)
    assert auto_rollback.two_proportion_p_value(parent, child) < 1e-4
    assert auto_rollback.two_proportion_p_value(child, parent) > 0.99
    assert auto_rollback.two_proportion_p_value(parent, VersionAccuracy(2, 200, 180)) == pytest.approx(0.5)


def test_old_versions_are_collected_but_live_parent_and_rejected_recent_kept(registry, model):
    versions = chain(registry, model, 6)
    rejected = registry.publish(model, parent=versions[-1], status="rejected").version
    promotion.rollback(registry)  # live: versions[-2]; previous: versions[-1]
    collected = registry.collect(keep=3)
    assert collected == versions[:3]  # v4 is the parent of live; v5, v6 and the rejected one are recent
    for v in collected:
        assert registry.get(v).status == "collected" and not registry.path(v).exists()
        with pytest.raises(ValueError, match="collected"):
            registry.promote(v)
    assert registry.get(rejected).status == "rejected" and registry.path(rejected).exists()
    assert registry.live() == versions[-2] and registry.path(versions[-2]).exists()


def test_promote_needs_the_admin_token_and_refuses_rejected_versions(settings, registry, model):
    v1, v2 = chain(registry, model, 2)
    rejected = registry.publish(model, parent=v2, status="rejected").version
    secured = settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(secured)) as client:
        assert client.post("/v1/models/promote", json={"version": v1}).status_code == 401
        assert (
            client.post("/v1/models/promote", json={"version": v1}, headers={"Authorization": "Bearer x"}).status_code
            == 403
        )
        resp = client.post("/v1/models/promote", json={"version": rejected}, headers=auth)
        assert resp.status_code == 409 and "rejected" in resp.json()["detail"]
        assert client.post("/v1/models/promote", json={"version": 999}, headers=auth).status_code == 404
        resp = client.post("/v1/models/promote", json={"version": v1, "reason": "back"}, headers=auth)
        assert resp.status_code == 200 and resp.json()["version"] == v1
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v1, what="swap to v1")
        listed = {m["version"]: m for m in client.get("/v1/models").json()["versions"]}
        assert listed[rejected]["status"] == "rejected" and listed[rejected]["live"] is False


def test_training_pause_and_resume_are_admin_only(settings):
    secured = settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(secured)) as client:
        assert client.post("/v1/training/pause", json={}).status_code == 401
        assert client.get("/v1/training").json()["paused"] is False
        assert client.post("/v1/training/pause", json={"reason": "incident"}, headers=auth).json()["paused"] is True
        assert client.get("/v1/training").json()["reason"] == "incident"
        assert client.post("/v1/training/resume", headers=auth).json()["paused"] is False
        no_body = client.post("/v1/training/pause", headers=auth)  # found as a user: `curl -X POST` answered 422
        assert no_body.status_code == 200 and no_body.json()["reason"] == "paused (API)"


@pytest.mark.slow
def test_two_api_processes_swap_on_promote_and_on_rollback(settings, registry, model):
    v1 = chain(registry, model, 1)[0]
    fast = settings.model_copy(update={"model_poll_s": 30.0})  # pub/sub, not polling, must carry the swap
    with api_process(fast) as a, api_process(fast) as b:

        def served() -> set[int]:
            return {httpx.post(f"{u}/v1/predict", json={"text": "hi"}).json()["model_version"] for u in (a, b)}

        assert served() == {v1}
        model.grow(["c"])
        v2 = registry.publish(model, parent=v1).version
        registry.promote(v2)
        wait_for(lambda: served() == {v2}, timeout=30, what="both processes on v2")
        promotion.rollback(registry)
        wait_for(lambda: served() == {v1}, timeout=30, what="both processes back on v1")
