"""Kafka plumbing shared by the API (producer), the consumers and the stack (topics).

Every client is configured here from :class:`Settings`, so the durability choices (``acks=all``,
idempotent producer, manual commits) are made once.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from online.connections import kafka_bootstrap
from online.settings import Settings

log = logging.getLogger("online.bus")


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the feedback topic (several partitions) and its dead-letter topic if missing, with the
    configured replication factor and ``min.insync.replicas``: with ``acks=all`` a write is answered only
    once that many replicas have it, so an accepted event survives the loss of a broker (RF 3, ISR 2)."""
    wanted = {settings.feedback_topic: settings.feedback_partitions, settings.dlq_topic: 1}
    configs = {"min.insync.replicas": str(settings.kafka_min_insync_replicas)}
    rf = settings.kafka_replication_factor
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(settings), client_id="online-admin")
            try:
                existing = set(admin.list_topics())
                missing = [NewTopic(t, n, rf, topic_configs=configs) for t, n in wanted.items() if t not in existing]
                if missing:
                    try:
                        admin.create_topics(missing)
                    except TopicAlreadyExistsError:
                        pass
                return
            finally:
                admin.close()
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("broker not ready (%s), retrying", exc)
            time.sleep(0.5)


def make_producer(settings: Settings, **overrides) -> KafkaProducer:
    config = dict(
        bootstrap_servers=kafka_bootstrap(settings),
        acks="all",
        enable_idempotence=True,  # a retried send is written once (producer id + sequence numbers)
        linger_ms=5,
        retries=5,
        max_in_flight_requests_per_connection=1,
        request_timeout_ms=10_000,
        max_block_ms=5_000,
    )
    config.update(overrides)
    return KafkaProducer(**config)


def discard_producer(producer: KafkaProducer, timeout: float = 1.0) -> None:
    """Close a producer whose pending records were already answered as failed, without waiting on them.

    kafka-python's ``close(timeout=0)`` raises on pending records before it stops the sender thread, so
    a producer dropped in a broker outage would leak a thread retrying forever: force-close the sender
    (it aborts the incomplete batches), then close."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(timeout)
    try:
        producer.close(timeout=0)
    except KafkaError as exc:
        log.info("producer closed with records pending: %r", exc)


def make_consumer(settings: Settings, **overrides) -> KafkaConsumer:
    config = dict(
        bootstrap_servers=kafka_bootstrap(settings),
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=settings.consumer_max_poll_interval_ms,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=max(settings.consumer_session_timeout_ms // 6, 100),
        max_poll_records=settings.consumer_batch_size,
    )
    config.update(overrides)
    return KafkaConsumer(**config)
