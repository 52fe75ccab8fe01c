"""`online consume`: the feedback consumer (Kafka -> replay buffer), exactly once in effect.

Per polled batch: parse and resolve every record, dead-letter the bad ones (with the reason and the
original bytes) and wait for the broker's ack, write the good ones to the buffer in one atomic script,
record live-accuracy judgements, and only then commit the offsets. Any failure before the commit
retries the same batch; a crash redelivers it, and every write is idempotent by ``event_id``.
A poison record is just a dead letter: it never stops the loop.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass, field

import redis
from kafka import OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from prometheus_client import CollectorRegistry, Counter, start_http_server
from pydantic import ValidationError

from online.buffer import Incoming, ReplayBuffer
from online.bus import ensure_topics, make_consumer, make_producer
from online.connections import redis_client
from online.events import LabelEvent, ThumbsEvent, parse_event
from online.live_accuracy import Judgement, LiveAccuracy
from online.prediction_log import PredictionLog, PredictionRecord
from online.review import ReviewQueue
from online.settings import Settings
from online.shadow import ShadowLedger

log = logging.getLogger("online.consumer")


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    record: ConsumerRecord
    label: str | None = None

    def encode(self) -> bytes:
        raw = self.record.value or b""
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return json.dumps(
            {
                "reason": self.reason,
                "topic": self.record.topic,
                "partition": self.record.partition,
                "offset": self.record.offset,
                "key": self.record.key.decode("utf-8", "replace") if self.record.key else None,
                "original_b64": base64.b64encode(raw).decode(),
                "original_text": text,
                "at": time.time(),
            }
        ).encode()


@dataclass
class Outcome:
    """What one batch turns into."""

    samples: list[Incoming] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    seen_only: list[str] = field(default_factory=list)  # valid events that add no sample
    dead: list[DeadLetter] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # prediction ids labelled: off the review queue
    shadow: list[Judgement] = field(default_factory=list)  # a shadow candidate judged on a shadowed request
    shadow_live: list[Judgement] = field(default_factory=list)  # live judged on the same request


class FeedbackProcessor:
    """Turns raw records into buffer samples, judgements and dead letters. No Kafka I/O here."""

    def __init__(self, settings: Settings, predictions: PredictionLog) -> None:
        self.allow = set(settings.label_allowlist) if settings.label_allowlist else None
        self.predictions = predictions

    def process(self, records: list[ConsumerRecord]) -> Outcome:
        out = Outcome()
        parsed: list[tuple[ConsumerRecord, LabelEvent | ThumbsEvent]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_event(rec.value or b"")))
            except ValidationError as exc:
                out.dead.append(DeadLetter(f"invalid event: {_first_error(exc)}", rec))
            except ValueError as exc:
                out.dead.append(DeadLetter(f"malformed record: {exc}", rec))
        wanted = [ev.prediction_id for _, ev in parsed if ev.prediction_id]
        resolved = dict(zip(wanted, self.predictions.get_many(wanted)))
        for rec, ev in parsed:
            if ev.label is not None and self.allow is not None and ev.label not in self.allow:
                out.dead.append(DeadLetter(f"label {ev.label!r} is not in the allow-list", rec, ev.label))
                continue
            pred = resolved.get(ev.prediction_id) if ev.prediction_id else None
            if ev.prediction_id and pred is None:
                out.dead.append(
                    DeadLetter(f"unknown prediction_id {ev.prediction_id!r} (expired or never served)", rec, ev.label)
                )
                continue
            if isinstance(ev, LabelEvent):
                out.samples.append(Incoming(ev.event_id, ev.text, ev.label, ev.source, ev.timestamp))
                if ev.prediction_id:
                    out.answered.append(ev.prediction_id)
                if pred:
                    out.judgements.append(Judgement(ev.event_id, pred.version, pred.label == ev.label, ev.timestamp))
                    _judge_shadow(out, ev, pred, ev.label)
                continue
            assert pred is not None
            correct = ev.vote == "up"
            out.judgements.append(Judgement(ev.event_id, pred.version, correct, ev.timestamp))
            label = pred.label if correct else ev.label
            _judge_shadow(out, ev, pred, label)
            if label is None:
                out.seen_only.append(ev.event_id)  # thumbs down without the right label: a judgement only
            else:
                out.samples.append(Incoming(ev.event_id, pred.text, label, ev.source, ev.timestamp))
        return out


def _judge_shadow(out: Outcome, ev: LabelEvent | ThumbsEvent, pred: PredictionRecord, truth: str | None) -> None:
    """Feedback on a shadowed request judges the shadow candidate and live on the same request."""
    if pred.shadow_version is None or truth is None:
        return
    v = pred.shadow_version
    out.shadow.append(Judgement(ev.event_id, v, pred.shadow_label == truth, ev.timestamp))
    out.shadow_live.append(Judgement(ev.event_id, v, pred.label == truth, ev.timestamp))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{where}: {err['msg']}"


class ConsumerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter("online_consumer_records", "Feedback records consumed", registry=r)
        self.stored = Counter("online_consumer_samples", "Buffer writes by outcome", ["outcome"], registry=r)
        self.dead = Counter("online_consumer_dead_letters", "Records sent to the dead-letter topic", registry=r)
        self.retries = Counter("online_consumer_batch_retries", "Batches retried (Redis or Kafka errors)", registry=r)
        self.judgements = Counter("online_consumer_judgements", "Live-accuracy judgements recorded", registry=r)


class FeedbackConsumer:
    """The Kafka loop around :class:`FeedbackProcessor`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ConsumerMetrics()
        client = redis_client(settings)
        self.buffer = ReplayBuffer(client, settings.key_prefix, settings.buffer_capacity, settings.dedup_ttl_s)
        self.accuracy = LiveAccuracy(client, settings.key_prefix, settings.dedup_ttl_s)
        self.shadow = ShadowLedger(client, settings.key_prefix, settings.dedup_ttl_s)
        self.review = ReviewQueue(client, settings.key_prefix, settings.review_capacity, settings.prediction_ttl_s)
        self.processor = FeedbackProcessor(settings, PredictionLog(client, settings.key_prefix))
        self._dlq_producer = None
        self.batches = 0

    def _dlq(self):
        if self._dlq_producer is None:
            self._dlq_producer = make_producer(self.settings)
        return self._dlq_producer

    def handle(self, records: list[ConsumerRecord]) -> Outcome:
        """Everything a batch needs before its offsets may be committed. Raises on any failure."""
        out = self.processor.process(records)
        if out.dead:
            producer = self._dlq()
            futures = [producer.send(self.settings.dlq_topic, d.encode(), key=d.record.key) for d in out.dead]
            for f in futures:
                f.get(timeout=self.settings.feedback_timeout_s * 2)
            self.buffer.record_dead_letters(
                [(f"{d.record.topic}:{d.record.partition}:{d.record.offset}", d.label) for d in out.dead]
            )
            for d in out.dead:
                log.warning("dead-lettered %s[%d]@%d: %s", d.record.topic, d.record.partition, d.record.offset, d.reason)
        added = self.buffer.add(out.samples)
        self.buffer.mark_seen(out.seen_only)
        judged = self.accuracy.record(out.judgements)
        self.review.answered(out.answered)
        self.shadow.judge(out.shadow, out.shadow_live)
        m = self.metrics
        m.records.inc(len(records))
        m.dead.inc(len(out.dead))
        m.stored.labels("added").inc(added.added)
        m.stored.labels("duplicate").inc(added.duplicates)
        m.stored.labels("redelivered").inc(added.replayed)
        m.judgements.inc(judged)
        return out

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self.settings)
        consumer = make_consumer(self.settings)
        consumer.subscribe([self.settings.feedback_topic])
        log.info("consuming %s as group %s", self.settings.feedback_topic, self.settings.consumer_group)
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.settings.consumer_batch_size)
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    continue
                while not stop.is_set():
                    try:
                        self.handle(records)
                        break
                    except (redis.RedisError, KafkaError, OSError) as exc:
                        log.warning("batch not stored yet (%s); retrying, offsets not committed", exc)
                        self.metrics.retries.inc()
                        self._reset_dlq()
                        stop.wait(0.5)
                else:
                    return  # stopping with an uncommitted batch: it is redelivered, writes are idempotent
                offsets: dict[TopicPartition, OffsetAndMetadata] = {}
                for r in records:
                    tp = TopicPartition(r.topic, r.partition)
                    if tp not in offsets or offsets[tp].offset <= r.offset:
                        offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
                try:
                    consumer.commit(offsets)
                except (CommitFailedError, KafkaError) as exc:
                    log.warning("offset commit failed (%s): the batch will be redelivered, harmlessly", exc)
                self.batches += 1
        finally:
            consumer.close()
            self._reset_dlq()

    def _reset_dlq(self) -> None:
        if self._dlq_producer is not None:
            try:
                self._dlq_producer.close(timeout=0)
            except KafkaError:
                pass  # the batch is retried: dead letters are sent again
            finally:
                self._dlq_producer = None


def run_consumer(settings: Settings, stop: threading.Event) -> None:
    consumer = FeedbackConsumer(settings)
    if settings.consumer_metrics_port is not None:
        start_http_server(settings.consumer_metrics_port, addr="0.0.0.0", registry=consumer.metrics.registry)
    consumer.run(stop)
