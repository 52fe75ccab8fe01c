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
        raise NotConfigured(
            f"ONLINE_REDIS_URL is not set, and no `online up` runs with ONLINE_STATE_DIR={settings.state_dir} "
            "(start one, which starts a local Redis, or set ONLINE_STATE_DIR to the one it uses)"
        )
    return settings.redis_url


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """``host:port,host:port`` as (host, port) pairs; a clear error for a malformed entry."""
    out = []
    for entry in (settings.redis_sentinels or "").split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise NotConfigured(f"ONLINE_REDIS_SENTINELS: {entry.strip()!r} is not host:port")
        out.append((host, int(port)))
    return out


def _url_options(settings: Settings) -> dict:
    """Password and database from ``redis_url`` when Sentinel finds the master (its host is ignored)."""
    if not settings.redis_url:
        return {}
    pool = redis.ConnectionPool.from_url(settings.redis_url)
    kwargs = pool.connection_kwargs
    return {k: kwargs[k] for k in ("password", "username", "db") if kwargs.get(k) is not None}


def kafka_bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise NotConfigured(
            f"ONLINE_KAFKA_BOOTSTRAP is not set, and no `online up` runs with ONLINE_STATE_DIR={settings.state_dir} "
            "(start one, which starts a local broker, or set ONLINE_STATE_DIR to the one it uses)"
        )
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
        options = dict(
            socket_connect_timeout=settings.serving_redis_timeout_s,
            # a down Redis fails at connect; reads get longer, for admin listings of thousands of items
            socket_timeout=4 * settings.serving_redis_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        )
    else:
        options = dict(retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=20))
    options |= dict(decode_responses=True, retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    if settings.redis_sentinels:
        # Through Sentinel: a connection error makes the pool ask the sentinels for the master again, so
        # the same client follows a failover (redis-py's SentinelConnectionPool); scripts, pipelines and
        # transactions run on the master as before.
        from redis.sentinel import Sentinel

        probe = settings.serving_redis_timeout_s if role == "serving" else 2.0
        # The sentinels' own timeouts go in sentinel_kwargs: Sentinel's other keyword arguments become the
        # master connections' options, and a 2 s socket timeout there would cut a WAIT short.
        sentinel = Sentinel(
            sentinel_addresses(settings), sentinel_kwargs={"socket_timeout": probe, "socket_connect_timeout": probe}
        )
        return sentinel.master_for(settings.redis_sentinel_master, **(options | _url_options(settings)))
    return redis.Redis.from_url(redis_url(settings), health_check_interval=10, **options)


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


def replication_barrier(client: redis.Redis, probe_key: str, replicas: int, timeout_ms: int = 5000) -> None:
    """Return once ``replicas`` replicas have every earlier write of any connection (WAIT after a probe
    write on the same connection: replication is one ordered stream). Under Sentinel a failover promotes
    a replica, so a write only the old master had would be lost with it: the consumer commits a batch's
    offsets only after this barrier."""
    # A master left without replicas (its replica was promoted after a failover, nothing re-attached yet)
    # can only be waited on by the replicas it has: waiting for absent ones would stop all feedback.
    connected = int(client.info("replication").get("connected_slaves", 0))
    replicas = min(replicas, connected)
    if replicas == 0:
        return
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(probe_key)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        _, acked = pipe.execute()
    if int(acked) < replicas:
        raise redis.TimeoutError(f"{acked} of {replicas} replicas acknowledged within {timeout_ms} ms")


def async_redis_client(settings: Settings) -> aredis.Redis:
    """The API's event-loop client (pub/sub of live-alias changes), fail-fast like ``serving``."""
    if settings.redis_sentinels:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(sentinel_addresses(settings), socket_connect_timeout=settings.serving_redis_timeout_s)
        return sentinel.master_for(
            settings.redis_sentinel_master,
            decode_responses=True,
            socket_connect_timeout=settings.serving_redis_timeout_s,
            **_url_options(settings),
        )
    return aredis.Redis.from_url(
        redis_url(settings),
        decode_responses=True,
        socket_connect_timeout=settings.serving_redis_timeout_s,
    )
