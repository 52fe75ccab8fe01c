"""The replay buffer in Redis: durable, deduplicated, per-label, bounded, with a training cursor.

Write path (the feedback consumer): :meth:`ReplayBuffer.add` takes a batch of labelled examples and
applies it in one Lua script, so a batch is all-or-nothing and redelivery is harmless:

- idempotent by ``event_id`` within its source (a ``seen:<online.events.dedup_id>`` key per event, kept
  ``dedup_ttl_s``): one client cannot make another's events look like duplicates of its own, and no
  event id collides with the dead letters' ``seen:dlq:<record>`` keys;
- exact duplicates (same normalised text and label) are counted on the stored sample, not stored again;
- every new sample gets a sequence number; the trainer's cursor says which ones it has trained on.

Texts are PII-masked before anything is stored (once: an ``Incoming`` the consumer masked says so). Capacity is bounded by class-balanced reservoir
eviction: while over capacity, a random *already trained* sample of the largest label is dropped, so a
sample is never evicted before the trainer saw it (nothing accepted is lost) and small labels keep theirs.

Read path (the trainer): :meth:`new_samples`, :meth:`samples`, :meth:`advance_cursor`.
Redis keys are built from one prefix inside the scripts: one Redis (not Redis Cluster) per buffer.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass

import redis

from online.events import dedup_id
from online.examples import Sample
from online.feedback.pii import mask_pii
from online.keys import Keys

# Counts of what the quarantine holds, kept as samples enter and leave it, so the summary reads
# counters, not every held text: ``qn`` (kind -> n), ``qsrc`` (source|kind -> n), ``qpend`` (pending
# label -> n), ``qpend:<label>`` (source -> n), ``qpendr`` (label -> the first reason).
_HELD_COUNTS = """
local function kind_of(reason)
  if string.sub(reason, 1, 13) == 'pending label' then return 'pending label' end
  if reason == 'source quarantined' then return 'source quarantined' end
  return 'contradicted'
end
local function bump(key, field, by)
  if redis.call('HINCRBY', key, field, by) <= 0 then redis.call('HDEL', key, field) end
end
local function count_held(p, sk, by)
  local f = redis.call('HMGET', sk, 'label', 'source', 'quarantined')
  local label, source, reason = f[1] or '', f[2] or '', f[3] or ''
  local kind = kind_of(reason)
  bump(p .. ':qn', kind, by)
  bump(p .. ':qsrc', source .. '|' .. kind, by)
  if kind == 'pending label' then
    bump(p .. ':qpend', label, by)
    bump(p .. ':qpend:' .. label, source, by)
    if by > 0 then redis.call('HSETNX', p .. ':qpendr', label, reason)
    elseif redis.call('HEXISTS', p .. ':qpend', label) == 0 then redis.call('HDEL', p .. ':qpendr', label) end
  end
end
local function unhold(p, sid, mark)
  local sk = p .. ':s:' .. sid
  count_held(p, sk, -1)
  local seq = redis.call('INCR', p .. ':seq')  -- a new sequence number: the next round trains on it
  local label = redis.call('HGET', sk, 'label')
  redis.call('HDEL', sk, 'quarantined', 'quarantined_at')
  redis.call('HSET', sk, 'seq', seq)
  if mark == '1' then redis.call('HSET', sk, 'released', 1) end  -- an operator's word: not screened again
  redis.call('ZADD', p .. ':l:' .. label, seq, sid)
  redis.call('ZADD', p .. ':log', seq, sid)
  redis.call('SADD', p .. ':labels', label)
