"""The review queue (active learning): predictions worth a human label.

A prediction is queued when the model is unsure of it (a small margin between its two best labels) or
when it is far from every training example of the live version (nearest-neighbour distance beyond the
99th percentile of in-domain calibration texts). Labels are bought for :func:`diverse_pick` of the
queue: one representative per k-means cluster of the queued embeddings, the clusters with the most
uncertainty first, so the queue is not fifty paraphrases of one question. A label
event that names the ``prediction_id`` answers an item and takes it off the queue.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import numpy as np
import redis

from online.keys import Keys
from online.reference import unit_rows


def uncertainty(margin: np.ndarray, far: np.ndarray) -> np.ndarray:
    """In [0, 2]: 1 - margin, plus 1 when far from every training example."""
    return (1.0 - margin) + far.astype(np.float64)


def margins(probs: np.ndarray) -> np.ndarray:
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.concatenate([np.zeros_like(probs), probs], 1)
    return top2[:, 1] - top2[:, 0]


def diverse_pick(embeddings: np.ndarray, scores: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` items that cover the uncertain region instead of crowding one corner of it.

    faiss k-means with ``k`` centroids over the candidates; from each cluster the item nearest its
    centroid (a representative, not an outlier), clusters ordered by their total uncertainty, so the
    first items are the ones most worth a label."""
    import faiss

    n = len(scores)
    if n == 0 or k <= 0:
        return []
    if n <= k:
        return [int(i) for i in np.argsort(-scores)]
    x = unit_rows(embeddings)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=1, min_points_per_centroid=1, max_points_per_centroid=10**6)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    picks = []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        nearest = members[int(np.argmax(x[members] @ km.centroids[c]))]
        picks.append((float(scores[members].sum()), int(nearest)))
    chosen = [i for _, i in sorted(picks, reverse=True)]
    if len(chosen) < k:  # empty clusters: fill with the most uncertain of the rest
        taken = set(chosen)
        chosen += [int(i) for i in np.argsort(-scores) if int(i) not in taken][: k - len(chosen)]
    return chosen


@dataclass(frozen=True)
class ReviewItem:
    prediction_id: str
    text: str
    label: str
    score: float
    margin: float
    distance: float | None
    far: bool  # farther from the training data than 99% of in-domain calibration texts
    uncertainty: float
    version: int
    at: float
    embedding: np.ndarray

    def public(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "embedding"}


# One call per handed-over batch: each item enters only if the queue has room or it is more uncertain
# than the least uncertain queued one, which then leaves with its stored text (not left to its TTL).
# Returns the queue's floor: the lowest uncertainty kept once full ('' while there is room).
_ADD = """
local q, cap, prefix, ttl = KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local function lowest()  -- the least uncertain kept, as Redis writes the score (nil when empty)
  return redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')[2]
end
for i = 4, #ARGV, 3 do
  local pid, u = ARGV[i], tonumber(ARGV[i + 1])
  local keep = true
  if redis.call('ZCARD', q) >= cap then
    local floor = lowest()
    if floor ~= nil and u <= tonumber(floor) then
      keep = false
    else
      local gone = redis.call('ZPOPMIN', q)
      if gone[1] then redis.call('DEL', prefix .. gone[1]) end
    end
  end
  if keep then
    redis.call('SET', prefix .. pid, ARGV[i + 2], 'EX', ttl)
    redis.call('ZADD', q, u, pid)
  end
end
local over = redis.call('ZCARD', q) - cap
if over > 0 then
  for _, pid in ipairs(redis.call('ZRANGE', q, 0, over - 1)) do redis.call('DEL', prefix .. pid) end
  redis.call('ZREMRANGEBYRANK', q, 0, over - 1)
end
if redis.call('ZCARD', q) < cap then return '' end
return lowest()
"""


