"""Feedback intake behind `POST /v1/feedback`: rate limit, then produce with acks=all and wait.

A 202 is answered only after the broker acknowledged every event of the call; if it does not within
``feedback_timeout_s`` the call is a 503 with Retry-After and the producer is rebuilt, so nothing that
got a 202 is unstored. Clients that retry a 503 should send their own ``event_id``s: the consumer
deduplicates by it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis
from kafka.errors import KafkaError

from online.bus import ensure_topics, make_producer
from online.connections import NotConfigured
from online.feedback.events import LabelEvent, ThumbsEvent, encode_event
from online.stores import Stores

log = logging.getLogger("online.api.feedback")

Event = LabelEvent | ThumbsEvent


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time; nothing of the call may be taken as stored."""


class RateLimited(RuntimeError):
    def __init__(self, source: str, retry_after: int) -> None:
        super().__init__(f"source {source!r} is over its feedback rate limit")
        self.retry_after = retry_after


class FeedbackIntake:
    def __init__(self, stores: Stores) -> None:
        self.settings = stores.settings
        self.r = stores.redis
        self.keys = stores.keys
        self.volume = stores.volume
        self._producer = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._drop_producer(timeout=5)

    def _drop_producer(self, timeout: float) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except KafkaError as exc:  # pending records were answered 503 (or never sent): drop them
                log.info("producer closed with records pending: %r", exc)
            self._producer = None

    async def submit(self, events: list[Event]) -> None:
        await asyncio.to_thread(self._check_rate, events)  # Redis I/O stays off the event loop
        await asyncio.to_thread(self._produce, events)

    def _check_rate(self, events: list[Event]) -> None:
        """A fixed one-second window per source, shared by every replica through Redis."""
        now = int(time.time())
        per_source: dict[str, int] = {}
        for ev in events:
            per_source[ev.source] = per_source.get(ev.source, 0) + 1
        try:
            with self.r.pipeline(transaction=False) as pipe:
                for source, n in per_source.items():
                    key = self.keys.rate(source, now)
                    pipe.incrby(key, n)
                    pipe.expire(key, 2)
                counts = pipe.execute()[::2]
        except redis.RedisError as exc:  # the limiter fails open: accepting feedback matters more
            log.warning("rate limiter unavailable: %s", exc)
            return
        for (source, _), count in zip(per_source.items(), counts):
            if count > self.settings.feedback_rate_limit:
                raise RateLimited(source, 1)

    def _produce(self, events: list[Event]) -> None:
        with self._lock:
            try:
                if self._producer is None:
                    ensure_topics(self.settings, timeout_s=self.settings.feedback_timeout_s)
                    self._producer = make_producer(
                        self.settings,
                        request_timeout_ms=int(self.settings.feedback_timeout_s * 1000),
                        max_block_ms=int(self.settings.feedback_timeout_s * 1000),
                    )
                producer = self._producer
                futures = [
                    producer.send(self.settings.feedback_topic, encode_event(ev), key=ev.event_id.encode())
                    for ev in events
                ]
                producer.flush(timeout=self.settings.feedback_timeout_s)
                for f in futures:
                    f.get(timeout=0.1)
                try:
                    self.volume.add(len(events))
                except redis.RedisError as exc:  # a missed count never costs an accepted event
                    log.warning("feedback volume not counted: %s", exc)
            except (KafkaError, OSError, NotConfigured) as exc:
                log.warning("broker did not acknowledge feedback: %r", exc)
                self._drop_producer(timeout=0)  # drop what is pending: it was answered 503
                raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