end
"""


def with_held_counts(script: str) -> str:
    return _HELD_COUNTS + script


_ADD = with_held_counts("""
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local erased = ARGV[4]
local added, dups, replayed, gone = 0, 0, 0, 0
for i = 0, n - 1 do
  local b = 5 + i * 9
  local eid, sid, text, label, source, at = ARGV[b], ARGV[b+1], ARGV[b+2], ARGV[b+3], ARGV[b+4], ARGV[b+5]
  local th, origin, trusted = ARGV[b+6], ARGV[b+7], ARGV[b+8]
  local anon = origin == 'unsigned' or string.sub(origin, 1, 5) == 'addr:'  -- a keyless sender: one ledger entry
  local until_at = tonumber(redis.call('HGET', erased .. ':sources', source) or '-1')
  if anon then until_at = math.max(until_at, tonumber(redis.call('HGET', erased .. ':sources', origin) or '-1')) end
  if tonumber(at) <= until_at or redis.call('SISMEMBER', erased .. ':texts', th) == 1 then
    redis.call('SET', p .. ':seen:' .. eid, '1', 'NX', 'EX', ttl)  -- erased (`online forget`): seen, not stored
    gone = gone + 1
  elseif redis.call('SET', p .. ':seen:' .. eid, '1', 'NX', 'EX', ttl) then
    local sk = p .. ':s:' .. sid
    redis.call('SADD', p .. ':srcs:' .. sid, origin)  -- independent senders: who vouches for it
    redis.call('SADD', p .. ':names:' .. sid, source)  -- the sources it came from: what `online forget` finds
    redis.call('HINCRBY', p .. ':source:' .. source, 'events', 1)
    redis.call('EXPIRE', p .. ':source:' .. source, ttl)  -- a source silent for the dedup TTL is forgotten
    redis.call('SADD', p .. ':sources', source)
    if anon and origin ~= source then
      -- an anonymous sender is one ledger entry whatever names it invents (``Candidate.ledger_key``)
      redis.call('HINCRBY', p .. ':source:' .. origin, 'events', 1)
      redis.call('EXPIRE', p .. ':source:' .. origin, ttl)
      redis.call('SADD', p .. ':sources', origin)
    end
    redis.call('HINCRBY', p .. ':stats:' .. label, 'total', 1)
    redis.call('SADD', p .. ':labels', label)
    if trusted ~= '' and redis.call('EXISTS', sk) == 0 then
      redis.call('SREM', p .. ':dropped', sid)  -- a trusted sender's word brings a dropped example back
    end
    if redis.call('EXISTS', sk) == 1 or redis.call('SISMEMBER', p .. ':dropped', sid) == 1 then
      if redis.call('EXISTS', sk) == 1 then
        redis.call('HINCRBY', sk, 'count', 1)
        if trusted ~= '' then
          if trusted == 'admin' or redis.call('HGET', sk, 'trusted') ~= 'admin' then redis.call('HSET', sk, 'trusted', trusted) end
          if redis.call('ZREM', p .. ':q', sid) == 1 then unhold(p, sid, '0') end  -- vouched for: trained next
        end
      end  -- a dropped one stays gone
      redis.call('HINCRBY', p .. ':stats:' .. label, 'duplicates', 1)
      dups = dups + 1
    else
      local seq = redis.call('INCR', p .. ':seq')
      redis.call('HSET', sk, 'text', text, 'label', label, 'count', 1, 'seq', seq, 'source', source, 'at', at, 'origin', origin)
      if trusted ~= '' then redis.call('HSET', sk, 'trusted', trusted) end
      redis.call('ZADD', p .. ':l:' .. label, seq, sid)
      redis.call('ZADD', p .. ':log', seq, sid)
      added = added + 1
    end
  else
    replayed = replayed + 1
  end
end
return {added, dups, replayed, gone}
""")

_QUARANTINE = with_held_counts("""
local p, at, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local moved = 0
for i = 0, n - 1 do
  local sid, reason = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local sk = p .. ':s:' .. sid
  local label = redis.call('HGET', sk, 'label')
  if label and redis.call('ZREM', p .. ':log', sid) == 1 then
    redis.call('ZREM', p .. ':l:' .. label, sid)
    redis.call('HSET', sk, 'quarantined', reason, 'quarantined_at', at)
    redis.call('ZADD', p .. ':q', at, sid)
    count_held(p, sk, 1)
    moved = moved + 1
  end
end
return moved
""")

_RELEASE = with_held_counts("""
local p, mark, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local released = 0
for i = 0, n - 1 do
  local sid = ARGV[4 + i]
  if redis.call('ZREM', p .. ':q', sid) == 1 then
    unhold(p, sid, mark)
    released = released + 1
  end
