"""Trust is a credential, not a name (real stack: Tansu, Redis, the consumer, the API, the trainer).

Version 1 knows weather, music and bank, and confidently answers TAUGHT with weather (its neighbours in
the training data agree). An anonymous correction of it to bank is held by the screen, and its event
status says so and why; the same correction with the admin token (or a trusted feedback key) is served
by the correction memory at once, for the text and a close paraphrase, and trained by the next round.
Three invented source names from one client do not add up to three sources; three keys do.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from pydantic import SecretStr

from online.learning.round import RoundRunner
from online.lifecycle.gate import Gate, GoldenSet
from online.wiring.stores import Stores
from services.trainer import Scheduler
from tests import helpers
from tests.helpers import ConsumerThread, served_app, wait_for

TAUGHT = "the forecast says rain and sunny later"  # v1: weather (0.83); 10/10 known neighbours say weather
PARAPHRASE = "the forecast says rain and sunny later today"  # cosine 0.97; nearest known example 0.87
ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def stack(kafka_settings, tmp_path, request):
    overrides = getattr(request, "param", {})
    s = helpers.keyword_round_settings(
        kafka_settings, tmp_path, admin_token=SecretStr("s3cret"), train_min_new=1, train_max_wait_s=0.2,
        train_poll_s=0.1, holdout_min_new=1000, **overrides,
    )  # fmt: skip
    stores = Stores.from_settings(s)
    helpers.train_v1(s, stores.registry)
    stores.control.pause("the test says when a round may run")
    stop = threading.Event()
    scheduler = Scheduler(stores, stop)
    scheduler._runner = RoundRunner(
        stores, Gate(s, GoldenSet.for_settings(s)), seed_examples=helpers.examples(helpers.OLD, 40, seed=1)
    )
    trainer = threading.Thread(target=scheduler.loop, daemon=True)
    with served_app(s) as client, ConsumerThread(s):
        trainer.start()
        try:
            yield s, stores, client
        finally:
            stop.set()
            trainer.join(120)


def ask(client, text: str) -> dict:
    return client.post("/v1/predict", json={"text": text}).json()["predictions"][0]


def send(client, text: str, label: str, source: str, headers: dict | None = None) -> dict:
    event = {"kind": "label", "text": text, "label": label, "source": source, "event_id": uuid.uuid4().hex}
    resp = client.post("/v1/feedback", json=event, headers=headers or {})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status_url"] == f"/v1/feedback/{event['event_id']}"
    return body


def status(client, body: dict, headers: dict | None = None) -> dict:
    return client.get(body["status_url"], headers=headers or {}).json()


def settled(client, body: dict, states: tuple[str, ...], headers: dict | None = None, timeout: float = 30) -> dict:
    return wait_for(
        lambda: (st := status(client, body, headers))["state"] in states and st, timeout=timeout, what=str(states)
    )


def test_an_admin_correction_is_served_at_once_where_an_anonymous_one_is_held(stack):
    s, stores, client = stack
    before = ask(client, TAUGHT)
    assert before["label"] == "weather" and before["score"] >= s.quarantine_confidence  # a confident answer

    anonymous = send(client, TAUGHT, "bank", source="someone")
    held = settled(client, anonymous, ("held",))
    # 'bank' is both against a confident model and a label not live yet: whichever screen writes the
    # status first (the replica's memory or the consumer's label rules) names its reason; both hold it
    reason = held["reason"]
    assert ("live says weather" in reason and "neighbours say weather" in reason) or reason.startswith(
        "pending label: new label 'bank'"
    ), reason
    assert "admin token" in held["release"] and held["trusted"] is False and held["memory"] == "held"
    assert ask(client, TAUGHT)["source"] == "model"

    started = time.monotonic()
    admin = send(client, TAUGHT, "bank", source="operator", headers=ADMIN)
    exact = wait_for(lambda: (p := ask(client, TAUGHT))["source"] == "memory" and p, timeout=10, what="served")
    near = wait_for(lambda: (p := ask(client, PARAPHRASE))["source"] == "memory" and p, timeout=10, what="paraphrase")
    elapsed = time.monotonic() - started
    assert elapsed < 10
    print(f"admin correction served for the text and a paraphrase {elapsed:.2f} s after it was sent")
    assert exact["label"] == "bank" and near["label"] == "bank"
    assert exact["model_version"] == before["model_version"]  # training is paused: the weights did not change
    answered = status(client, admin)
    assert (answered["state"], answered["trusted"]) == ("memory", True), answered

    stores.control.resume()  # the next round trains it, whatever the screen says of anonymous feedback
    trained = settled(client, admin, ("trained", "held"), timeout=120)
    assert trained["state"] == "trained" and trained["version"] == 2, trained
    assert stores.buffer.held() == []


def test_three_invented_names_are_one_client(stack):
    """Without keys, the screen's independence rule counts client addresses: one client sending the same
    wrong label under three names is held all the same, and nothing it sends is served from memory."""
    s, stores, client = stack
    bodies = [send(client, TAUGHT, "bank", source=name) for name in ("ann", "ben", "cat")]
    for body in bodies:
        settled(client, body, ("held",))
    (sid,) = {status(client, b)["sid"] for b in bodies}
    assert stores.buffer.sources([sid]) == [{"addr:testclient"}]
    assert ask(client, TAUGHT)["source"] == "model"

    stores.control.resume()
    wait_for(lambda: [h.sid for h in stores.buffer.held()] == [sid], timeout=120, what="the round holds it")
    assert status(client, bodies[0])["reason"].startswith("live says weather")


def test_releasing_a_source_trusts_its_key_not_its_name(stack):
    """Without keys an operator's release of a source releases what it sent, and trusts nothing after."""
    s, stores, client = stack
    stores.sources.release("mallory")
    body = send(client, TAUGHT, "bank", source="mallory")
    assert settled(client, body, ("held",))["trusted"] is False
    assert ask(client, TAUGHT)["source"] == "model"


