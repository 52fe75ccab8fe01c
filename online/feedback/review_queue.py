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


# Items past the capacity leave the queue *and* their stored texts (not left to their TTL).
_TRIM = """
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if over <= 0 then return 0 end
local gone = redis.call('ZRANGE', KEYS[1], 0, over - 1)
for _, pid in ipairs(gone) do redis.call('DEL', ARGV[2] .. pid) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
return over
"""


class ReviewQueue:
    """The queue in Redis, shared by every replica; bounded to the ``capacity`` most uncertain items."""

    def __init__(self, client: redis.Redis, keys: Keys, capacity: int, ttl_s: int) -> None:
        self.r = client
        self.p = keys.review
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._trim = client.register_script(_TRIM)

    def add(self, items: list[ReviewItem]) -> None:
        if not items:
            return
        with self.r.pipeline(transaction=False) as pipe:
            for it in items:
                payload = {
                    **it.public(),
                    "embedding": base64.b64encode(it.embedding.astype(np.float16).tobytes()).decode(),
                }
                pipe.set(f"{self.p}:item:{it.prediction_id}", json.dumps(payload), ex=self.ttl_s)
                pipe.zadd(f"{self.p}:q", {it.prediction_id: it.uncertainty})
            pipe.execute()
        self._trim(keys=[f"{self.p}:q"], args=[self.capacity, f"{self.p}:item:"])  # keep the most uncertain

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
) -> list[ReviewItem]:
    """The predictions of one batch that belong on the review queue."""
    m = margins(probs)
    far = (distances > far_threshold) if distances is not None and far_threshold is not None else np.zeros(len(m), bool)
    u = uncertainty(m, far)
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
        for i in np.flatnonzero((m < max_margin) | far)
    ]