end
return released
""")

_DROP = with_held_counts("""
local p, n, remember = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dropped = 0
for i = 0, n - 1 do
  local sid = ARGV[4 + i]
  if redis.call('ZREM', p .. ':q', sid) == 1 then
    count_held(p, p .. ':s:' .. sid, -1)
    local label = redis.call('HGET', p .. ':s:' .. sid, 'label')
    if label then redis.call('HINCRBY', p .. ':stats:' .. label, 'dropped', 1) end
    redis.call('DEL', p .. ':s:' .. sid, p .. ':srcs:' .. sid, p .. ':names:' .. sid)
    if remember == '1' then redis.call('SADD', p .. ':dropped', sid) end  -- the same (text, label) sent again is not stored again
    dropped = dropped + 1
  end
end
return dropped
""")

_EVICT = """
local p, label, cursor, r = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local sids = redis.call('ZRANGEBYSCORE', p .. ':l:' .. label, '-inf', cursor, 'LIMIT', r, 1)
if #sids == 0 then return 0 end
redis.call('DEL', p .. ':s:' .. sids[1], p .. ':srcs:' .. sids[1], p .. ':names:' .. sids[1])
redis.call('ZREM', p .. ':l:' .. label, sids[1])
redis.call('ZREM', p .. ':log', sids[1])
redis.call('HINCRBY', p .. ':stats:' .. label, 'evicted', 1)
return 1
"""

_DEAD = """
local p, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, n - 1 do
  local rid, label = ARGV[4 + i * 2], ARGV[5 + i * 2]
  if redis.call('SET', p .. ':seen:dlq:' .. rid, '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', p .. ':dlq', label, 1)
  end
end
return n
"""

_ADVANCE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], new) return new end
return cur
"""

NO_LABEL = "(none)"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def sample_id(text: str, label: str) -> str:
    return hashlib.sha1(f"{normalise(text)}\x1f{label}".encode()).hexdigest()[:20]


