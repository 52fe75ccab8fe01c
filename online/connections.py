"""Clients for the two servers every process talks to, built from :class:`Settings` in one place."""

from __future__ import annotations

from typing import Literal

import redis
import redis.asyncio as aredis

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


Role = Literal["serving", "worker"]


def redis_client(settings: Settings, role: Role = "worker") -> redis.Redis:
    """A decoded-string client for one role.

    ``worker`` (consumer, trainer, CLI): retries connection errors for about 17 s, so a Redis restart
    is survived without losing the batch or round in hand. ``serving`` (an API replica): short socket
    timeouts and one quick retry, so a request never waits on a Redis that is down; everything the
    request path writes to Redis is best-effort or answered with a 503."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    if role == "serving":
        return redis.Redis.from_url(
            redis_url(settings),
            decode_responses=True,
            socket_connect_timeout=settings.serving_redis_timeout_s,
            # a down Redis fails at connect; reads get longer, for admin listings of thousands of items
            socket_timeout=4 * settings.serving_redis_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=10,
        )
    return redis.Redis.from_url(
        redis_url(settings),
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=10,
    )


FsyncMode = Literal["everysec", "server", "waitaof"]


def fsync_mode(client: redis.Redis, settings: Settings) -> FsyncMode:
    """How the consumer keeps ``redis_fsync``'s promise on this server.

    ``server``: the server fsyncs before every reply (appendfsync always); ``waitaof``: the consumer
    waits with WAITAOF (Redis >= 7.2) before committing offsets; ``everysec``: nothing extra (the
    setting, or a server that can do neither, which is logged loudly by the caller)."""
    if settings.redis_fsync == "everysec":
        return "everysec"
    try:
        config = client.config_get("append*")
        if config.get("appendonly") == "no":
            return "everysec"  # no AOF at all: nothing to wait on (the caller logs the promise as unkept)
        if config.get("appendfsync") == "always":
            return "server"
    except redis.ResponseError:  # CONFIG disabled (managed Redis): try WAITAOF
        pass
    version = tuple(int(p) for p in str(client.info("server").get("redis_version", "0")).split(".")[:2])
    return "waitaof" if version >= (7, 2) else "everysec"


def fsync_barrier(client: redis.Redis, probe_key: str, timeout_ms: int = 5000) -> None:
    """Return once every earlier write of any connection is fsynced to the local AOF (WAITAOF 1 0).

    WAITAOF waits for this connection's own writes, and the AOF is fsynced up to an offset: a tiny
    write on the same connection first makes the barrier cover every earlier write of every connection."""
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(probe_key)
        pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
        _, (local, _) = pipe.execute()
    if int(local) < 1:
        raise redis.TimeoutError(f"the AOF was not fsynced within {timeout_ms} ms")


def async_redis_client(settings: Settings) -> aredis.Redis:
    """The API's event-loop client (pub/sub of live-alias changes), fail-fast like ``serving``."""
    return aredis.Redis.from_url(
        redis_url(settings),
        decode_responses=True,
        socket_connect_timeout=settings.serving_redis_timeout_s,
    )
