"""Erasing one source's or one text's data (`online forget`, ``POST /v1/admin/forget``).

A "source" is a source name or an origin (``online.credentials``): ``addr:<client address>`` erases
everything one keyless client sent under whatever names it invented.

What goes, at once:

- the replay buffer: every sample the source sent (with any other source that sent the same text and
  label: the sample is one), or whose text is the text (any label), trainable or held, with the source's
  ledger (event counts, contradiction statistics) and the labels it created;
- the correction log and every replica's correction memory (an entry leaves the memory as the
  replicas read its deletion), and the entries' texts from the log's change stream;
- for a text: the prediction log and the review queue (predictions carry no source: a source's own
  predictions cannot be told apart, they expire with ``prediction_ttl_s``).

What stays out: a tombstone (``Keys.erased``) makes the consumer drop, inside the scripts that store,
the source's events stamped up to the erasure (in flight in the topic, or redelivered) and the text
from anyone, so no future round trains on them. The text tombstone keeps only a digest of the masked,
normalised text.

What it cannot reach: the weights. A version trained after the erased samples arrived may have
learned from them; the next version is trained without them (they are neither new nor rehearsed),
but a round fine-tunes its parent, so what a version learned fades over the next versions rather than
vanishing at once. The report names the versions that may hold it. The feedback and dead-letter topics
keep records until their retention (the API masks texts before producing; dead letters are masked).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import redis

from online.credentials import anonymous
from online.feedback.buffer import ReplayBuffer, normalise, text_hash, with_held_counts
from online.feedback.pii import mask_pii
from online.feedback.prediction_log import PredictionLog
from online.feedback.review_queue import ReviewQueue
from online.keys import Keys
from online.lifecycle.registry import ModelRegistry
from online.memory.log import Correction, CorrectionLog

PAGE = 1000

_ERASE = with_held_counts("""
local p, cursor, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local erased, trained = 0, 0
for i = 0, n - 1 do
  local sid = ARGV[4 + i]
  local sk = p .. ':s:' .. sid
  local label = redis.call('HGET', sk, 'label')
  if label then
    local seq = tonumber(redis.call('HGET', sk, 'seq') or '0')
    if redis.call('ZSCORE', p .. ':q', sid) then
      count_held(p, sk, -1)  -- held: never trained, and the screen's counts drop it
      redis.call('ZREM', p .. ':q', sid)
    elseif seq <= cursor then
      trained = trained + 1
    end
    redis.call('ZREM', p .. ':l:' .. label, sid)
    redis.call('ZREM', p .. ':log', sid)
    redis.call('DEL', sk, p .. ':srcs:' .. sid, p .. ':names:' .. sid)
    redis.call('HINCRBY', p .. ':stats:' .. label, 'erased', 1)
    erased = erased + 1
  end
end
return {erased, trained}
""")


class ErasureStores(Protocol):
    """The stores an erasure touches (the wiring's ``Stores`` has them all)."""

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def buffer(self) -> ReplayBuffer: ...

    @property
    def corrections(self) -> CorrectionLog: ...

    @property
    def review(self) -> ReviewQueue: ...

    @property
    def predictions(self) -> PredictionLog: ...

    @property
    def registry(self) -> ModelRegistry: ...


@dataclass
class Erasure:
    """What one erasure removed, and what it could not."""

    source: str | None
    text: str | None  # masked, as stored
    buffer: int = 0  # samples removed (trainable and held)
    trained: int = 0  # of them, ones a round had already trained on
    corrections: int = 0  # correction-log entries (and so memory entries)
    stream: int = 0  # correction-stream records holding their texts
    predictions: int = 0
    predictions_scanned: int = 0
    review: int = 0
    ledger: bool = False  # the source's statistics and created labels
    versions: list[int] = field(default_factory=list)  # versions that may have learned from the samples
    live: int | None = None
    at: float = 0.0


def forget(stores: ErasureStores, source: str | None = None, text: str | None = None) -> Erasure:
    """Erase a source's (or a text's) data everywhere it is stored, tombstone it against what is in
    flight, and say which versions' weights may still hold it. Exactly one of ``source``, ``text``."""
    if (source is None) == (text is None):
        raise ValueError("give exactly one of a source or a text")
    r, keys = stores.redis, stores.keys
    now = time.time()
    key = normalise(mask_pii(text)) if text is not None else None
    out = Erasure(source, None if key is None else mask_pii(text or ""), at=now)
    # first the tombstone: from now on nothing of it is stored again, so what is erased stays erased
    if source is not None:
        r.hset(f"{keys.erased}:sources", source, repr(now))
    else:
        r.sadd(f"{keys.erased}:texts", text_hash(key or ""))

    def matches_text(stored: str | None) -> bool:
        return key is not None and stored is not None and normalise(stored) == key

    out.buffer, out.trained, earliest = _erase_buffer(stores.buffer, r, source, matches_text)
    out.corrections, out.stream = _erase_corrections(stores.corrections, r, source, matches_text)
    if source is not None:
        b = keys.buffer
        removed = r.delete(f"{b}:source:{source}", f"{keys.labels_created}:{source}")
        moved = r.srem(f"{b}:sources", source)
        out.ledger = bool(removed or moved)
    else:
        out.review = _erase_review(stores.review, r, matches_text)
        out.predictions, out.predictions_scanned = _erase_predictions(r, keys, matches_text)
    out.live = stores.registry.live()
    if earliest is not None:
        out.versions = sorted(m.version for m in stores.registry.list() if m.created_at >= earliest)
    return out


def _pages(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), PAGE):
        yield items[start : start + PAGE]


