"""A generative deployment on the product's rails: versions (base + LoRA adapter) hot-swapped under
requests with none failing and none answered by a mix of versions, and feedback on generations
(corrections, thumbs) stored in the replay buffer through the real broker and Redis."""

from __future__ import annotations

import threading
from collections import defaultdict

from online import generation_samples as gen
from online.client import Client
from online.lifecycle import auto_rollback, promotion
from online.wiring.stores import Stores
from tests.generate.helpers import generating_app, random_adapter, release_adapter, through
from tests.helpers import ConsumerThread, buffer_of, wait_for

QUESTION = "What is the capital of France?"


def test_adapters_hot_swap_under_requests_with_none_failing(gen_settings, tiny_lm):
    registry = Stores.from_settings(gen_settings).registry
    with generating_app(gen_settings) as client:
        results: list[tuple[int, int | None, str | None]] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                resp = client.post("/v1/generate", json={"prompt": QUESTION, "max_new_tokens": 8})
                body = resp.json() if resp.status_code == 200 else {}
                results.append((resp.status_code, body.get("model_version"), body.get("text")))

        def served(version: int) -> bool:
            return any(v == version for _, v, _ in results[-4:])

        threads = [threading.Thread(target=ask, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: served(1), what="the base answering")
            v2 = release_adapter(gen_settings, registry, random_adapter(tiny_lm, seed=1), parent=1).version
            wait_for(lambda: served(v2), what=f"version {v2} answering")
            v3 = release_adapter(gen_settings, registry, random_adapter(tiny_lm, seed=2), parent=v2).version
            wait_for(lambda: served(v3), what=f"version {v3} answering")
            promotion.rollback(registry, reason="test")  # to v3's parent, whose adapter is still loaded
            wait_for(lambda: served(v2) and registry.live() == v2, what="the rollback to v2 answering")
            promotion.rollback(registry, to=1, reason="test")  # the bare base again: adapters off
            wait_for(lambda: served(1) and registry.live() == 1, what="the base answering again")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        ready = client.get("/readyz").json()
        assert ready["model_version"] == 1 and ready["last_load_error"] is None

    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed during the swaps: {failed[:3]}"
    texts: dict[int, set[str]] = defaultdict(set)
    for _, version, text in results:
        texts[version].add(text)
    assert set(texts) == {1, v2, v3}
    # greedy decoding: every answer of one version is the same, so none was decoded with another's adapter
    assert all(len(t) == 1 for t in texts.values()), texts
    assert len({next(iter(t)) for t in texts.values()}) == 3, "each adapter changes the answer"
    manifests = {m.version: m for m in registry.list()}
    assert manifests[v2].family == "generative" and manifests[v2].parent == 1
    assert 0 < (registry.path(v2) / "model.safetensors").stat().st_size < 1_000_000, "a version is its adapter"


def test_corrections_and_thumbs_on_generations_reach_the_buffer(gen_kafka_settings):
    s = gen_kafka_settings
    stores = Stores.from_settings(s)
    with generating_app(s) as client, ConsumerThread(s) as consumer:
        g = client.post("/v1/generate", json={"prompt": "I am jane@example.com: who runs support?"}).json()
        wait_for(lambda: stores.predictions.get(g["generation_id"]), what="the generation logged")
        pid = g["generation_id"]
        events = [
            {"kind": "correction", "prediction_id": pid, "answer": "Our support team is Pipkin.", "source": "alice", "event_id": "c1"},
            {"kind": "thumbs", "prediction_id": pid, "vote": "down", "source": "carol", "event_id": "t1"},
            {"kind": "correction", "prediction_id": pid, "answer": "Our support team is Pipkin.", "source": "alice", "event_id": "c1"},
            {"kind": "correction", "prediction_id": "never-served", "answer": "x", "source": "alice", "event_id": "d1"},
            {"kind": "label", "text": "x", "label": "a", "prediction_id": pid, "source": "alice", "event_id": "d2"},
            {"kind": "thumbs", "prediction_id": pid, "vote": "down", "label": "a", "source": "carol", "event_id": "d3"},
        ]  # fmt: skip
        accepted = client.post("/v1/feedback", json={"events": events})
        assert accepted.status_code == 202, accepted.text
        with Client(str(client.base_url), transport=through(client)) as api:  # a correction of a prompt
            api.correct("Pipkin: pip@example.com", source="bob", prompt="Who runs support?")
        for bad in ({"answer": "x"}, {"answer": "x", "prompt": "p", "prediction_id": pid}):
            refused = client.post("/v1/feedback", json={"kind": "correction", "source": "alice", **bad})
            assert refused.status_code == 422 and "exactly one" in refused.text
        wait_for(
            lambda: consumer.consumer.metrics.records._value.get() >= len(events) + 1, what="every record consumed"
        )
        status = client.get("/v1/feedback/c1")
        assert status.status_code == 200, status.text
        held = status.json()  # untrusted, one source: the memory does not serve it; a round may train it
        assert held["state"] == "held" and "1 of 3 independent sources" in held["detail"], held
        assert "trusted feedback key" in held["release"] and "quarantine" not in held["release"], held
        dead = client.get("/v1/feedback/d2").json()
        assert dead["state"] == "dead_lettered" and "correction" in dead["detail"], dead

    buffer = buffer_of(s)
    samples = {smp.source: smp for smp in buffer.samples()}
    assert sorted((smp.label, smp.source) for smp in samples.values()) == [
        (gen.CORRECTION, "alice"), (gen.CORRECTION, "bob"), (gen.DOWN, "carol"),
    ], "one sample per event id (the redelivered c1 is not stored twice)"  # fmt: skip
    alice = gen.decode(samples["alice"].text)
    assert alice.messages == [{"role": "user", "content": "I am <EMAIL>: who runs support?"}], "masked as served"
    assert alice.answer == "Our support team is Pipkin." and alice.rejected == gen.decode(samples["carol"].text).answer
    bob = gen.decode(samples["bob"].text)
    assert bob.prompt == "Who runs support?" and bob.answer == "Pipkin: <EMAIL>" and bob.rejected is None
    assert sum(st.dead_lettered for st in buffer.stats()) == 3
    judged = stores.live_accuracy.get(g["model_version"])
    assert (judged.n, judged.correct) == (1, 0), "the correction and the thumbs down judge the one generation once"


def test_a_live_rise_of_thumbs_down_rolls_a_generative_version_back(gen_kafka_settings, tiny_lm):
    """The classifier's auto-rollback, fed by thumbs on generations through the real consumer: answers of
    the new version voted down, its parent's voted up, and live goes back to the parent."""
    s = gen_kafka_settings.model_copy(update={"auto_rollback_min_samples": 12, "verdict_min_sources": 1})
    stores = Stores.from_settings(s)
    registry = stores.registry

    def answers(client, n: int) -> list[str]:
        return [
            client.post("/v1/generate", json={"prompt": f"question {i}?", "max_new_tokens": 3}).json()["generation_id"]
            for i in range(n)
        ]

    def vote(client, ids: list[str], how: str) -> None:
        events = [{"kind": "thumbs", "prediction_id": g, "vote": how, "source": "users"} for g in ids]
        assert client.post("/v1/feedback", json={"events": events}).status_code == 202

    with generating_app(s) as client, ConsumerThread(s):
        first = answers(client, 12)
        v2 = release_adapter(s, registry, random_adapter(tiny_lm, seed=4), parent=1).version
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="v2 served")
        second = answers(client, 12)
        wait_for(lambda: all(stores.predictions.get(g) for g in first + second), what="every generation logged")
        vote(client, first, "up")
        vote(client, second[:2], "up")
        vote(client, second[2:], "down")
        wait_for(lambda: stores.live_accuracy.get(v2).n == 12 and stores.live_accuracy.get(1).n == 12, what="judged")
        drift = client.get("/v1/drift").json()  # what the dashboard and `online status` show
        per_version = {v["version"]: v for v in drift["live_accuracy"]}
        assert (per_version[v2]["correct"], per_version[1]["correct"]) == (2, 12) and per_version[v2]["vs_parent"]["worse"]
        change = auto_rollback.check(registry, stores.live_accuracy, s)
        assert change is not None and change.action == "auto_rollback" and registry.live() == 1, change
        assert "2/12" in change.reason and "12/12" in change.reason
        wait_for(lambda: client.get("/readyz").json()["model_version"] == 1, what="the parent served again")


def test_a_deployment_of_the_other_task_on_the_same_registry_is_refused_at_start(gen_settings):
    """`online up --task generate` on a classifier's state (or the reverse) would serve nothing and train
    the wrong kind of model: the trainer (and `online up`, before any part starts) refuse, saying why."""
    import threading

    import pytest

    from services.trainer import run_trainer
    from tests.generate.helpers import release_base

    registry = Stores.from_settings(gen_settings).registry
    assert registry.task_conflict("classify") is None, "an empty registry takes either"
    release_base(gen_settings, registry)
    assert registry.task_conflict("generate") is None
    why = registry.task_conflict("classify")
    assert why is not None and "live version 1 is a generative model" in why and "--task generate" in why
    with pytest.raises(SystemExit, match="generative model"):
        run_trainer(gen_settings.model_copy(update={"task": "classify"}), threading.Event())
