"""Feedback intake behind `POST /v1/feedback`: rate limit, then produce with acks=all and wait.

A 202 is answered only after the broker acknowledged every event of the call; if it does not within
``feedback_timeout_s`` (0.8 s by default, so the answer comes within 1 s) the call is a 503 with Retry-After and the producer is rebuilt,
so nothing that got a 202 is unstored. Clients that retry a 503 should send their own ``event_id``s: the consumer
deduplicates by it.

Texts are PII-masked here, before they are produced: the feedback topic (and the dead-letter topic after
it) never holds what the masker finds. The consumer masks again what other producers send (masking is
idempotent, so a masked text stays as it is).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis
from kafka.errors import KafkaError

from online.bus import discard_producer, ensure_topics, make_producer
from online.connections import NotConfigured
from online.credentials import Credential, Signer, signing_secret
from online.events import MAX_TEXT_CHARS, AnyEvent, CorrectionEvent, LabelEvent, encode_event
from online.feedback.pii import mask_pii
from online.serving.breaker import Breaker
from online.wiring.stores import Stores

log = logging.getLogger("online.api.feedback")

Event = AnyEvent


class Unavailable(RuntimeError):
    """Feedback cannot be taken now (503): nothing of the call may be taken as stored."""

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class BrokerUnavailable(Unavailable):
    """The broker did not acknowledge in time, or is known to be down."""


class LimiterUnavailable(Unavailable):
    """Redis is down and the rate limit fails closed (``feedback_rate_limit_fail=closed``)."""


class RateLimited(RuntimeError):
    def __init__(self, source: str, retry_after: int, what: str = "events", until: float = 0.0) -> None:
        super().__init__(f"source {source!r} is over its feedback rate limit ({what} per second)")
        self.source = source
        self.retry_after = retry_after
        self.until = until  # wall clock: the end of the window the budget ran out in


_TEXT_FIELDS: dict[type, tuple[str, ...]] = {LabelEvent: ("text",), CorrectionEvent: ("prompt", "answer")}


def _chars(event: Event) -> int:
    """What an event costs the pipeline by its length: the characters of its texts."""
    return sum(len(getattr(event, name) or "") for name in _TEXT_FIELDS.get(type(event), ()))


def masked(events: list[Event]) -> list[Event]:
    """Events with their texts PII-masked (a label's text, a correction's prompt and answer; a thumbs
    event carries none), validated again: a placeholder may be longer than what it replaces (``a@b.io`` ->
    ``<EMAIL>``), and a text masked past the contract's length is cut to it, so what is produced always
    validates."""
    out: list[Event] = []
    for ev in events:
        update = {}
        for name in _TEXT_FIELDS.get(type(ev), ()):
            value = getattr(ev, name)
            if value is not None and (text := mask_pii(value)) != value:
                update[name] = text[:MAX_TEXT_CHARS]
        if update:
            ev = type(ev).model_validate({**ev.model_dump(), **update})
        out.append(ev)
    return out


class FeedbackIntake:
    """Answers within ``feedback_timeout_s``, whatever its dependencies do: each has a breaker, so a
    known-down broker is answered 503 at once (Retry-After: the breaker's next trial), and a call that
    waits on the broker is cut at the deadline (the broker thread may finish later: its events are then
    stored though answered 503, which the client's retry with the same event_ids deduplicates)."""

    def __init__(self, stores: Stores, redis_health: Breaker, broker_health: Breaker) -> None:
        self.settings = stores.settings
        self.r = stores.redis
        self.keys = stores.keys
        self.volume = stores.volume
        self.status = stores.status
        self.buffer = stores.buffer
        self._backlog = (0, 0.0)  # (untrained samples, when read): read at most once a second
        self._signer: Signer | None = None
        self.redis_health = redis_health
        self.broker_health = broker_health
        self._producer = None
        self._lock = threading.Lock()
        self._background: set[asyncio.Task] = set()

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                try:
                    self._producer.close(timeout=5)
                except KafkaError:  # pending records were answered 503 (or never sent): drop them
                    discard_producer(self._producer)
                self._producer = None

    def _drop_producer(self) -> None:
        if self._producer is not None:
            discard_producer(self._producer)
            self._producer = None

    async def submit(self, events: list[Event], credential: Credential | None = None) -> list[Event]:
        """Rate-limit, mask, then produce ``events`` with the ``credential`` the call came with, signed;
        returns them as produced. Raises Unavailable, RateLimited."""
        credential = credential or Credential()
        started = time.monotonic()
        try:  # Redis I/O stays off the event loop, and within the call's deadline
            await asyncio.wait_for(
                asyncio.to_thread(self._check_rate, events, credential), timeout=self.settings.feedback_timeout_s
            )
        except TimeoutError:  # a hanging Redis: its breaker learns it when the call fails in its thread
            self._limiter_down()
        if not self.broker_health.allow():
            raise BrokerUnavailable("the broker is unreachable", self.broker_health.retry_after_s())
        # masking is CPU work (off the event loop), paid only for calls within their rate and a reachable
        # broker; it does not eat into the broker's budget
        mask_started = time.monotonic()
        events = await asyncio.to_thread(masked, events)
        deadline = started + (time.monotonic() - mask_started) + self.settings.feedback_timeout_s
        budget = max(deadline - time.monotonic(), 0.05)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._produce, events, budget, credential), timeout=budget)
        except TimeoutError as exc:
            self.broker_health.failed("no acknowledgement within the feedback timeout")
            reason = f"the broker did not acknowledge within {self.settings.feedback_timeout_s} s"
            raise BrokerUnavailable(reason, self.broker_health.retry_after_s()) from exc
        # the volume count is best-effort: off the answer's path
        task = asyncio.create_task(asyncio.to_thread(self._count, [(e.event_id, e.source) for e in events]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return events

    def _check_rate(self, events: list[Event], credential: Credential | None = None) -> None:
        """A fixed one-second window per source, shared by every replica through Redis; anonymous
        feedback also per client address (names cost nothing: a new name per event would dodge a
        per-source limit)."""
        if not self.redis_health.allow():
            return self._limiter_down()
        now = int(time.time())
        per_source: dict[str, tuple[int, int]] = {}  # source -> (events, characters)
        for ev in events:
            n, chars = per_source.get(ev.source, (0, 0))
            per_source[ev.source] = (n + 1, chars + _chars(ev))
        address = None
        if credential is not None and not credential.level and credential.address:
            address = f"addr:{credential.address}"
            per_source[address] = (len(events), sum(c for _, c in per_source.values()))
        s = self.settings
        checks = []  # (key, amount, limit, what): one event counter and one character counter per source
        for source, (n, chars) in per_source.items():
            limit = s.feedback_client_rate_limit if source.startswith("addr:") else s.feedback_rate_limit
            checks.append((source, self.keys.rate(source, now), n, limit, f"{limit} events"))
            checks.append(
                (source, self.keys.rate_chars(source, now), chars, s.feedback_chars_rate_limit,
                 f"{s.feedback_chars_rate_limit:,} characters of text")
            )  # fmt: skip
        try:
            with self.r.pipeline(transaction=False) as pipe:
                for _, key, amount, _, _ in checks:
                    pipe.incrby(key, amount)
                    pipe.expire(key, 2)
                counts = pipe.execute()[::2]
        except redis.RedisError as exc:
            self.redis_health.failed(exc)  # logged once per outage there
            return self._limiter_down()
        self.redis_health.succeeded()
        over = [(source, what) for (source, _, _, limit, what), count in zip(checks, counts) if count > limit]
        if over:  # the address over its budget: its anonymous calls are refused for the rest of this window
            mine = [(source, what) for source, what in over if source == address]
            source, what = (mine or over)[0]  # the address's own budget named first: the gate repeats it
            raise RateLimited(source, 1, what, until=now + 1 if mine else 0.0)
        self._check_backlog()

    def _check_backlog(self) -> None:
        """Admission: the buffer keeps every untrained sample, so past ``feedback_max_backlog`` of them
        (training paused or far behind) feedback waits (503) instead of growing Redis without bound."""
        backlog, at = self._backlog
        now = time.monotonic()
        if now - at >= 1.0:
            try:
                backlog = self.buffer.new_count()
            except redis.RedisError:
                return  # the rate limiter's outage handling applies
            self._backlog = (backlog, now)
        if backlog >= self.settings.feedback_max_backlog:
            raise Unavailable(
                f"{backlog} feedback samples wait for training (limit {self.settings.feedback_max_backlog}); "
                "training is paused or behind",
                30,
            )

    def _limiter_down(self) -> None:
        """Open by default: accepting feedback matters more than limiting it for the outage."""
        if self.settings.feedback_rate_limit_fail == "closed":
            raise LimiterUnavailable("the rate limiter's Redis is unreachable", self.redis_health.retry_after_s())

    def _sign(self) -> Signer | None:
        """The stack's signer (its secret from the settings or Redis), or None while Redis is unreachable."""
        if self._signer is None:
            key = self.settings.feedback_signing_key
            try:
                secret = signing_secret(key.get_secret_value() if key else None, self.r, self.keys.signing_secret)
            except redis.RedisError as exc:
                self.redis_health.failed(exc)
                return None
            self._signer = Signer(secret)
        return self._signer

    def _produce(self, events: list[Event], budget: float, credential: Credential) -> None:
        signer = self._sign()
        if signer is None and credential.level:  # trusted feedback must not go out as anonymous
            raise Unavailable("cannot sign the credential now (Redis unreachable)", self.redis_health.retry_after_s())
        if not self._lock.acquire(timeout=budget):
            raise BrokerUnavailable("the broker is busy acknowledging earlier calls")
        try:
            if self._producer is None:
                ensure_topics(self.settings, timeout_s=budget)
                timeout_ms = int(self.settings.feedback_timeout_s * 1000)
                self._producer = make_producer(self.settings, request_timeout_ms=timeout_ms, max_block_ms=timeout_ms)
            producer = self._producer
            futures = []
            for ev in events:
                value = encode_event(ev)
                headers = signer.headers(credential, value) if signer else None
                futures.append(
                    producer.send(self.settings.feedback_topic, value, key=ev.event_id.encode(), headers=headers)
                )
            producer.flush(timeout=budget)
            for f in futures:
                f.get(timeout=0.1)
        except (KafkaError, OSError, NotConfigured) as exc:
            self.broker_health.failed(exc)  # logged once per outage there
            self._drop_producer()  # drop what is pending: it was answered 503
            reason = f"the broker did not acknowledge ({str(exc) or type(exc).__name__})"
            raise BrokerUnavailable(reason, self.broker_health.retry_after_s()) from exc
        finally:
            self._lock.release()
        self.broker_health.succeeded()

    def _count(self, events: list[tuple[str, str]]) -> None:
        """Feedback volume for the dashboard and each event's "accepted" status: best-effort, a missed
        write never costs an accepted event."""
        if not self.redis_health.allow():
            return
        try:
            self.volume.add(len(events))
            self.status.accepted(events)
        except redis.RedisError as exc:
            self.redis_health.failed(exc)
        else:
            self.redis_health.succeeded()
