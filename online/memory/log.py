"""The correction log in Redis: label feedback on its way to every replica's correction memory.

A fine-tuning round takes tens of seconds to minutes; a user who corrects an answer expects the same
question, asked a moment later, to get the corrected answer. So besides the replay buffer, the feedback
consumer appends each correction (a label event, or a thumbs-down naming the right label) here, and every
API replica follows this log into an in-process memory (``online.memory.index``) that answers those texts
at once. Whether a replica *serves* an entry is its decision (the screen, label rules, what the live
weights already know); this log only says what was taught and what must be forgotten.

Keys (namespace ``Keys.memory``, built inside the scripts):

- ``e``: hash sid -> entry JSON (the current set: a new replica starts from it);
- ``z``: sorted set sid -> time stored (the server's clock: age and capacity trimming, oldest first);
- ``ops``: stream of changes, ``{op: add, entry}`` or ``{op: del, sid, reason}``, that running replicas
  follow (capped at ``STREAM_MAX`` changes; a replica that fell further behind reloads the snapshot);
  an entry's ``add`` is deleted from the stream when the entry leaves (forgotten, aged out, erased), so
  the stream keeps no text the log no longer holds;
- ``x``: hash sid -> stream id of the entry's ``add`` (to delete it);
- ``gone:<online.events.dedup_id>``: forgotten on purpose (a thumbs-down, the quarantine): that event,
  redelivered, does not bring its entry back (a new teaching of the same text and label does).

Texts are PII-masked like the buffer's, and a correction's id is the buffer's sample id (text + label),
so the round that quarantines a sample removes exactly its entry. Durability is Redis's (AOF); on the
local embedded stack the broker in front of it keeps messages in memory only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis

from online.events import dedup_id
from online.feedback.buffer import Incoming, sample_id, text_hash
from online.feedback.pii import mask_pii
from online.keys import Keys

STREAM_MAX = 100_000

_ADD = """
local p, now, smax, n, erased = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local added = 0
for i = 0, n - 1 do
  local sid, eid, th, entry = ARGV[6 + i * 4], ARGV[7 + i * 4], ARGV[8 + i * 4], ARGV[9 + i * 4]
  local e = cjson.decode(entry)
  local until_at = redis.call('HGET', erased .. ':sources', e['source'])
  local forgotten = (until_at and tonumber(e['at']) <= tonumber(until_at))
    or redis.call('SISMEMBER', erased .. ':texts', th) == 1  -- erased (`online forget`)
  if not forgotten and redis.call('EXISTS', p .. ':gone:' .. eid) == 0 then
    local prior = redis.call('HGET', p .. ':e', sid)
    if prior then  -- the same text and label taught again: one entry, every origin that taught it, trust kept
      local o = cjson.decode(prior)
      local seen, origins = {}, {}
      local function keep(x)
        if x and x ~= '' and not seen[x] and #origins < 32 then seen[x] = true table.insert(origins, x) end
      end
      if type(o['origins']) == 'table' then for _, x in ipairs(o['origins']) do keep(x) end end
      keep((o['origin'] ~= nil and o['origin'] ~= '') and o['origin'] or o['source'])
      keep((e['origin'] ~= nil and e['origin'] ~= '') and e['origin'] or e['source'])
      e['origins'] = origins
      if (e['trusted'] == nil or e['trusted'] == '') and o['trusted'] and o['trusted'] ~= '' then
        e['trusted'] = o['trusted']  -- an untrusted resend does not take a trusted teaching's trust away
      end
      entry = cjson.encode(e)
    end
    redis.call('HSET', p .. ':e', sid, entry)
    redis.call('ZADD', p .. ':z', now, sid)
    local old = redis.call('HGET', p .. ':x', sid)
    if old then redis.call('XDEL', p .. ':ops', old) end  -- re-taught: the newer add replaces it
    local xid = redis.call('XADD', p .. ':ops', 'MAXLEN', '~', smax, '*', 'op', 'add', 'entry', entry)
    redis.call('HSET', p .. ':x', sid, xid)
    added = added + 1
  end
end
return added
"""

_TRIM = """
local p, now, cap, max_age, smax = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local function drop(sid, reason)
  redis.call('HDEL', p .. ':e', sid)
  redis.call('ZREM', p .. ':z', sid)
  local xid = redis.call('HGET', p .. ':x', sid)
  if xid then redis.call('XDEL', p .. ':ops', xid) redis.call('HDEL', p .. ':x', sid) end
  redis.call('XADD', p .. ':ops', 'MAXLEN', '~', smax, '*', 'op', 'del', 'sid', sid, 'reason', reason)
end
local gone = 0
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', p .. ':z', '-inf', now - max_age, 'LIMIT', 0, 1000)) do
  drop(sid, 'age')
  gone = gone + 1
end
local over = redis.call('ZCARD', p .. ':z') - cap
if over > 0 then
  for _, sid in ipairs(redis.call('ZRANGE', p .. ':z', 0, over - 1)) do drop(sid, 'capacity') end
  gone = gone + over
