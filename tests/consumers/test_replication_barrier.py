"""The consumer's replication barrier: offsets are committed only once a replica holds the batch."""

from __future__ import annotations

from online.connections import redis_client, replication_barrier


def test_a_master_without_replicas_passes_the_barrier(settings):
    """After a failover the promoted master has no replica until one re-attaches: feedback goes on."""
    client = redis_client(settings)
    replication_barrier(client, "probe", replicas=1, timeout_ms=100)
    assert client.get("probe") is None  # nothing to wait on: no probe write either


def test_with_sentinel_the_consumer_waits_for_one_replica(settings):
    from consumers.feedback import FeedbackConsumer
    from online.wiring.stores import Stores

    stores = Stores.from_settings(settings)
    assert FeedbackConsumer(settings, stores).replica_acks == 0
    sentinel = settings.model_copy(update={"redis_sentinels": "127.0.0.1:1"})
    assert FeedbackConsumer(sentinel, stores).replica_acks == 1
    explicit = sentinel.model_copy(update={"redis_replica_acks": 2})
    assert FeedbackConsumer(explicit, stores).replica_acks == 2
