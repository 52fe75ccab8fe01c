"""Clients for the two servers every process talks to, built from :class:`Settings` in one place."""

from __future__ import annotations

import redis

from online.settings import Settings


class NotConfigured(RuntimeError):
    """A server address is missing: run ``online up`` (embedded servers) or set the variable named."""


def redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise NotConfigured("ONLINE_REDIS_URL is not set (or run `online up`, which starts a local Redis)")
    return settings.redis_url


def kafka_bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise NotConfigured("ONLINE_KAFKA_BOOTSTRAP is not set (or run `online up`, which starts a local broker)")
    return settings.kafka_bootstrap


def redis_client(settings: Settings) -> redis.Redis:
    """A decoded-string client with retries on connection errors (Redis restarts are survivable)."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        redis_url(settings),
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=10,
    )
