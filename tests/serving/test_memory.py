"""Instant corrections on a real stack (Tansu, Redis, the consumer, the API; no trainer: nothing trains).

A label event changes the answer for the same text within a bounded wait; a close paraphrase follows,
an unrelated text does not; a quarantined source is never answered; a version whose weights answer an
entry retires it and a rollback restores it; a thumbs-down removes it; a new replica rebuilds it.
"""

from __future__ import annotations

import pytest
import torch

from online.lifecycle.promotion import rollback
from online.model import TextClassifier
from online.wiring.stores import Stores
from tests.helpers import ConsumerThread, served_app, wait_for

TAUGHT = "my card got declined at the grocery store"
PARAPHRASE = "my card got declined at the grocery shop"  # cosine 0.99 under the tiny encoder
UNRELATED = "is it going to rain today"  # cosine 0.93


@pytest.fixture
def stack(kafka_settings):
    """v1 (untrained, labels a and b) live; the API and a consumer running; memory threshold for the tiny encoder."""
    settings = kafka_settings.model_copy(update={"memory_similarity": 0.98})
    registry = Stores.from_settings(settings).registry
    torch.manual_seed(0)
    v1 = registry.publish(TextClassifier.from_base(settings.base_model, ["a", "b"]), parent=None).version
    registry.promote(v1)
    with ConsumerThread(settings), served_app(settings) as client:
        yield settings, client, v1


def ask(client, text: str) -> dict:
    return client.post("/v1/predict", json={"text": text, "top_k": 2}).json()["predictions"][0]


def teach(client, text: str, label: str, source: str = "agent-1") -> str:
    resp = client.post("/v1/feedback", json={"kind": "label", "text": text, "label": label, "source": source})
    assert resp.status_code == 202, resp.text
    return resp.json()["event_ids"][0]


def other(label: str) -> str:
    return "b" if label == "a" else "a"


def corrected(client) -> dict:
    """TAUGHT corrected away from the model's answer, once the memory answers it: that answer."""
    teach(client, TAUGHT, other(ask(client, TAUGHT)["label"]))
    return wait_for(lambda: (p := ask(client, TAUGHT))["source"] == "memory" and p, what="a memory answer")


def test_a_correction_is_answered_at_once_and_a_close_paraphrase_follows(stack):
    settings, client, _ = stack
    before, unrelated = ask(client, TAUGHT), ask(client, UNRELATED)
    assert before["source"] == "model"
    right = other(before["label"])
    event_id = teach(client, TAUGHT, right)

    after = wait_for(lambda: (p := ask(client, TAUGHT))["source"] == "memory" and p, timeout=30, what="a memory answer")
    assert after["label"] == right and after["memory_event_id"] == event_id
    assert after["score"] == 1.0 and [t["label"] for t in after["top_k"]] == [right, before["label"]]
    assert after["model_version"] == before["model_version"]  # no round: the weights did not change

    near = ask(client, PARAPHRASE)
    assert near["source"] == "memory" and near["label"] == right
    assert 0.98 <= near["score"] < 1.0 and near["top_k"][0]["label"] == right
    assert sum(t["score"] for t in near["top_k"]) == pytest.approx(1.0, abs=1e-4)
    assert ask(client, UNRELATED) | {"prediction_id": ""} == unrelated | {"prediction_id": ""}

    wait_for(lambda: 'online_memory_entries{state="active"} 1.0' in client.get("/metrics").text, what="the gauge")
    assert 'online_memory_hits_total{match="exact"} ' in client.get("/metrics").text
    replicas = Stores.from_settings(settings).replicas
    beat = wait_for(lambda: [b for b in replicas.all() if (b.memory or {}).get("answers_memory", 0) >= 2], what="beat")
    assert beat[0].memory["active"] == 1  # what `online status` shows


def test_a_quarantined_source_is_never_answered_from_memory(stack):
    settings, client, _ = stack
    stores = Stores.from_settings(settings)
    stores.sources.quarantine("troll")
    wrong = other(ask(client, TAUGHT)["label"])
    teach(client, TAUGHT, wrong, source="troll")
    teach(client, UNRELATED, other(ask(client, UNRELATED)["label"]), source="agent-1")  # an honest one behind it
    wait_for(lambda: ask(client, UNRELATED)["source"] == "memory", what="the honest correction served")
    assert stores.corrections.size() == 2  # both were taught; the memory holds the troll's back
    assert ask(client, TAUGHT)["source"] == "model"
    assert 'online_memory_entries{state="held"} 1.0' in client.get("/metrics").text

    # What a round quarantines leaves every replica's memory
    sid = next(iter(client.app.state.service.memory.entries))
    stores.corrections.forget(list(client.app.state.service.memory.entries), "quarantined")
    wait_for(lambda: ask(client, UNRELATED)["source"] == "model", what="the quarantined entry forgotten")
    assert sid not in client.app.state.service.memory.entries


