"""Progressive delivery: a candidate answers a share of live traffic (sticky per user or text, the same on
every replica), feedback on its own answers judges it against live over the same window, and the
trainer steps it up to 100% or rolls it back; too little evidence decides nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr

from online.contract import ArmEvidence, CanarySlot
from online.lifecycle.canary import decide, routed_to_canary
from online.wiring.stores import Stores
from services.api.app import create_app
from services.trainer import Scheduler
from tests import helpers
from tests.helpers import ConsumerThread, wait_for

TOKEN = "canary-admin"


# --- routing ------------------------------------------------------------------------------------
def test_routing_is_sticky_monotone_and_close_to_its_share():
    keys = [f"user-{i}" for i in range(20_000)]
    at = {share: {k for k in keys if routed_to_canary(k, 7, share)} for share in (0.05, 0.25, 0.5)}
    for share, chosen in at.items():
        assert abs(len(chosen) / len(keys) - share) < 0.015, (share, len(chosen))
    assert at[0.05] <= at[0.25] <= at[0.5]  # a step up only adds users: nobody flips back to live
    assert {k for k in keys if routed_to_canary(k, 7, 0.25)} == at[0.25]  # the same answer every time
    other = {k for k in keys if routed_to_canary(k, 8, 0.25)}
    assert len(other & at[0.25]) < 0.5 * len(at[0.25])  # another canary picks other users first
    assert not any(routed_to_canary(k, 7, 0.0) for k in keys[:100])


# --- the decision -------------------------------------------------------------------------------
def _slot(**kw) -> CanarySlot:
    now = time.time()
    return CanarySlot(**({"version": 2, "parent": 1, "share": 0.05, "steps": [0.25, 0.5], "since": now - 600,
                          "step_since": now - 600} | kw))  # fmt: skip


def _arm(version: int, judged: int, correct: int, sources: int = 5, requests: int = 0, errors: int = 0) -> ArmEvidence:
    return ArmEvidence(
        version=version, judged=judged, correct=correct, accuracy=correct / judged if judged else None,
        sources=sources, requests=requests, errors=errors, p95_ms=10.0 if requests else None,
    )  # fmt: skip


@pytest.fixture
def rules(settings):
    return settings.model_copy(
        update={"canary_min_judged": 50, "canary_min_step_s": 60, "verdict_min_sources": 3, "canary_margin": 0.02}
    )


def test_a_clearly_worse_canary_is_rolled_back_and_a_clearly_better_one_steps_up(rules):
    now = time.time()
    worse = decide(_slot(), _arm(1, 200, 180), _arm(2, 100, 60), rules, now)
    assert worse.action == "rollback" and "worse" in worse.reason
    better = decide(_slot(step_since=now), _arm(1, 200, 120), _arm(2, 100, 95), rules, now)
    assert better.action == "step" and "better" in better.reason  # early: before its 60 s at the share
    last = decide(_slot(steps=[]), _arm(1, 200, 120), _arm(2, 100, 95), rules, now)
    assert last.action == "promote"


def test_an_even_canary_steps_up_once_shown_not_worse_and_after_its_time_and_judgements_at_the_share(rules):
    now = time.time()
    even_live, even_canary = _arm(1, 8000, 7200), _arm(2, 6000, 5400)  # what showing "not 2% worse" takes
    assert decide(_slot(step_since=now - 10), even_live, even_canary, rules, now).action == "hold"
    assert decide(_slot(judged_at_step=5960), even_live, even_canary, rules, now).action == "hold"  # 40 at this share
    assert decide(_slot(), even_live, even_canary, rules, now).action == "step"
    few = decide(_slot(), _arm(1, 400, 360), _arm(2, 120, 108), rules, now)  # even, but too few to show it
    assert few.action == "hold" and "not shown within 2%" in few.reason


def test_a_somewhat_worse_canary_is_never_walked_up_by_rechecking(rules):
    """5 points worse but not yet significantly: at every tick as judgements arrive, it holds (a point
    estimate within the margin by chance must not step it up)."""
    now, rng = time.time(), __import__("random").Random(0)
    live_c = cand_c = 0
    for n in range(1, 401):
        live_c += rng.random() < 0.85
        cand_c += rng.random() < 0.80
        out = decide(_slot(), _arm(1, 4 * n, 4 * live_c), _arm(2, n, cand_c), rules, now)
        assert out.action in ("hold", "rollback"), (n, out)
        if out.action == "rollback":
            break


def test_too_little_evidence_or_too_few_sources_decide_nothing(rules):
    now = time.time()
    few = decide(_slot(), _arm(1, 200, 190), _arm(2, 30, 0), rules, now)  # 0 of 30 right, but only 30
    assert few.action == "hold" and "too little evidence" in few.reason
    one_voice = decide(_slot(), _arm(1, 200, 190), _arm(2, 200, 0, sources=1), rules, now)
    assert one_voice.action == "hold" and "sources" in one_voice.reason
    paused = decide(_slot(paused=True), _arm(1, 200, 190), _arm(2, 200, 0), rules, now)
    assert paused.action == "hold" and "paused" in paused.reason
    stale = decide(_slot(since=now - 7 * 3600), _arm(1, 10, 9), _arm(2, 10, 9), rules, now)
    assert stale.action == "abort" and "undecided" in stale.reason  # it would hold rounds back forever


def test_a_canary_that_errors_is_rolled_back_whatever_its_accuracy(rules):
    now = time.time()
    s = rules.model_copy(update={"canary_min_requests": 100})
    out = decide(_slot(), _arm(1, 10, 10, requests=1000, errors=0), _arm(2, 10, 10, requests=200, errors=20), s, now)
    assert out.action == "rollback" and "error rate" in out.reason
    paused = decide(_slot(paused=True), _arm(1, 10, 10, requests=1000), _arm(2, 10, 10, requests=200, errors=20), s, now)
    assert paused.action == "rollback"  # a pause holds the steps, not the safety


# --- on real Redis and Kafka, two replicas ------------------------------------------------------
def _setup(kafka_settings, tmp_path):
    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 15, seed=7))
    s = kafka_settings.model_copy(
        update={
            "golden_path": golden,
            "admin_token": SecretStr(TOKEN),
            "canary_steps": [0.25, 0.5],
            "canary_min_judged": 15,
            "canary_min_step_s": 0.0,
            "canary_min_requests": 10**6,  # latency on a shared test machine decides nothing here
            "verdict_min_sources": 1,  # one test client judges; the unit tests above cover sources
            "auto_rollback": False,
        }
    )
    registry = Stores.from_settings(s).registry
    model, v1 = helpers.train_v1(s, registry)
    with torch.no_grad():  # the candidate answers each text with the label after live's
        model.head.weight.copy_(model.head.weight[[1, 2, 0]].clone())
        model.head.bias.copy_(model.head.bias[[1, 2, 0]].clone())
    v2 = registry.publish(model, parent=v1.version).version
    return s, registry, v1.version, v2


def _drive(s, registry, clients, truth_from: int, max_ticks: int = 40):
    """Simulated users on two replicas: every answer judged (thumbs up when it is the truth, which is
    what version ``truth_from`` answers), the trainer's housekeeping after each wave; until the canary
    ends. Returns the shares seen, the answers' versions and the HTTP statuses."""
    shares, versions, statuses = [], Counter(), Counter()
    scheduler = Scheduler(Stores.from_settings(s), threading.Event())
    wave = 0
    with ConsumerThread(s):
        while registry.canary() is not None and wave < max_ticks:
            shares.append(registry.canary().share)
            texts = [f"{t} #{wave}-{i}" for i, (t, _) in enumerate(helpers.examples(helpers.OLD, 20, seed=wave))]
            events = []
            for k, start in enumerate(range(0, len(texts), 20)):
                r = clients[k % 2].post("/v1/predict", json={"texts": texts[start : start + 20]})
                statuses[r.status_code] += 1
                for p in r.json()["predictions"]:
                    versions[p["model_version"]] += 1
                    right = p["model_version"] == truth_from  # the two never agree: labels rotated
                    events.append(
                        {"kind": "thumbs", "prediction_id": p["prediction_id"], "vote": "up" if right else "down", "source": "u"}
                    )
            assert clients[0].post("/v1/feedback", json={"events": events}).status_code == 202
            judged_before = sum(versions.values()) - len(events)
            wait_for(
                lambda: _judged(s, registry) >= judged_before + len(events) or registry.canary() is None,
                what="feedback judged",
            )
            scheduler.housekeeping()
            wave += 1
            if registry.canary() is not None:
                want = registry.canary().share
                for c in clients:  # both replicas follow the step before the next wave
                    wait_for(lambda c=c: (c.get("/v1/canary").json()["canary"] or {}).get("share") == want, what="step seen")
    return shares, versions, statuses