end
return gone
"""

_FORGET = """
local p, ttl, smax, reason, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local keep_trusted = ARGV[6] == '1'
local gone = 0
for i = 0, n - 1 do
  local sid = ARGV[7 + i]
  local entry = redis.call('HGET', p .. ':e', sid)
  local fields = entry and cjson.decode(entry)
  if fields and keep_trusted and fields['trusted'] and fields['trusted'] ~= '' then
    fields = nil  -- an untrusted vote does not undo a trusted correction
  end
  if fields then
    local key = redis.sha1hex(tostring(fields['source']) .. '\\31' .. tostring(fields['event_id']))  -- online.events.dedup_id
    redis.call('SET', p .. ':gone:' .. key, '1', 'EX', ttl)  -- that event, redelivered, stays forgotten
    redis.call('HDEL', p .. ':e', sid)
    redis.call('ZREM', p .. ':z', sid)
    local xid = redis.call('HGET', p .. ':x', sid)
    if xid then redis.call('XDEL', p .. ':ops', xid) redis.call('HDEL', p .. ':x', sid) end  -- its text leaves the stream
    redis.call('XADD', p .. ':ops', 'MAXLEN', '~', smax, '*', 'op', 'del', 'sid', sid, 'reason', reason)
    gone = gone + 1
  end
end
return gone
"""


@dataclass(frozen=True)
class Correction:
    """One taught (text, label): ``sid`` is the buffer's sample id, ``event_id`` the feedback event's."""

    sid: str
    event_id: str
    text: str
    label: str
    source: str
    at: float
    origin: str = ""  # what independence counts (``online.credentials``); "" : the source name
    trusted: str = ""  # "admin"/"key": sent with the admin token or a trusted key: served unscreened
    origins: tuple[str, ...] = ()  # every origin that taught this same text and label (the log merges them)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Correction":
        fields = json.loads(raw)
        # newer writers may add fields; older entries lack the later ones
        found = {name: fields[name] for name in cls.__dataclass_fields__ if name in fields}
        if "origins" in found:  # Lua's cjson writes an empty list as {}
            found["origins"] = tuple(found["origins"]) if isinstance(found["origins"], list) else ()
        return cls(**found)


@dataclass(frozen=True)
class Change:
    """One change from the stream: ``entry`` added, or ``sid`` forgotten for ``reason``."""

    stream_id: str
    entry: Correction | None = None
    sid: str | None = None
    reason: str = ""


def parse_change(stream_id: str, fields: dict[str, str]) -> Change:
    if fields.get("op") == "add":
        return Change(stream_id, entry=Correction.from_json(fields["entry"]))
    return Change(stream_id, sid=fields.get("sid"), reason=fields.get("reason", ""))


def correction(item: Incoming) -> Correction:
    """A labelled example as the log keeps it: PII-masked (once: the consumer's are already), under the
    buffer's sample id."""
    text = item.text if item.masked else mask_pii(item.text)
    return Correction(
        sample_id(text, item.label), item.event_id, text, item.label, item.source, item.at,
        item.origin or item.source, item.trusted,
    )  # fmt: skip


class CorrectionLog:
    def __init__(self, client: redis.Redis, keys: Keys, capacity: int, max_age_s: float, gone_ttl_s: int) -> None:
        self.r = client
        self.p = keys.memory
        self.erased = keys.erased
        self.stream = f"{self.p}:ops"
        self.capacity = capacity
        self.max_age_s = max_age_s
        self.gone_ttl_s = gone_ttl_s
        self._add = client.register_script(_ADD)
        self._trim = client.register_script(_TRIM)
        self._forget = client.register_script(_FORGET)

    def add(self, items: list[Incoming]) -> int:
        """Append corrections (idempotent by sample id: a re-taught one carries its newest event; an
        event forgotten on purpose stays forgotten when redelivered), then trim. Returns how many."""
        if not items:
            return 0
        args: list[str | float | int] = [self.p, time.time(), STREAM_MAX, len(items), self.erased]
        for it in items:
            c = correction(it)
            args += [c.sid, dedup_id(c.source, c.event_id), text_hash(c.text), c.to_json()]
        added = int(self._add(args=args))
        self.trim()
        return added

    def trim(self) -> int:
        """Drop entries stored longer than the age limit ago, then the oldest past the capacity (also
        run by the trainer's housekeeping, so entries age out when no new correction arrives)."""
        return int(self._trim(args=[self.p, time.time(), self.capacity, self.max_age_s, STREAM_MAX]))

    def forget(self, sids: list[str], reason: str, keep_trusted: bool = False) -> int:
        """Remove entries from every replica's memory (a quarantined or dropped sample, a memory answer
        voted down or corrected). The same events redelivered do not bring them back; a new teaching does.
        ``keep_trusted``: the vote is untrusted, so entries a trusted credential taught stay."""
        if not sids:
            return 0
        args = [self.p, self.gone_ttl_s, STREAM_MAX, reason, len(sids), int(keep_trusted), *sids]
        return int(self._forget(args=args))

    def snapshot(self) -> tuple[str, list[Correction]]:
        """The current entries and the stream position they reflect: follow the stream from there.
        (The position is read first: a change in between is applied twice, and every change is idempotent.)"""
        last = self.r.xrevrange(self.stream, count=1)
        position = last[0][0] if last else "0-0"
        entries = [Correction.from_json(raw) for raw in self.r.hvals(f"{self.p}:e")]
        return position, sorted(entries, key=lambda c: c.at)

    def first_position(self) -> str | None:
        """The oldest change still in the stream (None: empty): a follower behind it must reload."""
        first = self.r.xrange(self.stream, count=1)
        return first[0][0] if first else None

    def size(self) -> int:
        return int(self.r.zcard(f"{self.p}:z"))