def _erase_buffer(buffer: ReplayBuffer, r: redis.Redis, source: str | None, matches_text) -> tuple[int, int, float | None]:
    p = buffer.p
    sids = list(dict.fromkeys([*r.zrange(f"{p}:log", 0, -1), *r.zrange(f"{p}:q", 0, -1)]))
    doomed: list[str] = []
    earliest: float | None = None
    members = "srcs" if source is not None and anonymous(source) else "names"  # `forget --source addr:...`
    for page in _pages(sids):
        with r.pipeline(transaction=False) as pipe:
            for sid in page:
                pipe.hmget(f"{p}:s:{sid}", "text", "source", "at")
                if source is not None:  # a name among the names, or a keyless client's origin among the
                    pipe.sismember(f"{p}:{members}:{sid}", source)  # origins (names are free text)
            rows = pipe.execute()
        step = 2 if source is not None else 1
        for i, sid in enumerate(page):
            stored_text, first, at = rows[i * step]
            if source is None:
                hit = matches_text(stored_text)
            else:
                hit = bool(rows[i * step + 1]) or (members == "names" and first == source)
            if hit:
                doomed.append(sid)
                if at is not None:
                    earliest = float(at) if earliest is None else min(earliest, float(at))
    erased = trained = 0
    script = r.register_script(_ERASE)
    cursor = buffer.cursor()
    for page in _pages(doomed):
        e, t = script(args=[p, cursor, len(page), *page])
        erased, trained = erased + int(e), trained + int(t)
    return erased, trained, earliest


def _erase_corrections(log: CorrectionLog, r: redis.Redis, source: str | None, matches_text) -> tuple[int, int]:
    def hit(c: Correction) -> bool:
        if source is not None:
            return (c.origin == source or source in c.origins) if anonymous(source) else c.source == source
        return matches_text(c.text)

    entries = [Correction.from_json(raw) for raw in r.hvals(f"{log.p}:e")]
    gone = log.forget([c.sid for c in entries if hit(c)], "erased")
    # older records of the stream may still hold a text (written before their entry was replaced)
    stale: list[str] = []
    position = "-"
    while True:
        rows = r.xrange(log.stream, min=position, count=PAGE)
        for stream_id, fields in rows:
            if fields.get("op") == "add":
                try:
                    if hit(Correction.from_json(fields["entry"])):
                        stale.append(stream_id)
                except (KeyError, TypeError, ValueError):
                    continue
        if len(rows) < PAGE:
            break
        position = "(" + rows[-1][0]
    for page in _pages(stale):
        r.xdel(log.stream, *page)
    return gone, len(stale) + gone


def _scan(r: redis.Redis, pattern: str) -> Iterator[list[str]]:
    batch: list[str] = []
    for k in r.scan_iter(match=pattern, count=PAGE):
        batch.append(k)
        if len(batch) >= PAGE:
            yield batch
            batch = []
    if batch:
        yield batch


def _erase_review(review: ReviewQueue, r: redis.Redis, matches_text) -> int:
    removed = 0
    for page in _scan(r, f"{review.p}:item:*"):
        doomed = []
        for k, raw in zip(page, r.mget(page)):
            if raw is not None and matches_text(json.loads(raw).get("text")):
                doomed.append(k.rsplit(":", 1)[1])
        if doomed:
            review.answered(doomed)
            removed += len(doomed)
    return removed


def _erase_predictions(r: redis.Redis, keys: Keys, matches_text) -> tuple[int, int]:
    removed = scanned = 0
    for page in _scan(r, keys.prediction("*")):
        scanned += len(page)
        doomed = [k for k, raw in zip(page, r.mget(page)) if raw is not None and matches_text(json.loads(raw).get("text"))]
        if doomed:
            removed += int(r.delete(*doomed))
    return removed, scanned


def weights_note(e: Erasure) -> str:
    """What the weights still hold, in one sentence for an operator."""
    running = " A round already running may still publish one more version trained on them."
    if not e.versions:
        return "No version was trained after these samples arrived: no weights hold them." + running
    listed = ", ".join(map(str, e.versions))
    return (
        f"Versions {listed} (live: {e.live}) were trained after these samples arrived and may hold what they "
        f"learned from them ({e.trained} had been trained on). The next version trains without them; as "
        "each round fine-tunes its parent, what was learned fades over the next versions rather than "
        "vanishing at once; the trainer collects superseded versions' files past ONLINE_KEEP_VERSIONS."
        + running
    )
