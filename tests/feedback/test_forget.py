"""`online forget` and ``POST /v1/admin/forget`` on the real broker and Redis: a source's or a text's data
leaves the replay buffer, the correction log (stream included) and memory, the prediction log and the
review queue; what is still in flight is not stored; the answer says what the weights may still hold."""

from __future__ import annotations

import time

import numpy as np
from pydantic import SecretStr
from typer.testing import CliRunner

from online.events import LabelEvent, encode_event
from online.feedback.review_queue import ReviewItem
from online.wiring.stores import Stores
from services.cli import app as cli
from tests.helpers import ConsumerThread, live_untrained, served_app, settings_env, wait_for

ADMIN = {"Authorization": "Bearer s3cret"}


def send(client, source: str, text: str, label: str = "b") -> tuple[str, str]:
    """Sends one label event; returns its (source, event_id), the key the buffer dedups by."""
    resp = client.post("/v1/feedback", json={"kind": "label", "text": text, "label": label, "source": source})
    assert resp.status_code == 202, resp.text
    return source, resp.json()["event_ids"][0]


def stored_texts(stores) -> set[str]:
    return {s.text for s in stores.buffer.samples()} | {h.text for h in stores.buffer.held()}


def memory_texts(stores) -> set[str]:
    return {c.text for c in stores.corrections.snapshot()[1]}


def stream_text(stores) -> str:
    return str(stores.redis.xrange(stores.corrections.stream))


def produce(settings, events: list[LabelEvent]) -> None:
    from online.bus import make_producer

    producer = make_producer(settings)
    for f in [producer.send(settings.feedback_topic, encode_event(e), key=e.event_id.encode()) for e in events]:
        f.get(30)
    producer.close()


def test_forget_a_source_then_a_text_everywhere_and_for_good(kafka_settings, monkeypatch):
    settings = kafka_settings.model_copy(update={"admin_token": SecretStr("s3cret"), "quarantine": False})
    live_untrained(settings)
    stores = Stores.from_settings(settings)
    with ConsumerThread(settings), served_app(settings) as client:
        sent = [
            send(client, "alice", "alice wants her refund, mail alice@example.com"),
            send(client, "alice", "shared words about the weather", "a"),
            send(client, "bob", "shared words about the weather", "a"),  # the same sample as alice's
            send(client, "bob", "bob asks where his parcel is"),
            send(client, "bob", "forget me please", "a"),
        ]
        pred = client.post("/v1/predict", json={"text": "Forget me   please"}).json()["predictions"][0]
        stores.review.add([ReviewItem(pred["prediction_id"], "forget me please", "a", 0.5, 0.0, None, False, 1.0, 1,
                                      time.time(), np.zeros(4, np.float32))])  # fmt: skip
        wait_for(lambda: all(stores.buffer.seen(sent)), timeout=60, what="every event consumed")  # in any order
        assert len(stored_texts(stores)) == 4
        wait_for(lambda: stores.predictions.get(pred["prediction_id"]) is not None, what="the prediction logged")
        assert any("alice" in t for t in memory_texts(stores))  # corrections of an untrained model's answers

        refused = client.post("/v1/admin/forget", json={"source": "alice"})
        assert refused.status_code in (401, 403)
        assert client.post("/v1/admin/forget", json={"source": "a", "text": "b"}, headers=ADMIN).status_code == 422
        before = time.time()
        out = client.post("/v1/admin/forget", json={"source": "alice"}, headers=ADMIN)
        assert out.status_code == 200, out.text
        result = out.json()
        assert result["buffer"] == 2 and result["ledger"] and result["corrections"] >= 1
        assert "alice" not in str(stored_texts(stores)) and "shared words" not in str(stored_texts(stores))
        assert not any("alice" in t for t in memory_texts(stores)) and "alice" not in stream_text(stores)
        assert "alice" not in stores.sources.stats()
        assert result["weights"] and result["not_reached"]

        # in flight when it was erased (stamped before): not stored; sent afterwards: stored
        produce(settings, [
            LabelEvent(kind="label", event_id="late", text="alice late text", label="b", source="alice", timestamp=before - 1),
            LabelEvent(kind="label", event_id="new", text="alice new text", label="b", source="alice"),
        ])  # fmt: skip
        wait_for(lambda: "alice new text" in stored_texts(stores), timeout=60, what="alice's later event")
        assert "alice late text" not in stored_texts(stores) and "alice late text" not in memory_texts(stores)

        # a text: gone from the buffer, the memory, the prediction log and the review queue, whoever sent it
        runner = CliRunner()
        for key, value in settings_env(settings).items():
            monkeypatch.setenv(key, value)
        shown = runner.invoke(cli, ["forget", "--text", "FORGET me please"])
        assert shown.exit_code == 0, shown.output
        assert "weights:" in shown.output and "prediction log" in shown.output
        assert "forget me please" not in stored_texts(stores) and "forget me please" not in memory_texts(stores)
        assert stores.predictions.get(pred["prediction_id"]) is None
        assert stores.review.size() == 0
        send(client, "carol", "Forget me please", "b")  # sent again, by anyone: never stored again
        send(client, "carol", "carol is still welcome")
        wait_for(lambda: "carol is still welcome" in stored_texts(stores), timeout=60, what="carol's event")
        assert "forget me please" not in {t.lower() for t in stored_texts(stores) | memory_texts(stores)}
        assert {"bob asks where his parcel is"} <= stored_texts(stores)  # the rest untouched
