"""The review queue: uncertain predictions, chosen diverse, answered by ordinary label feedback."""

from __future__ import annotations

import random

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from online.feedback.review_queue import diverse_pick
from online.wiring.stores import Stores
from services.api.app import create_app
from tests import helpers
from tests.helpers import ConsumerThread, wait_for


@pytest.fixture
def rsettings(kafka_settings, tmp_path):
    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 40, seed=7))
    return kafka_settings.model_copy(
        update={
            "golden_path": golden,
            "drift_window": 1000,
            "review_max_margin": 0.3,
            "reviewer_token": SecretStr("rev-key"),
        }
    )


REVIEWER = {"Authorization": "Bearer rev-key"}


def test_the_queue_returns_uncertain_diverse_items_and_feedback_answers_them(rsettings):
    registry = Stores.from_settings(rsettings).registry
    helpers.train_v1(rsettings, registry)
    confident = [t for t, _ in helpers.examples(helpers.OLD, 10, seed=5)]
    # Texts with a keyword of two labels: the model cannot be sure. One pair in many paraphrases.
    rng = random.Random(1)
    pairs = [(a, b) for a in helpers.OLD for b in helpers.OLD if a < b]
    mixed = [f"{rng.choice(helpers.KEYWORDS[a])} {rng.choice(helpers.KEYWORDS[b])}" for a, b in pairs for _ in range(3)]
    cluster = [f"{f} rain guitar" for f in helpers.FILLER]  # ten paraphrases of one unsure question
    with TestClient(create_app(rsettings)) as client:
        wait_for(lambda: client.get("/readyz").json()["ready"], what="model served")
        traffic = confident + mixed + cluster
        for start in range(0, len(traffic), 16):
            assert client.post("/v1/predict", json={"texts": traffic[start : start + 16]}).status_code == 200
        assert client.get("/v1/review").status_code == 401  # it shows user texts: a token is needed
        assert client.get("/v1/review", headers={"Authorization": "Bearer nope"}).status_code == 403
        queued = client.get("/v1/review", params={"limit": 6}, headers=REVIEWER).json()
        assert queued["queued"] >= 6
        items = queued["items"]
        assert len(items) == 6
        for item in items:
            assert item["margin"] < 0.3 or item["far"], item  # unsure, or unlike anything trained on
        texts = [i["text"] for i in items]
        assert sum(t in cluster for t in texts) <= 2, texts  # not six paraphrases of one question
        assert len(set(texts)) == 6
        assert not [i for i in items if i["score"] > 0.9 and not i["far"]]  # sure and familiar: not asked

        # A labelling tool answers one: an ordinary label event naming the prediction.
        picked = items[0]
        event = {
            "kind": "label",
            "text": picked["text"],
            "label": "weather",
            "source": "labeller",
            "prediction_id": picked["prediction_id"],
        }
        assert client.post("/v1/feedback", json=event).status_code == 202
        with ConsumerThread(rsettings):
            wait_for(
                lambda: (
                    picked["prediction_id"]
                    not in {
                        i["prediction_id"]
                        for i in client.get("/v1/review", params={"limit": 200}, headers=REVIEWER).json()["items"]
                    }
                ),
                timeout=60,
                what="the answered item leaves the queue",
            )


def test_diverse_pick_spreads_over_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.01 * rng.normal(size=(20, 16)) for c in centres])
    scores = np.concatenate([np.full(20, 0.9), np.full(20, 0.8), np.full(20, 0.7)])
    picked = diverse_pick(x, scores, 3)
    assert sorted(i // 20 for i in picked) == [0, 1, 2]  # one per cluster, not three from the most uncertain
    assert picked[0] < 20  # the most uncertain cluster first


def test_items_past_the_capacity_leave_with_their_texts(settings):
    """Review items do not outlive their queue: trimmed ones are deleted, not left to their TTL."""
    from online.feedback.review_queue import ReviewItem

    stores = Stores.from_settings(settings.model_copy(update={"review_capacity": 10}))
    items = [
        ReviewItem(f"p{i}", f"text {i}", "a", 0.5, 0.1, None, False, float(i), 1, 0.0, np.zeros(4, np.float32))
        for i in range(25)
    ]
    stores.review.add(items)
    assert stores.review.size() == 10
    stored = stores.redis.keys(f"{stores.keys.review}:item:*")
    assert sorted(stored) == sorted(f"{stores.keys.review}:item:p{i}" for i in range(15, 25))  # the most uncertain


def test_a_full_queue_refuses_the_less_uncertain_without_asking_redis(settings):
    """Once full, the queue keeps only what beats its floor; a replica skips the rest before Redis, and
    forgets the floor after a while so a drained queue fills again."""
    from online.feedback.review_queue import ReviewItem

    stores = Stores.from_settings(settings.model_copy(update={"review_capacity": 10}))
    review = stores.review

    def item(pid: str, u: float) -> ReviewItem:
        return ReviewItem(pid, f"text {pid}", "a", 0.5, 0.1, None, False, u, 1, 0.0, np.zeros(4, np.float32))

    assert review.add([item(f"p{i}", 1.0 + i / 100) for i in range(10)]) == 10
    assert review.add([item("low", 0.5), item("tie", 1.0)]) == 0  # at or below the floor (1.00): not sent
    assert review.add([item("high", 1.5), item("low2", 0.2)]) == 1
    queued = {i.prediction_id for i in review.pick(20)}
    assert "high" in queued and "p0" not in queued and len(queued) == 10
    assert not stores.redis.exists(f"{stores.keys.review}:item:p0")  # left with its text

    review.answered([f"p{i}" for i in range(1, 10)] + ["high"])  # drained by answers
    assert review.add([item("late", 0.3)]) == 0  # the remembered floor still refuses it...
    review.floor_ttl_s = 0.0  # ...until it is forgotten
    assert review.add([item("late", 0.3)]) == 1
    assert "late" in {i.prediction_id for i in review.pick(20)}


def test_candidates_under_the_queues_floor_are_not_built(settings):
    """A replica that knows the queue's floor builds only the candidates that beat it (the queue would
    refuse the rest), and builds them all again once the floor is forgotten."""
    from online.feedback.review_queue import ReviewItem, candidates

    stores = Stores.from_settings(settings.model_copy(update={"review_capacity": 2}))
    review = stores.review
    assert review.floor() is None  # room: every candidate goes
    probs = np.array([[0.50, 0.45, 0.05], [0.60, 0.35, 0.05], [0.90, 0.05, 0.05]], np.float32)  # margins .05 .25 .85

    def built(above: float | None) -> list[str]:
        return [c.prediction_id for c in candidates(
            ["a", "b", "c"], ["x", "y", "z"], ["l"] * 3, probs, np.zeros((3, 4), np.float32), None, None, 0.5, 1,
            above=above,
        )]  # fmt: skip

    assert built(None) == ["a", "b"]  # margin under 0.5
    review.add(
        [
            ReviewItem(p, "t", "l", 0.5, 0.1, None, False, u, 1, 0.0, np.zeros(4, np.float32))
            for p, u in (("q1", 0.8), ("q2", 0.9))
        ]
    )
    floor = review.floor()
    assert floor == pytest.approx(0.8)  # full: its least uncertain
    assert built(floor) == ["a"]  # uncertainty 0.95 beats it; b's 0.75 would be refused
    review.floor_ttl_s = 0.0
    assert review.floor() is None
