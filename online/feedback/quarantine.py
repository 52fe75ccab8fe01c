"""Poisoning defence: label feedback that contradicts what the system already knows is held back.

Two layers, both decided before a round trains (``online.learning.round``) and in the benchmark alike:

- **Event level.** A label example is *contradicted by its neighbours* when most of its nearest
  neighbours (faiss, in the live version's embedding space: the indexed training data of the live
  version plus this round's new examples from *other* sources) carry one other label. It is held when,
  in addition, the live model confidently predicts a label other than the one given.
- **Source level.** Each source's share of contradicted examples is kept in Redis; a source past
  ``source_max_rate`` (after ``source_min_events`` judged examples) is quarantined as a whole: all its
  examples are held until an operator releases the source.

A label nobody else uses and the live model does not know (a new intent taught by one source) cannot be
contradicted and is never counted against its source. A held (text, label) is released when enough
distinct sources sent it (``release_sources``), or by an operator; an operator can also drop it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from online.feedback.buffer import ReplayBuffer
from online.keys import Keys
from online.monitoring.drift import Reference
from online.settings import Settings

SOURCE_HELD = "source quarantined"


@dataclass(frozen=True)
class Candidate:
    text: str
    label: str
    source: str


@dataclass(frozen=True)
class Judged:
    contradicted: bool | None  # None: nothing can confirm or deny this label
    hold: bool
    reason: str


@dataclass(frozen=True)
class ScreenConfig:
    confidence: float
    neighbours: int
    majority: float
    source_max_rate: float
    source_min_events: int
    release_sources: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ScreenConfig":
        return cls(
            confidence=settings.quarantine_confidence,
            neighbours=settings.quarantine_neighbours,
            majority=settings.quarantine_majority,
            source_max_rate=settings.quarantine_source_max_rate,
            source_min_events=settings.quarantine_source_min_events,
            release_sources=settings.quarantine_release_sources,
        )


def screen(
    items: Sequence[Candidate],
    probs: np.ndarray,
    embeddings: np.ndarray,
    live_labels: Sequence[str],
    reference: Reference | None,
    cfg: ScreenConfig,
) -> list[Judged]:
    """Judge each item from the live model's probabilities and embeddings of its text."""
    import faiss

    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    x = np.ascontiguousarray(x, dtype=np.float32)
    pool_vectors = [x]
    pool_labels = [it.label for it in items]
    pool_sources = [it.source for it in items]
    if reference is not None and reference.train_labels:
        pool_vectors.append(np.ascontiguousarray(reference.train, dtype=np.float32))
        pool_labels += list(reference.train_labels)
        pool_sources += [""] * len(reference.train_labels)  # known data: no source
    pool = np.concatenate(pool_vectors)
    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(pool)
    # Search deeper than k: same-source neighbours are skipped.
    _, nn = index.search(x, min(len(pool), 4 * cfg.neighbours + 1))
    known = set(live_labels)
    used_by: dict[str, set[str]] = {}
    for it in items:
        used_by.setdefault(it.label, set()).add(it.source)
    reference_labels = set(reference.train_labels or []) if reference is not None else set()
    out = []
    for i, it in enumerate(items):
        others = [j for j in nn[i] if j >= 0 and j != i and pool_sources[j] != it.source][: cfg.neighbours]
        confirmable = it.label in known or it.label in reference_labels or len(used_by[it.label]) > 1
        if not others or not confirmable:
            out.append(Judged(None, False, ""))
            continue
        top, count = Counter(pool_labels[j] for j in others).most_common(1)[0]
        contradicted = top != it.label and count / len(others) >= cfg.majority
        pred = int(np.argmax(probs[i]))
        confident_other = float(probs[i][pred]) >= cfg.confidence and live_labels[pred] != it.label
        hold = contradicted and confident_other
        reason = (
            f"live says {live_labels[pred]} ({probs[i][pred]:.2f}); {count}/{len(others)} neighbours say {top}"
            if hold
            else ""
        )
        out.append(Judged(contradicted, hold, reason))
    return out


