"""`online consume`: the feedback consumer (Kafka -> replay buffer), exactly once in effect.

Per polled batch: parse and resolve every record (``consumers.processor``), dead-letter the bad ones
(with the reason and a masked copy cut to size) and wait for the broker's ack, write the good ones to the buffer in one atomic script,
record live-accuracy judgements, and only then commit the offsets. Redis or the broker being unreachable
retries the same batch; a crash redelivers it, and every write is idempotent by ``event_id``.

A poison record is just a dead letter: it never stops the loop and is never retried forever. Whatever
fails for a reason other than an unreachable Redis or broker (:func:`transient`) is narrowed down to
its record (the batch is handled again record by record), and that record becomes a dead letter with
the error as its reason. A batch is bounded by work, not only by count: records past
``consumer_batch_bytes`` are left for the next poll (the consumer seeks back to them), so a batch of
long texts stays well within ``consumer_max_poll_interval_ms`` and cannot get the consumer evicted
from its group over and over.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import redis
from kafka import OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from prometheus_client import CollectorRegistry, Counter, start_http_server

from consumers.processor import DeadLetter, FeedbackProcessor, Outcome
from online.bus import discard_producer, ensure_topics, make_consumer, make_producer
from online.connections import FsyncMode, fsync_barrier, fsync_mode, replication_barrier
from online.credentials import Signer, signing_secret
from online.feedback.buffer import ReplayBuffer
from online.feedback.prediction_log import PredictionLog
from online.feedback.quarantine import SourceLedger
from online.feedback.review_queue import ReviewQueue
from online.feedback.status import EventStatusLog
from online.keys import Keys
from online.lifecycle.shadow import ShadowLedger
from online.memory.log import CorrectionLog
from online.monitoring.live_accuracy import LiveAccuracy
from online.settings import Settings
from online.wiring.stores import Stores

log = logging.getLogger("online.consumer")

# Redis error replies that say "not now" (a failover, a load, memory full), not "not this record"
_TRANSIENT_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "OOM", "TRYAGAIN", "BUSY", "CLUSTERDOWN")


def transient(exc: BaseException) -> bool:
    """An infrastructure error the batch is retried for (as it is): Redis or the broker unreachable,
    or a Redis reply that says to come back later. Anything else is a record's fault."""
    if isinstance(exc, redis.ResponseError):
        return any(code in str(exc) for code in _TRANSIENT_REPLIES)
    return isinstance(exc, (redis.RedisError, KafkaError, OSError))


def within_budget(records: list[ConsumerRecord], max_bytes: int) -> int:
    """How many of ``records`` (at least one) one batch handles: up to ``max_bytes`` of record values."""
    total = 0
    for i, r in enumerate(records):
        total += len(r.value or b"") + len(r.key or b"")
        if total > max_bytes and i > 0:
            return i
    return len(records)


class ConsumerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter("online_consumer_records", "Feedback records consumed", registry=r)
        self.stored = Counter("online_consumer_samples", "Buffer writes by outcome", ["outcome"], registry=r)
        self.dead = Counter("online_consumer_dead_letters", "Records sent to the dead-letter topic", registry=r)
        self.retries = Counter("online_consumer_batch_retries", "Batches retried (Redis or Kafka errors)", registry=r)
        self.judgements = Counter("online_consumer_judgements", "Live-accuracy judgements recorded", registry=r)
        self.corrections = Counter(
            "online_consumer_corrections", "Label corrections sent to the correction memory", registry=r
        )


class ConsumerStores(Protocol):
    """The stores the consumer writes (the wiring's ``Stores`` has them all)."""

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def buffer(self) -> ReplayBuffer: ...

    @property
    def corrections(self) -> CorrectionLog: ...

    @property
    def live_accuracy(self) -> LiveAccuracy: ...

    @property
    def shadow(self) -> ShadowLedger: ...

    @property
    def review(self) -> ReviewQueue: ...

    @property
    def predictions(self) -> PredictionLog: ...

    @property
    def sources(self) -> SourceLedger: ...

    @property
    def status(self) -> EventStatusLog: ...


