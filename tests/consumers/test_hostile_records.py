"""Hostile records on the real broker and Redis: none stops, stalls or steers the consumer.

Each is produced straight to the topic (any Kafka client may) or sent through the API, then the consumer
must be alive and consuming: the record is a dead letter (masked, well under the producer's 1 MiB, with
its reason), the good records around it are stored, and nothing is retried forever.
"""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from online.bus import ensure_topics, make_producer
from online.events import LabelEvent, encode_event, parse_event
from online.feedback.prediction_log import PredictionRecord
from online.wiring.stores import Stores
from services.api.app import create_app
from tests.helpers import ConsumerThread, buffer_of, live_untrained, total_events, wait_for

ONE_MIB = 1024 * 1024


def produce_raw(settings, values: list[bytes], key: bytes = b"k") -> None:
    ensure_topics(settings)
    producer = make_producer(settings, max_request_size=2 * ONE_MIB)  # a hostile client sets its own limit
    for f in [producer.send(settings.feedback_topic, v, key=key) for v in values]:
        f.get(30)
    producer.close()


def read_topic(settings, topic: str, expected: int, timeout: float = 30) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    parts = consumer.partitions_for_topic(topic) or {0}
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(500).values():
            out.extend(r.value for r in batch)
    consumer.close()
    return out


def good(n: int, tag: str, source: str = "tests") -> list[bytes]:
    return [
        encode_event(LabelEvent(kind="label", event_id=f"{tag}{i}", text=f"{tag} text {i}", label="balance", source=source))
        for i in range(n)
    ]


