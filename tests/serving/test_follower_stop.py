"""A replica's registry watch ends on stop, even when redis-py swallows its cancellation."""

from __future__ import annotations

import asyncio
import logging
import time

from online.connections import async_redis_client
from online.serving.batcher import MicroBatcher
from online.serving.breaker import Breaker
from online.serving.follower import WATCH_READ_S, VersionFollower
from online.serving.metrics import ApiMetrics
from online.wiring.stores import Stores


def test_a_watch_whose_cancellation_is_swallowed_ends_within_a_read(settings, monkeypatch, caplog):
    """redis-py's pubsub can swallow a cancellation that lands in a read and then read on for the whole
    timeout (or reconnect a connection closed under it and read again). With a poll interval of a minute
    the watch read for that minute and stop left it behind; it now reads at most WATCH_READ_S at a time
    and looks at its stop flag after each read."""
    from redis.asyncio.client import PubSub

    reads: list[float] = []

    async def stubborn_read(self, ignore_subscribe_messages=False, timeout=0.0):
        reads.append(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await asyncio.sleep(deadline - time.monotonic())
            except asyncio.CancelledError:
                pass  # swallowed, as redis-py's read can

    monkeypatch.setattr(PubSub, "get_message", stubborn_read)
    s = settings.model_copy(update={"model_poll_s": 60.0})
    caplog.set_level(logging.WARNING, logger="online.serving.follower")

    async def run() -> float:
        stores = Stores.from_settings(s, role="serving")
        client = async_redis_client(s)
        batcher = MicroBatcher(lambda _m, texts: texts)
        follower = VersionFollower(s, stores.registry, batcher, ApiMetrics(), client, Breaker())
        try:
            follower.start()
            while len(reads) < 2:  # the first turn syncs at once; the second read waits for the next poll
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await follower.stop()
            return time.monotonic() - started
        finally:
            await client.aclose()
            stores.close()

    took = asyncio.run(run())
    assert took < WATCH_READ_S + 1.0, f"stop took {took:.1f} s"
    assert max(reads) <= WATCH_READ_S
    assert not [r for r in caplog.records if "left behind" in r.getMessage()]