class FeedbackConsumer:
    """The Kafka loop around :class:`FeedbackProcessor`."""

    def __init__(self, settings: Settings, stores: ConsumerStores) -> None:
        self.settings = settings
        self.metrics = ConsumerMetrics()
        self.redis = stores.redis
        self.keys = stores.keys
        self.fsync: FsyncMode | None = None  # learned from the server at the first batch
        acks = settings.redis_replica_acks
        self.replica_acks = acks if acks is not None else (1 if settings.redis_sentinels else 0)
        self.buffer = stores.buffer
        self.corrections = stores.corrections
        self.accuracy = stores.live_accuracy
        self.shadow = stores.shadow
        self.review = stores.review
        self.processor = FeedbackProcessor(settings, stores.predictions)
        self.sources = stores.sources
        self.status = stores.status
        self._dlq_producer = None
        self.batches = 0

    def _dlq(self):
        if self._dlq_producer is None:
            self._dlq_producer = make_producer(self.settings)
        return self._dlq_producer

    def handle(self, records: list[ConsumerRecord]) -> Outcome | None:
        """Everything a batch needs before its offsets may be committed. Raises only :func:`transient`
        errors (the caller retries the batch); any other failure becomes its record's dead letter."""
        try:
            return self._handle(records)
        except Exception as exc:
            if transient(exc):
                raise
            if len(records) > 1:
                log.warning("a batch of %d records failed (%r): handling them one by one", len(records), exc)
                for record in records:  # every write is idempotent: what was stored stays stored once
                    self.handle([record])
                return None
            self._dead_letter(records[0], f"not processed: {exc!r}")
            return None

    def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        """A record that failed past the processor's checks: to the dead-letter topic, counted once."""
        letter = DeadLetter(reason, record)
        self._dlq().send(self.settings.dlq_topic, letter.encode(), key=letter.key).get(
            timeout=self.settings.feedback_timeout_s * 2
        )
        self.buffer.record_dead_letters([(f"{record.topic}:{record.partition}:{record.offset}", None)])
        self.metrics.dead.inc()
        log.error("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, letter.reason[:500])

    def _handle(self, records: list[ConsumerRecord]) -> Outcome:
        if self.fsync is None:
            self._check_fsync()
        p = self.processor
        if p.signer is None:
            key = self.settings.feedback_signing_key
            p.signer = Signer(
                signing_secret(key.get_secret_value() if key else None, self.redis, self.keys.signing_secret)
            )
        # whose keys are trusted now: configured, or released by an operator since
        p.trusted_keys = set(self.settings.feedback_trusted_keys) | self.sources.trusted()
        out = p.process(records)
        if out.dead:
            producer = self._dlq()
            futures = [producer.send(self.settings.dlq_topic, d.encode(), key=d.key) for d in out.dead]
            for f in futures:
                f.get(timeout=self.settings.feedback_timeout_s * 2)
            self.buffer.record_dead_letters(
                [(f"{d.record.topic}:{d.record.partition}:{d.record.offset}", d.label) for d in out.dead]
            )
            for d in out.dead:
                log.warning(
                    "dead-lettered %s[%d]@%d: %s", d.record.topic, d.record.partition, d.record.offset, d.reason[:500]
                )
        added = self.buffer.add(out.samples)
        self.status.processed(
            stored=[
                (eid, it.source, sid, it.label, it.trusted)
                for eid, sid, it in zip(out.stored_ids, added.sids, out.samples)
            ],
            recorded=out.seen_only_sources,
            dead=out.dead_ids,
        )
        if self.settings.memory:
            self.corrections.add(out.corrections)
        self.corrections.forget(out.forget, "thumbs down")
        self.corrections.forget(out.forget_untrusted, "thumbs down", keep_trusted=True)
        # judged before marked seen: "seen" (what a client's "did my event land?" reads) then means its
        # judgement is counted too (a test read the counts between the two and found a version's 50 votes
        # missing); a judgement counts once per prediction, so a redelivered batch does not count it twice
        judged = self.accuracy.record(out.judgements)
        self.buffer.mark_seen(out.seen_only)
        self.review.answered(out.answered)
        self.shadow.judge(out.shadow, out.shadow_live)
        m = self.metrics
        m.records.inc(len(records))
        m.dead.inc(len(out.dead))
        m.stored.labels("added").inc(added.added)
        m.stored.labels("duplicate").inc(added.duplicates)
        m.stored.labels("redelivered").inc(added.replayed)
        m.stored.labels("erased").inc(added.erased)
        m.judgements.inc(judged)
        m.corrections.inc(len(out.corrections) if self.settings.memory else 0)
        if self.fsync == "waitaof":  # the offsets are committed next: first the AOF must be on disk
            fsync_barrier(self.redis, self.keys.fsync_probe)
        if self.replica_acks:  # ...and on the replicas a failover would promote
            replication_barrier(self.redis, self.keys.fsync_probe, self.replica_acks)
        return out

    def _check_fsync(self) -> None:
        """Say once, at start, what a machine crash may lose under ``redis_fsync`` on this server."""
        self.fsync = fsync_mode(self.redis, self.settings)
        if self.settings.redis_fsync == "always" and self.fsync == "everysec":
            log.error(
                "ONLINE_REDIS_FSYNC=always cannot be kept: the server neither runs appendfsync always nor "
                "has WAITAOF (Redis >= 7.2); a machine crash may lose up to a second of stored feedback"
            )
        else:
            log.info(
                "redis fsync: %s",
                {"everysec": "every second", "server": "always (server)", "waitaof": "WAITAOF before each commit"}[
                    self.fsync
                ],
            )

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self.settings)
        consumer = make_consumer(self.settings)
        consumer.subscribe([self.settings.feedback_topic])
        log.info("consuming %s as group %s", self.settings.feedback_topic, self.settings.consumer_group)
        try:
            broker_down = False
            while not stop.is_set():
                try:
                    polled = consumer.poll(timeout_ms=500, max_records=self.settings.consumer_batch_size)
                except KafkaError as exc:  # a broker outage: the client reconnects on a later poll
                    if not broker_down:
                        log.warning("broker unreachable (%r); polling again until it is back", exc)
                    broker_down = True
                    stop.wait(0.5)
                    continue
                if broker_down:
                    log.info("broker reachable again")
                    broker_down = False
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    continue
                take = within_budget(records, self.settings.consumer_batch_bytes)
                if take < len(records):  # the rest is fetched again by the next poll
                    _seek_back(consumer, records[take:])
                    records = records[:take]
                while not stop.is_set():
                    try:
                        self.handle(records)
                        break
                    except Exception as exc:  # handle() raises only transient errors
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
            discard_producer(self._dlq_producer)  # the batch is retried: dead letters are sent again
            self._dlq_producer = None


def _seek_back(consumer, leftover: list[ConsumerRecord]) -> None:
    """Rewind each partition to its first record this batch leaves out."""
    first: dict[TopicPartition, int] = {}
    for r in leftover:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    for tp, offset in first.items():
        try:
            consumer.seek(tp, offset)
        except Exception as exc:  # revoked by a rebalance meanwhile: its new owner starts at the committed offset
            log.info("could not seek %s back to %d (%r)", tp, offset, exc)


def run_consumer(settings: Settings, stop: threading.Event) -> None:
    """The consumer process's wiring: its stores from the one Settings object, its metrics endpoint."""
    consumer = FeedbackConsumer(settings, Stores.from_settings(settings))
    if settings.consumer_metrics_port is not None:
        start_http_server(settings.consumer_metrics_port, addr="0.0.0.0", registry=consumer.metrics.registry)
    consumer.run(stop)
