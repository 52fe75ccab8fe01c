"""What became of each feedback event: the record behind ``GET /v1/feedback/{event_id}``.

Written along the event's way, each write idempotent and kept ``feedback_status_ttl_s`` (records are
bounded by the feedback rate limit times that TTL, and Redis may evict them first under memory pressure):

- the API, once the broker acknowledged the event: ``accepted_at`` (best-effort, off the answer's path);
- the consumer: ``state`` ``stored`` (with the sample id ``sid`` its text and label became), ``recorded``
  (a judgement only: a thumbs vote without a label) or ``dead`` (with the ``reason``);
- the trainer, per round, not per event: ``rounds``, a sorted set of the buffer sequence ranges each round
  consumed and the version it made (capped at ``ROUNDS_KEPT``), so "trained in version N" is one lookup.

The verdict is composed on read (:func:`compose`) from this record, the sample's fields in the buffer
(held, and why), the buffer's cursor and the reader's own correction memory (answered at once, or held
by its screen): no event is ever rewritten when its sample's fate changes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from online.contract import FeedbackStatus
from online.feedback.labels import PENDING
from online.keys import Keys

ROUNDS_KEPT = 10_000
SOURCE_HELD = "source quarantined"  # as ``online.feedback.quarantine`` says it


@dataclass(frozen=True)
class RoundRange:
    after: int  # the cursor before the round
    upto: int  # the cursor after it
    version: int | None  # None: everything was held, nothing trained
    status: str


class EventStatusLog:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        self.r = client
        self.p = keys.feedback_status
        self.ttl_s = ttl_s

    def _key(self, event_id: str) -> str:
        return f"{self.p}:e:{event_id}"

    def accepted(self, events: list[tuple[str, str]], at: float | None = None) -> None:
        """(event id, source) the broker acknowledged."""
        at = time.time() if at is None else at
        with self.r.pipeline(transaction=False) as pipe:
            for eid, source in events:
                pipe.hsetnx(self._key(eid), "accepted_at", at)
                pipe.hsetnx(self._key(eid), "source", source)
                pipe.expire(self._key(eid), self.ttl_s)
            pipe.execute()

    def processed(
        self,
        stored: list[tuple[str, str, str, str, str]] = (),  # type: ignore[assignment]
        recorded: list[tuple[str, str]] = (),  # type: ignore[assignment]
        dead: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        """The consumer's word on a batch: (event id, source, sid, label, trusted) stored, (event id,
        source) judgements recorded, (event id, reason) dead-lettered."""
        now = time.time()
        with self.r.pipeline(transaction=False) as pipe:
            for eid, source, sid, label, trusted in stored:
                fields = {
                    "state": "stored",
                    "source": source,
                    "sid": sid,
                    "label": label,
                    "trusted": trusted,
                    "at": now,
                }
                pipe.hset(self._key(eid), mapping=fields)
                pipe.expire(self._key(eid), self.ttl_s)
            for eid, source in recorded:
                pipe.hset(self._key(eid), mapping={"state": "recorded", "source": source, "at": now})
                pipe.expire(self._key(eid), self.ttl_s)
            for eid, reason in dead:
                pipe.hset(self._key(eid), mapping={"state": "dead", "reason": reason[:500], "at": now})
                pipe.expire(self._key(eid), self.ttl_s)
            pipe.execute()

    def get(self, event_id: str) -> dict[str, str]:
        return self.r.hgetall(self._key(event_id))

    def round_done(self, after: int, upto: int, version: int | None, status: str) -> None:
        """A round consumed buffer sequences (after, upto] and made ``version`` (or nothing)."""
        if upto <= after:
            return
        member = json.dumps({"after": after, "upto": upto, "version": version, "status": status})
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zadd(f"{self.p}:rounds", {member: upto})
            pipe.zremrangebyrank(f"{self.p}:rounds", 0, -ROUNDS_KEPT - 1)
            pipe.execute()

    def round_of(self, seq: int) -> RoundRange | None:
        """The round that consumed sample sequence ``seq``, if it is still remembered."""
        found = self.r.zrangebyscore(f"{self.p}:rounds", seq, "+inf", start=0, num=1)
        if not found:
            return None
        r = json.loads(found[0])
        if not r["after"] < seq <= r["upto"]:
            return None
        return RoundRange(r["after"], r["upto"], r["version"], r["status"])


def release_hint(reason: str, label: str, sid: str, settings) -> str:
    """What would release a sample held for ``reason``."""
    trusted = "or send it again with the admin token or a trusted feedback key (X-API-Key)"
    if reason == SOURCE_HELD:
        return (
            "an operator releases the sender: `online quarantine release --source NAME` (trusts its feedback key), "
            "or, for a client without a key, `--source addr:<its address>` (`online quarantine list` shows it)"
        )
    if reason.startswith(PENDING):
        return (
            f"the label goes live: `online labels approve {label}`, {settings.label_min_examples} examples of it, "
            f"or {settings.quarantine_release_sources} independent senders teaching it; {trusted}"
        )
    return (
        f"an operator: `online quarantine release {sid}`; or {settings.quarantine_release_sources} independent "
        f"senders (feedback keys, or client addresses without keys) sending the same text and label; {trusted}"
    )


def compose(
    event_id: str,
    record: dict[str, str],
    sample: dict[str, str],
    cursor: int,
    trained: RoundRange | None,
    memory: tuple[str, str] | None,
    settings,
) -> FeedbackStatus:
    """The event's fate, most decisive first: dead-lettered, held, trained in a version, answered by the
    correction memory, stored (waiting for a round), recorded, accepted (not consumed yet), unknown."""
    state = record.get("state")
    base = {"event_id": event_id, "label": record.get("label"), "sid": record.get("sid") or None}
    base["trusted"] = bool(record.get("trusted"))
    if state == "dead":
        return FeedbackStatus(
            **base,
            state="dead_lettered",
            detail=f"dead-lettered: {record.get('reason', '')}",
            reason=record.get("reason"),
        )
    if state == "recorded":
        return FeedbackStatus(**base, state="recorded", detail="counted as a judgement of the version that answered")
    if state != "stored":
        if record.get("accepted_at"):
            return FeedbackStatus(**base, state="accepted", detail="accepted by the broker; not consumed yet")
        return FeedbackStatus(
            **base, state="unknown",
            detail="no such event: not consumed yet, or older than the status TTL "
            f"({settings.feedback_status_ttl_s} s)",
        )  # fmt: skip
    sid = base["sid"] or ""
    memory_state = memory[0] if memory else None
    base["memory"] = memory_state
    reason = sample.get("quarantined")
    if reason:
        return FeedbackStatus(
            **base, state="held", detail=f"held by the screen: {reason}", reason=reason,
            release=release_hint(reason, base["label"] or "", sid, settings),
        )  # fmt: skip
    seq = int(sample.get("seq", 0) or 0)
    if seq and seq <= cursor:
        if trained is None:
            return FeedbackStatus(**base, state="trained", detail="taken by an earlier round (no longer remembered)")
        if trained.version is None:
            detail = "taken by a round that trained nothing (all its samples were held)"
        else:
            detail = f"trained in version {trained.version} ({trained.status})"
            if memory_state == "active":  # the version serving does not hold it (a rollback, a rejected round)
                detail += "; the version serving now does not have it: answered by the correction memory"
        return FeedbackStatus(
            **base, state="trained", version=trained.version, round_status=trained.status, detail=detail
        )
    if memory_state == "active":
        return FeedbackStatus(
            **base, state="memory", detail="answered by the correction memory now; the next round trains it"
        )
    if memory_state == "held" and memory is not None and (base["label"] or "").startswith("gen:"):
        why = memory[1] or "the screen holds it"  # a generative correction: its memory's own screen
        return FeedbackStatus(
            **base, state="held", reason=why,
            detail=f"not answered from memory: {why}; the next round trains it",
            release="send it again with the admin token or a trusted feedback key (X-API-Key), or have "
            f"{settings.verdict_min_sources} independent sources send the same answer to the same prompt",
        )  # fmt: skip
    if memory_state == "held" and memory is not None:
        why = memory[1] or "the screen holds it"
        return FeedbackStatus(
            **base, state="held", reason=why,
            detail=f"held by the correction memory's screen: {why}; the next round's screen decides whether it is trained",
            release=release_hint(why, base["label"] or "", sid, settings),
        )  # fmt: skip
    if memory_state == "pending":
        why = f"{PENDING}: new label {base['label']!r} not live yet"
        return FeedbackStatus(
            **base, state="held", reason=why, detail=why, release=release_hint(why, base["label"] or "", sid, settings)
        )
    if not sample:
        return FeedbackStatus(**base, state="stored", detail="stored; its sample has since left the buffer")
    detail = "stored; the next round trains it" + (
        " (its text is already answered so)" if memory_state == "absorbed" else ""
    )
    return FeedbackStatus(**base, state="stored", detail=detail)