class SourceLedger:
    """Per-source counts of judged and contradicted examples, and the quarantined sources (Redis)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.p = keys.buffer

    def counts(self) -> dict[str, list[int]]:
        """[judged, contradicted] per source, the form :func:`decide` updates."""
        return {s: [st["judged"], st["contradicted"]] for s, st in self.stats().items()}

    def record(self, counts: dict[str, tuple[int, int]]) -> None:
        """Add (judged, contradicted) per source."""
        with self.r.pipeline(transaction=False) as pipe:
            for source, (judged, contradicted) in counts.items():
                pipe.hincrby(f"{self.p}:source:{source}", "judged", judged)
                pipe.hincrby(f"{self.p}:source:{source}", "contradicted", contradicted)
            pipe.execute()

    def stats(self) -> dict[str, dict[str, int]]:
        sources = sorted(self.r.smembers(f"{self.p}:sources"))
        with self.r.pipeline(transaction=False) as pipe:
            for s in sources:
                pipe.hgetall(f"{self.p}:source:{s}")
            rows = pipe.execute()
        held = self.quarantined()
        return {
            s: {
                "events": int(h.get("events", 0)),
                "judged": int(h.get("judged", 0)),
                "contradicted": int(h.get("contradicted", 0)),
                "quarantined": int(s in held),
            }
            for s, h in zip(sources, rows)
        }

    def quarantined(self) -> set[str]:
        return set(self.r.smembers(f"{self.p}:sources:quarantined"))

    def quarantine(self, source: str) -> None:
        self.r.sadd(f"{self.p}:sources:quarantined", source)

    def release(self, source: str) -> bool:
        """Trust a source again (its counts start afresh); its held samples stay held until released."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.srem(f"{self.p}:sources:quarantined", source)
            pipe.hdel(f"{self.p}:source:{source}", "judged", "contradicted")
            return bool(pipe.execute()[0])


def batch_counts(items: Sequence[Candidate], judged: Sequence[Judged]) -> dict[str, tuple[int, int]]:
    """(judged, contradicted) per source in one batch: what the ledger adds."""
    counts: dict[str, list[int]] = {}
    for it, j in zip(items, judged):
        if j.contradicted is not None:
            st = counts.setdefault(it.source, [0, 0])
            st[0] += 1
            st[1] += int(j.contradicted)
    return {source: (n, bad) for source, (n, bad) in counts.items()}


def decide(
    items: Sequence[Candidate],
    judged: Sequence[Judged],
    stats: dict[str, list[int]],
    quarantined: set[str],
    cfg: ScreenConfig,
) -> tuple[list[str | None], set[str]]:
    """Fold this batch into the per-source ``stats`` ([judged, contradicted], updated in place) and
    return each item's hold reason (None: train on it) and the sources newly quarantined."""
    for source, (n, bad) in batch_counts(items, judged).items():
        st = stats.setdefault(source, [0, 0])
        st[0] += n
        st[1] += bad
    newly = {
        s
        for s, (n, bad) in stats.items()
        if s not in quarantined and n >= cfg.source_min_events and bad / n > cfg.source_max_rate
    }
    held_sources = quarantined | newly
    reasons = [
        SOURCE_HELD if it.source in held_sources else (j.reason if j.hold else None) for it, j in zip(items, judged)
    ]
    return reasons, newly


def release(buffer: ReplayBuffer, ledger: SourceLedger, sids: Sequence[str] = (), source: str | None = None) -> int:
    """An operator releases held samples (the next round trains on them); with ``source``, trusts that
    source again and releases everything of it that is held. Returns how many were released."""
    chosen = list(sids)
    if source:
        ledger.release(source)
        chosen += [h.sid for h in buffer.held() if h.source == source]
    return buffer.release(chosen)


def drop(buffer: ReplayBuffer, sids: Sequence[str] = (), source: str | None = None) -> int:
    """An operator deletes held samples for good (with ``source``: everything of it that is held)."""
    chosen = list(sids) + ([h.sid for h in buffer.held() if h.source == source] if source else [])
    return buffer.drop(chosen)