def text_hash(text: str) -> str:
    """A (masked) text's digest, whatever its label: what an erased text's tombstone keeps."""
    return hashlib.sha1(normalise(text).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Incoming:
    """A labelled example on its way into the buffer."""

    event_id: str
    text: str
    label: str
    source: str
    at: float
    origin: str = ""  # what independence rules count (``online.credentials``); "" : the source name
    trusted: str = ""  # "admin" or "key": sent with the admin token or a trusted feedback key
    masked: bool = False  # the text is PII-masked already (the consumer masks each text once)

    @property
    def dedup(self) -> str:
        return dedup_id(self.source, self.event_id)


@dataclass(frozen=True)
class Held:
    """A sample in quarantine: not trained on, not rehearsed, until released or dropped."""

    sid: str
    text: str
    label: str
    source: str
    sources: int  # distinct sources that sent this (text, label)
    reason: str
    at: float
    origin: str = ""  # who first sent it, as independence counts it (``online.credentials``)


@dataclass(frozen=True)
class AddResult:
    added: int
    duplicates: int
    replayed: int  # event ids already seen: redelivery
    erased: int = 0  # of an erased source or text (`online forget`): not stored
    sids: tuple[str, ...] = ()  # each item's sample id, in order


@dataclass(frozen=True)
class LabelStats:
    label: str
    stored: int
    total: int
    new: int
    duplicates: int
    dead_lettered: int
    evicted: int


class ReplayBuffer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        capacity: int,
        dedup_ttl_s: int,
    ) -> None:
        self.r = client
        self.p = keys.buffer
        self.erased = keys.erased
        self.capacity = capacity
        self.dedup_ttl_s = dedup_ttl_s
        self._add = client.register_script(_ADD)
        self._evict = client.register_script(_EVICT)
        self._advance = client.register_script(_ADVANCE)
        self._dead = client.register_script(_DEAD)
        self._quarantine = client.register_script(_QUARANTINE)
        self._release = client.register_script(_RELEASE)
        self._drop = client.register_script(_DROP)
        self._rng = random.Random()

    # --- writing ------------------------------------------------------------------------------
    def add(self, items: list[Incoming]) -> AddResult:
        """Store a batch atomically (PII-masked, deduplicated); then evict if over capacity."""
        if not items:
            return AddResult(0, 0, 0)
        args: list[str | int | float] = [self.p, self.dedup_ttl_s, len(items), self.erased]
        sids = []
        for it in items:
            text = it.text if it.masked else mask_pii(it.text)
            sids.append(sample_id(text, it.label))
            args += [it.dedup, sids[-1], text, it.label, it.source, it.at, text_hash(text), it.origin or it.source,
                     it.trusted]  # fmt: skip
        added, dups, replayed, gone = self._add(args=args)
        if added:
            self.evict_over_capacity()
        return AddResult(int(added), int(dups), int(replayed), int(gone), tuple(sids))

    def mark_seen(self, events: list[tuple[str, str]]) -> list[bool]:
        """Record events (source, event_id) that produce no sample (e.g. a bare thumbs down); True where
        first seen."""
        with self.r.pipeline(transaction=False) as pipe:
            for source, eid in events:
                pipe.set(f"{self.p}:seen:{dedup_id(source, eid)}", "1", nx=True, ex=self.dedup_ttl_s)
            return [bool(x) for x in pipe.execute()]

    def seen(self, events: list[tuple[str, str]]) -> list[bool]:
        """Whether each event (source, event_id) was stored (or recorded as seen) by a consumer: a
        client's "did my event land?", and the loss accounting of `online bench chaos`."""
        with self.r.pipeline(transaction=False) as pipe:
            for source, eid in events:
                pipe.exists(f"{self.p}:seen:{dedup_id(source, eid)}")
            return [bool(x) for x in pipe.execute()]

    def record_dead_letters(self, letters: list[tuple[str, str | None]]) -> None:
        """Count dead letters per label, once per record id (``topic:partition:offset``) however often
        a batch is redelivered. The dead-letter topic itself is at-least-once."""
        if letters:
            args: list[str | int] = [self.p, self.dedup_ttl_s, len(letters)]
            for record_id, label in letters:
                args += [record_id, label or NO_LABEL]
            self._dead(args=args)

    def evict_over_capacity(self) -> int:
        """Class-balanced reservoir eviction of already-trained samples; returns how many went.

        The per-label counts are read once and kept up to date locally, so evicting a whole batch
        costs one script call per sample, not a scan of every label per sample."""
        over = self.size() - self.capacity
        if over <= 0:
            return 0
        cursor = self.cursor()
        labels = sorted(self.labels())
        with self.r.pipeline(transaction=False) as pipe:
            for label in labels:
                pipe.zcard(f"{self.p}:l:{label}")
                pipe.zcount(f"{self.p}:l:{label}", "-inf", cursor)
            counts = pipe.execute()
        stored = dict(zip(labels, counts[::2]))
        evictable = dict(zip(labels, counts[1::2]))
        evicted = 0
        while evicted < over:
            candidates = [(stored[lab], lab) for lab in labels if evictable[lab] > 0]
            if not candidates:
                break  # everything is still untrained: stay over capacity until the trainer catches up
            _, label = max(candidates)
            if not self._evict(args=[self.p, label, cursor, self._rng.randrange(evictable[label])]):
                evictable[label] = 0  # changed under us (another consumer): leave this label for now
                continue
            stored[label] -= 1
            evictable[label] -= 1
            evicted += 1
        return evicted

    # --- reading (the trainer) ----------------------------------------------------------------
    def cursor(self) -> int:
        return int(self.r.get(f"{self.p}:cursor") or 0)

    def advance_cursor(self, upto: int) -> int:
        """Mark samples up to sequence ``upto`` as trained (never moves backwards)."""
        return int(self._advance(keys=[f"{self.p}:cursor"], args=[upto]))

    def labels(self) -> set[str]:
        return set(self.r.smembers(f"{self.p}:labels"))

    def size(self) -> int:
        return int(self.r.zcard(f"{self.p}:log"))

    def new_count(self) -> int:
        return int(self.r.zcount(f"{self.p}:log", f"({self.cursor()}", "+inf"))

    def new_samples(self, limit: int | None = None) -> tuple[list[Sample], int]:
        """Samples stored after the cursor (oldest first) and the sequence to advance the cursor to."""
        cursor = self.cursor()
        rows = self.r.zrangebyscore(
            f"{self.p}:log", f"({cursor}", "+inf", start=0 if limit else None, num=limit, withscores=True
        )
        samples = self._fetch([sid for sid, _ in rows])
        return samples, int(rows[-1][1]) if rows else cursor

    def samples(self, label: str | None = None) -> list[Sample]:
        """Every stored sample (of one label); the buffer is bounded, so this is bounded too."""
        key = f"{self.p}:l:{label}" if label else f"{self.p}:log"
        return self._fetch(self.r.zrange(key, 0, -1))

    def _fetch(self, sids: list[str]) -> list[Sample]:
        if not sids:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(f"{self.p}:s:{sid}")
            rows = pipe.execute()
        return [
            Sample(
                sid, h["text"], h["label"], int(h["count"]), int(h["seq"]), h.get("source", ""), "released" in h,
                h.get("trusted", ""), h.get("origin", "") or h.get("source", ""),
            )
            for sid, h in zip(sids, rows)
            if h
        ]  # fmt: skip

    # --- quarantine (poisoning defence) -------------------------------------------------------
    def quarantine(self, held: list[tuple[str, str]]) -> int:
        """Move samples (sid, reason) out of the trainable buffer into quarantine."""
        if not held:
            return 0
        args: list[str | float | int] = [self.p, time.time(), len(held)]
        for sid, reason in held:
            args += [sid, reason]
        return int(self._quarantine(args=args))

    def release(self, sids: list[str], by_operator: bool = True) -> int:
        """Back into the buffer as new samples: the next round trains on them. An operator's release
        marks them ``released`` (never screened again); a round re-queueing examples it held only while
        their label was pending (``by_operator=False``) leaves them to the screen."""
        return int(self._release(args=[self.p, int(by_operator), len(sids), *sids])) if sids else 0

    def drop(self, sids: list[str], remember: bool = True) -> int:
        """Delete held samples; ``remember``: the same (text, label) sent again is not stored again."""
        return int(self._drop(args=[self.p, len(sids), int(remember), *sids])) if sids else 0

    def trim_held(self, max_held: int, max_age_s: float, now: float | None = None) -> int:
        """Held samples older than ``max_age_s``, then the oldest past ``max_held``, leave for good (not
        remembered as dropped: sent again, they are screened again). Bounded work per call."""
        now = time.time() if now is None else now
        old = self.r.zrangebyscore(f"{self.p}:q", "-inf", now - max_age_s, start=0, num=1000)
        over = self.held_count() - len(old) - max_held
        if over > 0:
            old += self.r.zrange(f"{self.p}:q", len(old), len(old) + min(over, 1000) - 1)
        return self.drop(old, remember=False)

    def sample(self, sid: str) -> dict[str, str]:
        """One sample's fields (no text), for an event's status: label, seq, quarantined, trusted..."""
        fields = ["label", "seq", "source", "quarantined", "quarantined_at", "released", "trusted", "count"]
        values = self.r.hmget(f"{self.p}:s:{sid}", fields)
        return {f: v for f, v in zip(fields, values) if v is not None}

    def _count_held_again(self) -> None:
        """Held samples from before the counters existed: counted once, by re-holding them in place."""
        held = self.held()
        with self.r.pipeline(transaction=True) as pipe:
            for h in held:
                pipe.zrem(f"{self.p}:q", h.sid)
            pipe.execute()
        # moved back to the log for a moment, then quarantined again with their reasons (counted)
        with self.r.pipeline(transaction=True) as pipe:
            for h in held:
                pipe.zadd(f"{self.p}:log", {h.sid: 0})
            pipe.execute()
        self.quarantine([(h.sid, h.reason) for h in held])

    def tidy_labels(self) -> int:
        """Labels with no stored sample any more leave the label set, with their counts."""
        labels = sorted(self.labels())
        with self.r.pipeline(transaction=False) as pipe:
            for label in labels:
                pipe.zcard(f"{self.p}:l:{label}")
            sizes = pipe.execute()
        empty = [lab for lab, n in zip(labels, sizes) if not n]
        if not empty:
            return 0
        with self.r.pipeline(transaction=False) as pipe:
            for label in empty:
                pipe.srem(f"{self.p}:labels", label)
                pipe.delete(f"{self.p}:stats:{label}")
            pipe.execute()
        return len(empty)

    def held_counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]], list[tuple[str, int, list[str], str]]]:
        """What the quarantine holds, from its counters (never its texts): per kind of reason, per source
        and kind, and per pending label (label, examples, sources, first reason)."""
        if not self.r.exists(f"{self.p}:qn") and self.held_count():
            self._count_held_again()
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{self.p}:qn")
            pipe.hgetall(f"{self.p}:qsrc")
            pipe.hgetall(f"{self.p}:qpend")
            pipe.hgetall(f"{self.p}:qpendr")
            kinds, per_source, pend, reasons = pipe.execute()
        by_source: dict[str, dict[str, int]] = {}
        for key, n in per_source.items():
            source, _, kind = key.rpartition("|")
            by_source.setdefault(source, {})[kind] = int(n)
        labels = sorted(pend)
        with self.r.pipeline(transaction=False) as pipe:
            for label in labels:
                pipe.hkeys(f"{self.p}:qpend:{label}")
            teachers = pipe.execute()
        pending = [(lab, int(pend[lab]), sorted(t), reasons.get(lab, "")) for lab, t in zip(labels, teachers)]
        return {k: int(v) for k, v in kinds.items()}, by_source, pending

    def held(self, limit: int | None = None) -> list[Held]:
        sids = self.r.zrange(f"{self.p}:q", 0, -1 if limit is None else limit - 1)
        with self.r.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(f"{self.p}:s:{sid}")
                pipe.scard(f"{self.p}:srcs:{sid}")
            rows = pipe.execute()
        return [
            Held(
                sid,
                h["text"],
                h["label"],
                h.get("source", ""),
                int(n),
                h.get("quarantined", ""),
                float(h.get("quarantined_at", 0)),
                h.get("origin", "") or h.get("source", ""),
            )
            for sid, h, n in zip(sids, rows[::2], rows[1::2])
            if h
        ]

    def held_ids(self) -> set[str]:
        """The sample ids in quarantine (the correction memory serves none of them)."""
        return set(self.r.zrange(f"{self.p}:q", 0, -1))

    def held_count(self) -> int:
        return int(self.r.zcard(f"{self.p}:q"))

    def sources(self, sids: list[str]) -> list[set[str]]:
        """The distinct sources that sent each sample's (text, label)."""
        with self.r.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.smembers(f"{self.p}:srcs:{sid}")
            return [set(m) for m in pipe.execute()]

    def stats(self) -> list[LabelStats]:
        cursor = self.cursor()
        dlq = self.r.hgetall(f"{self.p}:dlq")
        labels = sorted(self.labels() | {k for k in dlq if k != NO_LABEL}) + ([NO_LABEL] if NO_LABEL in dlq else [])
        with self.r.pipeline(transaction=False) as pipe:
            for label in labels:
                pipe.zcard(f"{self.p}:l:{label}")
                pipe.zcount(f"{self.p}:l:{label}", f"({cursor}", "+inf")
                pipe.hgetall(f"{self.p}:stats:{label}")
            res = pipe.execute()
        out = []
        for i, label in enumerate(labels):
            stored, new, st = res[3 * i], res[3 * i + 1], res[3 * i + 2]
            out.append(
                LabelStats(
                    label=label,
                    stored=int(stored),
                    total=int(st.get("total", 0)),
                    new=int(new),
                    duplicates=int(st.get("duplicates", 0)),
                    dead_lettered=int(dlq.get(label, 0)),
                    evicted=int(st.get("evicted", 0)),
                )
            )
        return out