class ReviewQueue:
    """The queue in Redis, shared by every replica; bounded to the ``capacity`` most uncertain items.

    A replica remembers the queue's floor from its last add and does not send candidates at or below it
    (they would be refused): under steady unsure traffic a full queue costs no Redis work and no
    encoding for most batches. The floor is forgotten after ``floor_ttl_s``, so a queue emptied by
    answers or expiry takes new items again within that time."""

    def __init__(self, client: redis.Redis, keys: Keys, capacity: int, ttl_s: int, floor_ttl_s: float = 10.0) -> None:
        self.r = client
        self.p = keys.review
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.floor_ttl_s = floor_ttl_s
        self._add = client.register_script(_ADD)
        self._floor: tuple[float, float] | None = None  # (lowest kept uncertainty, monotonic time read)

    def floor(self) -> float | None:
        """The uncertainty a candidate must exceed to be taken, as this replica last read it (None: room,
        or read too long ago); lets a caller skip building the items it would refuse."""
        floor = self._floor
        return floor[0] if floor is not None and time.monotonic() - floor[1] < self.floor_ttl_s else None

    def add(self, items: list[ReviewItem]) -> int:
        """Queue what is more uncertain than the queue's floor; returns how many were sent to Redis."""
        if (floor := self.floor()) is not None:
            items = [it for it in items if it.uncertainty > floor]
        if not items:
            return 0
        args: list[str | int | float] = [self.capacity, f"{self.p}:item:", self.ttl_s]
        for it in items:
            payload = {**it.public(), "embedding": base64.b64encode(it.embedding.astype(np.float16).tobytes()).decode()}
            args += [it.prediction_id, repr(it.uncertainty), json.dumps(payload)]
        low = self._add(keys=[f"{self.p}:q"], args=args)
        self._floor = (float(low), time.monotonic()) if low else None
        return len(items)

    def answered(self, prediction_ids: list[str]) -> int:
        if not prediction_ids:
            return 0
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zrem(f"{self.p}:q", *prediction_ids)
            pipe.delete(*[f"{self.p}:item:{pid}" for pid in prediction_ids])
            return int(pipe.execute()[0])

    def size(self) -> int:
        return int(self.r.zcard(f"{self.p}:q"))

    def pick(self, limit: int, pool: int = 500) -> list[ReviewItem]:
        """``limit`` items to label now: the ``pool`` most uncertain, then a diverse selection of them."""
        ids = self.r.zrevrange(f"{self.p}:q", 0, pool - 1)
        raws = self.r.mget([f"{self.p}:item:{pid}" for pid in ids]) if ids else []
        items = []
        for pid, raw in zip(ids, raws):
            if raw is None:  # expired with its prediction
                self.r.zrem(f"{self.p}:q", pid)
                continue
            d = json.loads(raw)
            emb = np.frombuffer(base64.b64decode(d.pop("embedding")), dtype=np.float16).astype(np.float32)
            items.append(ReviewItem(**d, embedding=emb))
        if not items:
            return []
        order = diverse_pick(np.stack([i.embedding for i in items]), np.array([i.uncertainty for i in items]), limit)
        return [items[i] for i in order]


def candidates(
    prediction_ids: list[str],
    texts: list[str],
    labels: list[str],
    probs: np.ndarray,
    embeddings: np.ndarray,
    distances: np.ndarray | None,
    far_threshold: float | None,
    max_margin: float,
    version: int,
    above: float | None = None,
) -> list[ReviewItem]:
    """The predictions of one batch that belong on the review queue (``above``: only those more uncertain
    than that, the queue's floor)."""
    m = margins(probs)
    far = (distances > far_threshold) if distances is not None and far_threshold is not None else np.zeros(len(m), bool)
    u = uncertainty(m, far)
    keep = (m < max_margin) | far
    if above is not None:
        keep &= u > above
    now = time.time()
    return [
        ReviewItem(
            prediction_id=prediction_ids[i],
            text=texts[i],
            label=labels[i],
            score=float(probs[i].max()),
            margin=float(m[i]),
            distance=None if distances is None else float(distances[i]),
            far=bool(far[i]),
            uncertainty=float(u[i]),
            version=version,
            at=now,
            embedding=embeddings[i],
        )
        for i in np.flatnonzero(keep)
    ]
