"""The continual trainer: a round learns a new label without forgetting, crashes publish nothing,
one trainer at a time, the scheduler's triggers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from online.feedback.buffer import Incoming, ReplayBuffer
from online.learning import step as continual
from online.learning.round import RoundRunner
from online.lifecycle.gate import Gate, GoldenSet
from online.lifecycle.leader import Leadership
from online.wiring.stores import Stores
from services import trainer
from services.trainer import Scheduler
from tests import helpers
from tests.helpers import wait_for


@pytest.fixture
def tsettings(settings, tmp_path):
    """Settings for the keyword task: its golden set, short rounds a tiny model learns from."""
    return helpers.keyword_round_settings(
        settings, tmp_path, holdout_fraction=0.2, holdout_min_new=20, train_min_new=5, train_max_wait_s=0.5,
        train_poll_s=0.1, distill_weight=1.0,
    )  # fmt: skip


@pytest.fixture
def parts(tsettings):
    stores = Stores.from_settings(tsettings)
    registry, buffer = stores.registry, stores.buffer
    model, v1 = helpers.train_v1(tsettings, registry)
    return registry, buffer, model, v1


def feed(buffer: ReplayBuffer, items, tag: str = "e") -> None:
    buffer.add([Incoming(f"{tag}{i}", t, lab, "test", time.time()) for i, (t, lab) in enumerate(items)])


def runner(tsettings, registry, buffer) -> RoundRunner:
    gate = Gate(tsettings, GoldenSet.for_settings(tsettings))
    return RoundRunner(Stores.from_settings(tsettings), gate, seed_examples=helpers.examples(helpers.OLD, 40, seed=1))


def test_a_round_learns_a_new_label_and_old_labels_keep_theirs(tsettings, parts):
    registry, buffer, v1_model, v1 = parts
    test_old = helpers.examples(helpers.OLD, 20, seed=11)
    test_new = helpers.examples(["travel"], 20, seed=12)
    old_before = helpers.accuracy(v1_model, test_old)
    assert old_before >= 0.9  # the tiny model did learn the task
    feed(buffer, helpers.examples(["travel"], 30, seed=5))

    report = runner(tsettings, registry, buffer).run()

    assert report.status == "promoted", [(c.name, c.value, c.threshold, c.detail) for c in report.gate.checks]
    assert report.added_labels == ["travel"] and report.holdout > 0 and report.rehearsed >= 60
    assert registry.live() == report.version and registry.get(report.version).parent == v1.version
    assert buffer.new_count() == 0  # the cursor moved past the round's samples
    model, manifest = registry.load(report.version)
    assert manifest.labels[:3] == v1.labels  # old head rows kept in place
    recipe = ("balanced", 1.0, "logit-adjust", True)  # the defaults, recorded with the version
    assert (
        tuple(getattr(manifest.round, k) for k in ("rehearsal_strategy", "distill_weight", "bias_correction", "probe_first"))
        == recipe
    )
    new_acc = helpers.accuracy(model, test_new)
    assert new_acc >= 0.9
    assert helpers.accuracy(model, test_old) >= old_before - 0.05
    assert {c.name for c in report.gate.checks} == {
        "finite_outputs",
        "golden_accuracy",
        "label_regression",
        "holdout",
        "latency",
    }


def test_a_crash_mid_round_publishes_nothing_and_keeps_the_cursor(tsettings, parts):
    registry, buffer, _, v1 = parts
    feed(buffer, helpers.examples(["travel"], 30, seed=5))
    cursor, pending = buffer.cursor(), buffer.new_count()

    def crash_after_first_batch(total: int):
        def progress(n: int) -> None:
            raise RuntimeError("trainer killed mid-round")

        return progress

    with pytest.raises(RuntimeError, match="killed mid-round"):
        runner(tsettings, registry, buffer).run(crash_after_first_batch)
    assert [m.version for m in registry.list()] == [v1.version]
    assert registry.live() == v1.version
    assert buffer.cursor() == cursor and buffer.new_count() == pending
    # The next round retries the same samples.
    assert runner(tsettings, registry, buffer).run().new == pending


def test_a_broken_candidate_is_rejected_and_never_serves(tsettings, parts, monkeypatch):
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    registry, buffer, _, v1 = parts
    feed(buffer, helpers.examples(helpers.OLD, 10, seed=21))
    real_learn = continual.learn

    def shuffled_head(*args, **kwargs):
        result = real_learn(*args, **kwargs)
        with __import__("torch").no_grad():
            head = result.model.head
            order = list(range(head.out_features))[1:] + [0]  # every label's row moved to another label
            head.weight.copy_(head.weight[order].clone())
            head.bias.copy_(head.bias[order].clone())
        return result

    monkeypatch.setattr("online.learning.round.learn", shuffled_head)
    with TestClient(create_app(tsettings)) as client:
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v1.version, what="v1 served")
        report = runner(tsettings, registry, buffer).run()
        assert report.status == "rejected"
        assert "golden_accuracy" in report.gate.failed() and "label_regression" in report.gate.failed()
        manifest = registry.get(report.version)
        assert manifest.status == "rejected" and manifest.gate.passed is False
        assert registry.live() == v1.version
        with pytest.raises(ValueError, match="rejected"):
            registry.promote(report.version)
        for _ in range(5):
            assert client.post("/v1/predict", json={"text": "rain today"}).json()["model_version"] == v1.version


def test_two_trainers_never_train_at_once(tsettings, parts, monkeypatch):
    registry, buffer, _, _ = parts
    running, overlaps = [0], [0]
    lock = threading.Lock()
    real_learn = continual.learn

    def watched_learn(*args, **kwargs):
        with lock:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
        try:
            time.sleep(0.3)  # widen the window in which a second trainer could slip in
            return real_learn(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr("online.learning.round.learn", watched_learn)
    stop = threading.Event()
    trainers = [Scheduler(Stores.from_settings(tsettings), stop), Scheduler(Stores.from_settings(tsettings), stop)]
    for t in trainers:
        t._runner = runner(tsettings, registry, buffer)
    threads = [threading.Thread(target=t.loop, daemon=True) for t in trainers]
    for th in threads:
        th.start()
    try:
        for batch in range(3):
            feed(buffer, helpers.examples(["travel"], 6, seed=30 + batch), tag=f"b{batch}-")
            wait_for(lambda: buffer.new_count() == 0, timeout=120, what=f"batch {batch} trained")
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    assert overlaps[0] == 1
    assert len({m.version for m in registry.list()}) >= 2  # rounds did run


def test_a_dead_trainers_lock_lapses(tsettings):
    name = f"{tsettings.key_prefix}:trainer:leader"
    code = (
        "import sys, time, redis; from online.lifecycle.leader import Leadership;"
        f"l = Leadership(redis.Redis.from_url({tsettings.redis_url!r}), {name!r}, ttl_s=1.0);"
        "assert l.acquire(); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        other = Leadership(Stores.from_settings(tsettings).redis, name, ttl_s=1.0)
        assert not other.acquire(wait_s=0)  # held and renewed while the holder lives
        child.kill()
        child.wait()
        assert other.acquire(wait_s=10)  # the killed holder's lock expires
        other.release()
    finally:
        child.kill()


@pytest.mark.parametrize("screening", [True, False], ids=["quarantine-on", "quarantine-off"])
def test_a_deposed_leader_stops_training_and_publishes_nothing(tsettings, parts, monkeypatch, screening):
    """Someone deletes the leader lock right under a live holder (an operator, a failover, a Redis
    restart that lost the key): the holder's next fence notices, and the round writes nothing at all."""
    registry, buffer, _, v1 = parts
    settings = tsettings.model_copy(update={"quarantine": screening})
    stores = Stores.from_settings(settings)
    scheduler = Scheduler(stores, threading.Event())
    scheduler._runner = runner(settings, registry, buffer)
    feed(buffer, helpers.examples(["travel"], 30, seed=50))
    cursor, held = buffer.cursor(), len(buffer.held())

    monkeypatch.setattr(trainer, "FENCE_EVERY_S", 0.0)  # confirm leadership at every training batch
    batches = []
    real_stoppable = trainer._stoppable

    def counting(*args):
        advance = real_stoppable(*args)

        def counted(n: int) -> None:
            batches.append(n)
            advance(n)

        return counted

    monkeypatch.setattr(trainer, "_stoppable", counting)
    real_acquire = scheduler.leader.acquire

    def acquire_then_lose(wait_s=0):
        ok = real_acquire(wait_s)
        stores.redis.delete(stores.keys.trainer_leader)
        return ok

    scheduler.leader.acquire = acquire_then_lose

    assert scheduler.run_round() is None  # abandoned
    assert [m.version for m in registry.list()] == [v1.version]  # nothing published
    assert registry.live() == v1.version
    assert buffer.cursor() == cursor and buffer.new_count() == 30  # the samples wait for the next leader
    assert len(buffer.held()) == held  # the screen wrote nothing either
    assert len(batches) <= 1  # training stopped at its first batch, if it got that far
    assert scheduler.metrics.rounds.labels("failed")._value.get() == 1


def test_scheduler_triggers_on_count_or_age(tsettings, parts):
    _, buffer, _, _ = parts
    scheduler = Scheduler(
        Stores.from_settings(tsettings.model_copy(update={"train_max_wait_s": 1.0})), threading.Event()
    )
    assert not scheduler.due()
    feed(buffer, helpers.examples(["travel"], 1, seed=40), tag="one")
    assert not scheduler.due()  # one sample: wait for more, up to train_max_wait_s
    wait_for(scheduler.due, timeout=10, what="the age trigger")
    scheduler._waiting_since = time.monotonic()
    feed(buffer, helpers.examples(["travel"], 6, seed=41), tag="many")
    assert scheduler.due()  # at least train_min_new samples: at once