def test_a_version_that_answers_an_entry_retires_it_and_a_rollback_restores_it(stack):
    settings, client, v1 = stack
    registry = Stores.from_settings(settings).registry
    right = other(ask(client, TAUGHT)["label"])
    teach(client, TAUGHT, right)
    wait_for(lambda: ask(client, TAUGHT)["source"] == "memory", what="a memory answer")

    model, _ = registry.load(v1)
    with torch.no_grad():
        model.head.bias[model.labels.index(right)] += 50.0  # v2's weights answer `right` to everything
    v2 = registry.publish(model, parent=v1).version
    registry.promote(v2)
    answer = wait_for(lambda: (p := ask(client, TAUGHT))["model_version"] == v2 and p, what="v2 served")
    assert answer["source"] == "model" and answer["label"] == right
    assert 'online_memory_entries{state="absorbed"} 1.0' in client.get("/metrics").text

    rollback(registry, to=v1, reason="test")
    back = wait_for(lambda: (p := ask(client, TAUGHT))["model_version"] == v1 and p, what="v1 served again")
    assert back["source"] == "memory" and back["label"] == right


def test_a_thumbs_down_on_a_memory_answer_removes_it(stack):
    settings, client, _ = stack
    served = corrected(client)
    resp = client.post(
        "/v1/feedback", json={"kind": "thumbs", "prediction_id": served["prediction_id"], "vote": "down", "source": "u"}
    )
    assert resp.status_code == 202
    wait_for(lambda: ask(client, TAUGHT)["source"] == "model", what="the entry removed")
    assert Stores.from_settings(settings).corrections.size() == 0


def test_a_new_label_waits_for_the_label_rules_then_answers(stack):
    settings, client, _ = stack
    teach(client, TAUGHT, "card_declined")  # limited policy: 1 of 3 examples
    wait_for(lambda: 'online_memory_entries{state="pending"} 1.0' in client.get("/metrics").text, what="pending")
    assert ask(client, TAUGHT)["source"] == "model"
    teach(client, "the shop refused my card", "card_declined")
    teach(client, "payment bounced at the checkout", "card_declined")
    answer = wait_for(lambda: (p := ask(client, TAUGHT))["source"] == "memory" and p, what="the new label served")
    assert answer["label"] == "card_declined" and answer["top_k"][0] == {"label": "card_declined", "score": 1.0}


def test_a_new_replica_rebuilds_the_memory(stack):
    settings, client, _ = stack
    right = other(ask(client, TAUGHT)["label"])
    teach(client, TAUGHT, right)
    wait_for(lambda: ask(client, TAUGHT)["source"] == "memory", what="a memory answer")
    with served_app(settings) as second:
        answer = wait_for(lambda: (p := ask(second, TAUGHT))["source"] == "memory" and p, timeout=10, what="rebuilt")
        assert answer["label"] == right


def test_a_label_correcting_a_memory_answer_replaces_it(stack):
    settings, client, _ = stack
    served = corrected(client)
    resp = client.post(
        "/v1/feedback",
        json={"kind": "label", "text": TAUGHT, "label": "c", "prediction_id": served["prediction_id"], "source": "u"},
    )
    assert resp.status_code == 202
    wait_for(lambda: Stores.from_settings(settings).corrections.size() == 1, what="the old entry forgotten")
    # the new label "c" is pending under the label rules (1 of 3 examples): the model answers meanwhile
    wait_for(lambda: ask(client, TAUGHT)["source"] == "model", what="the corrected memory answer gone")


def test_a_replica_serves_before_its_memory_is_built_and_the_memory_follows(kafka_settings):
    """A full memory must not keep a replica from serving: past ``memory_prepare_timeout_s`` (0 here)
    the version serves at once, the memory is built in the background and answers once built."""
    import time

    from online.feedback.buffer import Incoming

    settings = kafka_settings.model_copy(update={"memory_similarity": 0.98, "memory_prepare_timeout_s": 0.0})
    registry = Stores.from_settings(settings).registry
    torch.manual_seed(0)
    registry.promote(registry.publish(TextClassifier.from_base(settings.base_model, ["a", "b"]), parent=None).version)
    log = Stores.from_settings(settings).corrections
    filler = [Incoming(f"f{i}", f"note {i} " + "many long words " * 100, "b", "agent", time.time()) for i in range(300)]
    log.add(filler)
    with served_app(settings) as client:  # ready: it did not wait for 300 long entries to be embedded
        right = other(ask(client, TAUGHT)["label"])
        log.add([Incoming("t1", TAUGHT, right, "agent", time.time())])
        answer = wait_for(lambda: (p := ask(client, TAUGHT))["source"] == "memory" and p, timeout=60, what="memory")
        assert answer["label"] == right


def test_memory_builds_in_slices_bounded_by_texts_and_characters():
    """A build embeds on the forward thread in slices: 64 texts at most, and a slice of long texts is a
    short one (a request waits at most one short forward)."""
    from online.memory.log import Correction
    from online.serving.memory_follower import CHUNK, CHUNK_CHARS, _chunks

    short = [Correction(f"s{i}", f"e{i}", "short text", "a", "x", 0.0) for i in range(200)]
    long = [Correction(f"l{i}", f"f{i}", "y" * 10_000, "a", "x", 0.0) for i in range(64)]
    assert [len(c) for c in _chunks(short)] == [CHUNK, CHUNK, CHUNK, 200 - 3 * CHUNK]
    slices = _chunks(long)
    assert sum(map(len, slices)) == 64 and all(sum(len(e.text) for e in c) <= CHUNK_CHARS for c in slices)