def test_infinite_huge_and_control_records_are_capped_dead_letters(kafka_settings):
    """The 1e400 timestamp (with a prediction that resolves: it used to kill the consumer), a ~400 KB
    record and ~180 KB of control characters: each a dead letter under 1 MiB, the consumer goes on."""
    stores = Stores.from_settings(kafka_settings)
    stores.predictions.record_many([PredictionRecord(prediction_id="p1", text="hi", label="balance", score=0.9, version=1)])
    infinite = b'{"kind":"thumbs","prediction_id":"p1","vote":"up","source":"s","timestamp":1e400}'
    huge = json.dumps({"kind": "label", "text": "mail me at jane@example.com " * 15_000, "label": "balance", "source": "s"})
    controls = json.dumps({"kind": "label", "text": "\x01" * 180_000, "label": "balance", "source": "s"})
    assert len(huge) > 400_000 and len(controls.encode()) > 1_000_000  # escaped: 6 bytes a character
    produce_raw(kafka_settings, [*good(3, "before"), infinite, huge.encode(), controls.encode()])
    produce_raw(kafka_settings, [b"not json"], key=b"k" * 900_000)  # a dead letter must not copy a huge key
    produce_raw(kafka_settings, good(3, "after"))
    buffer = buffer_of(kafka_settings)
    with ConsumerThread(kafka_settings) as ct:
        wait_for(lambda: total_events(buffer) == 6, timeout=60, what="the good records on both sides")
        dead = read_topic(kafka_settings, kafka_settings.dlq_topic, 4)
        assert ct.thread.is_alive()
    assert len(dead) == 4
    assert all(len(d) < ONE_MIB // 2 for d in dead), [len(d) for d in dead]
    letters = [json.loads(d) for d in dead]
    reasons = " | ".join(d["reason"] for d in letters)
    assert "finite" in reasons and "bytes" in reasons and "Invalid JSON" in reasons, reasons
    assert all(d["masked"] for d in letters)
    assert not any("jane@example.com" in (d["original_text"] or "") for d in letters)  # masked copies
    assert any(d["truncated"] and d["original_bytes"] > 400_000 for d in letters)


def test_a_record_that_fails_past_validation_is_its_own_dead_letter(kafka_settings):
    """Whatever a record makes fail (here: live accuracy refusing one judgement, as the infinite timestamp
    did) dead-letters that record only; the rest of its batch is stored, the consumer consumes on."""
    stores = Stores.from_settings(kafka_settings)
    stores.predictions.record_many([PredictionRecord(prediction_id="p1", text="hi", label="balance", score=0.9, version=1)])
    events = good(4, "ok")
    events.insert(2, json.dumps({"kind": "thumbs", "prediction_id": "p1", "vote": "up", "source": "s", "event_id": "boom"}).encode())
    produce_raw(kafka_settings, events)
    buffer = buffer_of(kafka_settings)
    with ConsumerThread(kafka_settings) as ct:
        record = ct.consumer.accuracy.record

        def refuse(judgements):
            if any(j.event_id == "boom" for j in judgements):
                raise OverflowError("cannot convert float infinity to integer")
            return record(judgements)

        ct.consumer.accuracy.record = refuse
        wait_for(lambda: total_events(buffer) >= 4, timeout=60, what="the good records")
        dead = [json.loads(d) for d in read_topic(kafka_settings, kafka_settings.dlq_topic, 1)]
        produce_raw(kafka_settings, good(2, "later"))
        wait_for(lambda: buffer.seen([("tests", "later0"), ("tests", "later1")]) == [True, True], timeout=60,
                 what="records after the failure")  # fmt: skip
    assert [d["reason"] for d in dead] and "OverflowError" in dead[0]["reason"]


def test_a_batch_is_bounded_by_bytes_not_only_count(kafka_settings):
    """Long texts make small batches (the rest is fetched by the next poll), so one batch's work stays
    within the poll interval; every record is still stored once."""
    settings = kafka_settings.model_copy(update={"consumer_batch_bytes": 30_000, "feedback_partitions": 1})
    long = [
        encode_event(LabelEvent(kind="label", event_id=f"long{i}", text=f"{i} " + "word " * 1_800, label="balance", source="s"))
        for i in range(20)
    ]
    produce_raw(settings, long)
    buffer = buffer_of(settings)
    with ConsumerThread(settings) as ct:
        sizes: list[int] = []
        handle = ct.consumer.handle

        def counting(records):
            sizes.append(sum(len(r.value) for r in records))
            return handle(records)

        ct.consumer.handle = counting
        wait_for(lambda: total_events(buffer) == 20, timeout=60, what="every long record")
    assert sizes and max(sizes) <= 30_000 + 10_000, sizes  # one record may pass the budget, never a batch


def test_event_ids_cannot_be_squatted_across_sources(kafka_settings):
    """mallory sends alice's next event ids first, and an id shaped like a dead letter's key: alice's
    events are stored all the same, and the dead-letter count is untouched."""
    produce_raw(kafka_settings, [b"not json"])  # a dead letter at partition p, offset 0 of the topic
    alice = good(3, "a", source="alice")
    squat = good(3, "a", source="mallory")  # the same event ids from another source
    shaped = [
        encode_event(LabelEvent(kind="label", event_id=f"dlq:{kafka_settings.feedback_topic}:{p}:0", text=f"shaped {p}",
                                label="balance", source="mallory"))
        for p in range(kafka_settings.feedback_partitions)
    ]  # fmt: skip
    produce_raw(kafka_settings, squat + shaped)
    produce_raw(kafka_settings, alice)
    buffer = buffer_of(kafka_settings)
    with ConsumerThread(kafka_settings):
        wait_for(lambda: all(buffer.seen([("alice", f"a{i}") for i in range(3)])), timeout=60, what="alice's events")
        wait_for(lambda: total_events(buffer) == 3 + 3 + len(shaped), timeout=30, what="every event")
    stats = {s.label: s for s in buffer.stats()}
    assert stats["(none)"].dead_lettered == 1


def test_the_api_refuses_infinity_and_produces_masked_events_that_validate(kafka_settings):
    """1e400 is a 422 naming the timestamp (it used to be a 202, re-encoded as null and lost); what the
    API produces is masked and validates again, even when masking lengthens the text."""
    live_untrained(kafka_settings)
    with TestClient(create_app(kafka_settings)) as api:
        body = b'{"kind":"label","text":"hi","label":"balance","source":"s","timestamp":1e400}'
        resp = api.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
        errors = resp.json()["errors"]
        assert any(e["field"].endswith("timestamp") and "finite" in e["reason"] for e in errors), errors
        for bad in (b'"timestamp":NaN', b'"timestamp":-1', b'"timestamp":99999999999'):
            raw = b'{"kind":"label","text":"hi","label":"balance","source":"s",' + bad + b"}"
            assert api.post("/v1/feedback", content=raw, headers={"content-type": "application/json"}).status_code == 422
        text = ("a@b.io " * 1_428)[:10_000]  # at the limit; masking makes it longer
        ok = api.post("/v1/feedback", json={"events": [
            {"kind": "label", "text": "write to jane@example.com", "label": "balance", "source": "s"},
            {"kind": "label", "text": text, "label": "balance", "source": "s"},
        ]})  # fmt: skip
        assert ok.status_code == 202, ok.text
    produced = read_topic(kafka_settings, kafka_settings.feedback_topic, 2)
    events = [parse_event(v) for v in produced]  # what the API produced validates again
    assert all("@" not in e.text for e in events)
    assert {e.text for e in events} >= {"write to <EMAIL>"}