@pytest.mark.parametrize(
    "stack",
    [{"feedback_api_keys": {n: SecretStr(f"k-{n}") for n in ("support", "ann", "ben", "cat")},
      "feedback_trusted_keys": ["support"]}],
    indirect=True,
)  # fmt: skip
def test_keys_a_trusted_key_is_served_at_once_and_three_keys_are_three_sources(stack):
    s, stores, client = stack
    assert (
        client.post("/v1/feedback", json={"kind": "label", "text": TAUGHT, "label": "bank", "source": "x"}).status_code
        == 401
    )
    untrusted = send(client, TAUGHT, "bank", source="ann", headers={"X-API-Key": "k-ann"})
    assert settled(client, untrusted, ("held",), headers={"X-API-Key": "k-ann"})["trusted"] is False
    assert client.get(untrusted["status_url"], headers={"X-API-Key": "k-ben"}).status_code == 403  # not ben's

    trusted = send(client, PARAPHRASE, "bank", source="support", headers={"X-API-Key": "k-support"})
    wait_for(lambda: ask(client, PARAPHRASE)["source"] == "memory", timeout=10, what="the trusted key served")
    assert status(client, trusted, {"X-API-Key": "k-support"})["trusted"] is True

    for name in ("ben", "cat"):  # with ann: three keys send the same (text, label)
        send(client, TAUGHT, "bank", source=name, headers={"X-API-Key": f"k-{name}"})
    sid = status(client, untrusted, ADMIN)["sid"]
    wait_for(lambda: stores.buffer.sources([sid]) == [{"key:ann", "key:ben", "key:cat"}], what="three keys")
    stores.control.resume()
    trained = settled(client, untrusted, ("trained",), headers=ADMIN, timeout=120)
    assert trained["version"] == 2 and stores.buffer.held() == []


def test_a_trusted_sender_may_create_a_label(stack):
    """One example of a new label with the admin token is served at once and trained by the next round;
    the same from an anonymous sender waits for the label rules (1 of 3 examples)."""
    s, stores, client = stack
    anonymous = send(client, "grill the salmon with lemon", "cooking", source="someone")
    waiting = settled(client, anonymous, ("held",))
    assert waiting["reason"].startswith("pending label") and "online labels approve cooking" in waiting["release"]

    admin = send(client, "bake a sourdough loaf tonight", "cooking", source="operator", headers=ADMIN)
    served = wait_for(
        lambda: (p := ask(client, "bake a sourdough loaf tonight"))["source"] == "memory" and p, timeout=10
    )
    assert served["label"] == "cooking" and status(client, admin)["state"] == "memory"

    stores.control.resume()
    trained = settled(client, admin, ("trained", "held"), timeout=120)
    assert trained["state"] == "trained", trained
    assert "cooking" in stores.registry.get(trained["version"]).labels  # created by one trusted example