def _judged(s, registry) -> int:
    acc = Stores.from_settings(s).live_accuracy
    return sum(a.n for a in acc.all())


def _replicas(s):
    return [TestClient(create_app(s)) for _ in range(2)]


def _start(client, version: int, share: float):
    r = client.post(
        "/v1/canary", json={"action": "start", "version": version, "share": share, "reason": "test"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def test_a_better_canary_is_stepped_to_100_percent_on_users_feedback_with_no_failed_request(kafka_settings, tmp_path):
    s, registry, v1, v2 = _setup(kafka_settings, tmp_path)
    a, b = _replicas(s)
    with a, b:
        for c in (a, b):
            wait_for(lambda c=c: c.get("/readyz").json()["ready"], what="live served")
        assert _start(a, v2, 0.1)["action"] == "canary_start"
        for c in (a, b):
            wait_for(lambda c=c: c.get("/v1/canary").json()["loaded_by_this_replica"], what="canary loaded")
        shares, versions, statuses = _drive(s, registry, [a, b], truth_from=v2)
        assert registry.live() == v2 and registry.canary() is None
        assert sorted(set(shares)) == [0.1, 0.25, 0.5]  # every step taken, in order
        assert set(statuses) == {200}  # no failed request through every step
        actions = [h.action for h in registry.history()]
        assert actions[-4:] == ["canary_start", "canary_step", "canary_step", "promote"]
        assert "canary passed at 50%" in registry.history()[-1].reason
        for c in (a, b):  # every replica serves it to everyone now
            wait_for(lambda c=c: c.post("/v1/predict", json={"text": "rain today"}).json()["model_version"] == v2, what="v2 live")


def test_a_worse_canary_is_rolled_back_before_its_next_step(kafka_settings, tmp_path):
    s, registry, v1, v2 = _setup(kafka_settings, tmp_path)
    a, b = _replicas(s)
    with a, b:
        for c in (a, b):
            wait_for(lambda c=c: c.get("/readyz").json()["ready"], what="live served")
        _start(b, v2, 0.1)
        for c in (a, b):
            wait_for(lambda c=c: c.get("/v1/canary").json()["loaded_by_this_replica"], what="canary loaded")
        shares, versions, statuses = _drive(s, registry, [a, b], truth_from=v1)
        arms = Stores.from_settings(s).live_accuracy
        assert arms.get(v2).thumbs_down_rate == 1.0 and arms.get(v1).thumbs_down_rate == 0.0  # every vote a thumb
        assert registry.live() == v1 and registry.canary() is None
        assert set(shares) == {0.1}  # never stepped up
        assert set(statuses) == {200}
        last = registry.history()[-1]
        assert last.action == "canary_rollback" and "worse" in last.reason
        assert 0 < versions[v2] < 0.3 * sum(versions.values())  # only its share ever saw it
        for c in (a, b):
            wait_for(lambda c=c: c.get("/v1/canary").json()["canary"] is None, what="canary ended")
            assert c.post("/v1/predict", json={"text": "rain today #x"}).json()["model_version"] == v1


def test_a_canary_with_too_little_evidence_stays_at_its_share(kafka_settings, tmp_path):
    s, registry, v1, v2 = _setup(kafka_settings, tmp_path)
    with helpers.served_app(s) as client:
        _start(client, v2, 0.1)
        wait_for(lambda: client.get("/v1/canary").json()["loaded_by_this_replica"], what="canary loaded")
        scheduler = Scheduler(Stores.from_settings(s), threading.Event())
        answers = [
            p
            for start in (0, 40)
            for p in client.post("/v1/predict", json={"texts": [f"sunny forecast {i}" for i in range(start, start + 40)]}).json()["predictions"]
        ]
        events = [
            {"kind": "thumbs", "prediction_id": p["prediction_id"], "vote": "down", "source": "u"}
            for p in answers
            if p["model_version"] == v2
        ]
        assert events  # some texts went to the canary, each one judged wrong
        assert client.post("/v1/feedback", json={"events": events}).status_code == 202
        with ConsumerThread(s):
            wait_for(lambda: client.get("/v1/canary").json()["candidate"]["judged"] == len(events), what="judged")
        scheduler.housekeeping()
        report = client.get("/v1/canary").json()
        assert registry.canary().share == 0.1 and registry.live() == v1
        assert report["decision"] == "hold" and "too little evidence" in report["reason"]


def test_a_user_sees_one_version_on_every_replica_and_operators_steer_the_canary(kafka_settings, tmp_path):
    s, registry, v1, v2 = _setup(kafka_settings, tmp_path)
    a, b = _replicas(s)
    with a, b:
        for c in (a, b):
            wait_for(lambda c=c: c.get("/readyz").json()["ready"], what="live served")
        _start(a, v2, 0.3)
        for c in (a, b):
            wait_for(lambda c=c: c.get("/v1/canary").json()["loaded_by_this_replica"], what="canary loaded")
        seen: dict[str, set[int]] = {}
        for i in range(40):
            user = f"user-{i}"
            for c in (a, b):
                for text in ("rain today", f"my balance {i}"):
                    r = c.post("/v1/predict", json={"texts": [text, "a song"], "user": user})
                    assert r.status_code == 200
                    seen.setdefault(user, set()).update(p["model_version"] for p in r.json()["predictions"])
        assert all(len(v) == 1 for v in seen.values())  # sticky: one version per user, whatever replica or text
        on_canary = sum(v == {v2} for v in seen.values())
        assert 0 < on_canary < 40
        assert {v2} == seen[next(u for u in seen if routed_to_canary(u, v2, 0.3))]

        admin = {"Authorization": f"Bearer {TOKEN}"}
        assert a.post("/v1/canary", json={"action": "pause"}).status_code == 401
        assert a.post("/v1/canary", json={"action": "pause", "reason": "looking"}, headers=admin).json()["action"] == "canary_pause"
        assert registry.canary().paused
        shown = a.get("/v1/canary").json()
        assert shown["decision"] == "hold" and "paused" in shown["reason"]
        models = a.get("/v1/models").json()
        assert models["canary"]["version"] == v2 and models["history"][-1]["reason"] == "looking"
        r = a.post("/v1/canary", json={"action": "promote", "reason": "looks good"}, headers=admin)
        assert r.status_code == 200 and r.json()["action"] == "promote"
        assert registry.live() == v2 and registry.canary() is None
        assert a.post("/v1/canary", json={"action": "abort"}, headers=admin).status_code == 409  # none runs


def _canary_of_two_candidates(settings):
    """Live v1 (untrained, in the registry only) and two published candidates, the first on a 5% canary."""
    from online.lifecycle import canary
    from online.model import TextClassifier

    registry = Stores.from_settings(settings).registry
    model = TextClassifier.from_base(settings.base_model, ["a", "b"])
    v1 = registry.publish(model, parent=None).version
    registry.promote(v1)
    v2, v3 = (registry.publish(model, parent=v1).version for _ in range(2))
    canary.start(registry, v2, settings, "test", share=0.05)
    return registry, (v1, v2, v3)


def test_a_canary_ends_with_an_entry_when_live_moves_under_it(settings):
    from online.lifecycle import canary, promotion

    registry, (v1, v2, v3) = _canary_of_two_candidates(settings)
    assert registry.protected() >= {v1, v2}  # a canary's files are never collected
    promotion.promote(registry, v3, "an operator's promotion")
    assert registry.canary() is None
    aborted, promoted = registry.history()[-2:]
    assert (aborted.action, aborted.version, promoted.action) == ("canary_abort", v2, "promote")
    assert registry.last_change().version == v3  # canary entries never count as moves of live
    with pytest.raises(ValueError, match="no canary"):
        canary.pause(registry, True, "")


def test_moves_decided_on_a_canary_that_changed_meanwhile_are_refused(settings):
    from online.lifecycle import canary
    from online.lifecycle.registry import CanaryMoved

    registry, (v1, v2, v3) = _canary_of_two_candidates(settings)
    with pytest.raises(CanaryMoved, match="already"):
        canary.start(registry, v3, settings, "a second one", share=0.05)  # one at a time
    read = registry.canary()
    canary.abort(registry, "an operator's abort")  # lands between the trainer's read and its step
    step = read.model_copy(update={"share": 0.25, "steps": [0.5]})
    with pytest.raises(CanaryMoved):
        registry.set_canary(step, "canary_step", "stale", current=read)
    assert registry.canary() is None  # the aborted canary did not come back
