"""Poisoning defence that knows what is new: label feedback that contradicts what the system knows is
held back; honest teaching of something the system does not know yet is not.

Decided before a round trains (``online.learning.round``) and in the benchmark alike:

- **Known labels** (the live version has ``novel_below`` or more indexed training examples of them): an
  example is *contradicted* when most of its nearest neighbours (faiss, in the live version's embedding
  space: the live version's indexed training data plus this round's examples from *other* sources) carry
  one other label; it is held when, in addition, the live model confidently predicts that other label.
  A *coherent correction* is not: ``correction_min`` or more examples of one source that move texts
  from the same live answer A to the same label B are a boundary being moved on purpose.
- **New labels** (not live, or live from fewer than ``novel_below`` examples): neither the live model's
  prediction (it cannot know the label yet) nor known-data neighbours (labelled before the label existed)
  count against them. Only other sources' fresh examples of a different label can contradict one: for
  near-identical texts (cosine >= ``near_duplicate``), or, once ``release_sources`` distinct sources
  teach the label, for its nearest fresh neighbours. More sources raise trust, never suspicion.
- **Source level.** Each source's share of contradicted examples is kept in Redis; a source past
  ``source_max_rate`` (after ``source_min_events`` judged examples) is quarantined as a whole until an
  operator releases it. Released sources are trusted from then on, and released samples are never
  screened again: an operator's word outranks the screen. A dropped sample never comes back.

Whether a new label may go live at all is governed separately (``online.feedback.labels``); the screen
only reports which new-label examples would *take over* texts the live model confidently answers with an
existing label whose known examples agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis

from online.contract import HeldCounts, PendingLabel, ScreeningSummary
from online.credentials import anonymous, sender
from online.feedback.buffer import Held, ReplayBuffer
from online.feedback.labels import PENDING, LabelBook, is_pending
from online.keys import Keys
from online.reference import Reference, unit_rows
from online.settings import Settings

SOURCE_HELD = "source quarantined"
CONTRADICTED = "contradicted"
# A new-label example that lies among the known data (as close as the live version's own in-distribution
# traffic), which the live model answers with an existing label that most of its nearest known examples
# carry, is that intent's text; most of a source's examples of a new label like that are a takeover
# (``online.feedback.labels``). The live model's confidence is not required: a 150-way head trained on a
# few examples per intent is rarely confident, and the two agreeing is evidence enough.
TAKEOVER_NEIGHBOURS = 5


def reason_kind(reason: str) -> str:
    """The kind of a hold reason, for counts: contradicted, source quarantined or pending label."""
    if reason.startswith(PENDING):
        return PENDING
    return SOURCE_HELD if reason == SOURCE_HELD else CONTRADICTED


@dataclass(frozen=True)
class Candidate:
    text: str
    label: str
    source: str
    origin: str = ""  # what independence counts (a feedback key, a client address; ``online.credentials``)

    @property
    def who(self) -> str:
        return self.origin or self.source

    @property
    def ledger_key(self) -> str:
        """What the source ledger counts and quarantines (:func:`online.credentials.sender`): a flood spread
        over 30 invented names, 4-7 contradicted examples each, never reached ``source_min_events`` under
        any one of them; counted by its address it does."""
        return sender(self.source, self.who)


@dataclass(frozen=True)
class Judged:
    contradicted: bool | None  # None: nothing can confirm or deny this label
    hold: bool
    reason: str
    takeover: str | None = None  # a new label on texts the live model confidently gives this label


@dataclass(frozen=True)
class ScreenConfig:
    confidence: float
    neighbours: int
    majority: float
    source_max_rate: float
    source_min_events: int
    release_sources: int
    novel_below: int = 10
    near_duplicate: float = 0.9
    correction_min: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> "ScreenConfig":
        return cls(
            confidence=settings.quarantine_confidence,
            neighbours=settings.quarantine_neighbours,
            majority=settings.quarantine_majority,
            source_max_rate=settings.quarantine_source_max_rate,
            source_min_events=settings.quarantine_source_min_events,
            release_sources=settings.quarantine_release_sources,
            novel_below=settings.quarantine_novel_below,
            near_duplicate=settings.quarantine_near_duplicate,
            correction_min=settings.quarantine_correction_min,
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

    x = unit_rows(embeddings)
    n = len(items)
    pool_vectors = [x]
    pool_labels = [it.label for it in items]
    pool_sources = [it.who for it in items]  # "other sources" means other origins: names cost nothing
    known_counts: Counter[str] = Counter()
    if reference is not None and reference.train_labels:
        pool_vectors.append(np.ascontiguousarray(reference.train, dtype=np.float32))
        pool_labels += list(reference.train_labels)
        pool_sources += [""] * len(reference.train_labels)  # known data: no source
        known_counts = Counter(reference.train_labels)
    # "Known from only a few examples": fewer than novel_below, or than half the typical label's count
    # (the index is a sample: with many labels, every label has few points in it)
    typical = float(np.median(list(known_counts.values()))) if known_counts else 0.0
    few = min(cfg.novel_below, typical / 2)
    pool = np.concatenate(pool_vectors)
    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(pool)
    # Search deeper than k: same-source neighbours are skipped, and one sender's own texts must not crowd
    # out every other neighbour (183 near-duplicates from one client left 0-1 others in a search of 41)
    own = max(Counter(pool_sources[:n]).values(), default=0)
    rows = _searched(index, x, min(len(pool), 4 * cfg.neighbours + 1 + own))
    live = set(live_labels)
    used_by: dict[str, set[str]] = {}
    for it in items:
        used_by.setdefault(it.label, set()).add(it.who)
    k = cfg.neighbours
    out: list[Judged] = []
    for i, (it, (sim_row, nn_row)) in enumerate(zip(items, rows)):
        pred = int(np.argmax(probs[i]))
        answer, confidence = live_labels[pred], float(probs[i][pred])
        confident_other = confidence >= cfg.confidence and answer != it.label
        novel = it.label not in live or (reference is not None and known_counts[it.label] < few)
        if novel:
            corroborated = len(used_by[it.label]) >= cfg.release_sources
            fresh = [
                (j, sim) for j, sim in zip(nn_row, sim_row)
                if 0 <= j < n and j != i and pool_sources[j] != it.who and (corroborated or sim >= cfg.near_duplicate)
            ][:k]  # fmt: skip
            takeover = None
            # a label not live yet, on a text as close to known training data as the live version's own
            # in-distribution traffic
            if (
                it.label not in live
                and reference is not None
                and any(j >= n and 1.0 - sim <= reference.nn_q95 for j, sim in zip(nn_row, sim_row))
            ):
                # the nearest few known examples: a label has only tens of points in the index
                known = [pool_labels[j] for j in nn_row if j >= n][: min(k, TAKEOVER_NEIGHBOURS)]
                if known and known.count(answer) / len(known) >= cfg.majority:
                    takeover = answer
            if not fresh:
                out.append(Judged(None, False, "", takeover))
                continue
            top, count = Counter(pool_labels[j] for j, _ in fresh).most_common(1)[0]
            contradicted = top != it.label and count / len(fresh) >= cfg.majority
            reason = f"new label; {count}/{len(fresh)} other sources' fresh examples say {top}" if contradicted else ""
            out.append(Judged(contradicted, contradicted, reason, takeover))
            continue
        others = [j for j in nn_row if j >= 0 and j != i and pool_sources[j] != it.who][:k]
        if not others:
            out.append(Judged(None, False, ""))
            continue
        top, count = Counter(pool_labels[j] for j in others).most_common(1)[0]
        contradicted = top != it.label and count / len(others) >= cfg.majority
        hold = contradicted and confident_other
        reason = f"live says {answer} ({confidence:.2f}); {count}/{len(others)} neighbours say {top}" if hold else ""
        out.append(Judged(contradicted, hold, reason))
    return _coherent_corrections(items, probs, live_labels, out, cfg)


def _searched(index, x: np.ndarray, depth: int, chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each row's (similarities, neighbour ids), searched ``chunk`` rows at a time: a deep search of a
    large round (one sender's 5,000 samples: 5,000 x 5,041 neighbours) would otherwise hold ~300 MB."""
    for start in range(0, len(x), chunk):
        sims, nn = index.search(x[start : start + chunk], depth)
        yield from zip(sims, nn)


def _coherent_corrections(
    items: Sequence[Candidate], probs: np.ndarray, live_labels: Sequence[str], judged: list[Judged], cfg: ScreenConfig
) -> list[Judged]:
    """A sender moving ``correction_min`` or more texts from the same live answer to the same known label
    is correcting a boundary, not poisoning: those examples are neither held nor counted against it.
    (Random flips rarely repeat one pair; a deliberate relabelling of a known intent is left to the
    gate's per-label check.) Senders are origins, not names, and an anonymous one (a client address
    without a key) is believed only beside ``release_sources`` distinct origins moving the same pair:
    otherwise one keyless client relabels a learned intent wholesale (found as a user: 183 texts of a
    taught intent moved to another label under 30 names from one address, 5 held)."""
    moves: dict[tuple[str, str], Counter[str]] = {}
    answers = [live_labels[int(np.argmax(p))] for p in probs]
    for it, j, answer in zip(items, judged, answers):
        if j.contradicted and j.takeover is None and it.label in live_labels:
            moves.setdefault((answer, it.label), Counter())[it.who] += 1
    coherent = set()
    for pair, senders in moves.items():
        corroborated = len(senders) >= cfg.release_sources and sum(senders.values()) >= cfg.correction_min
        for who, count in senders.items():
            if corroborated or (count >= cfg.correction_min and not anonymous(who)):
                coherent.add((who, *pair))
    if not coherent:
        return judged
    return [
        Judged(False, False, "") if j.contradicted and (it.who, a, it.label) in coherent else j
        for it, j, a in zip(items, judged, answers)
    ]


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

    def tidy(self, batch: int = 1000) -> int:
        """Forget sources whose counts expired (silent for the dedup TTL): the source set stays bounded
        by the sources seen lately. Returns how many left."""
        gone, cursor = 0, 0
        while True:
            cursor, members = self.r.sscan(f"{self.p}:sources", cursor, count=batch)
            if members:
                with self.r.pipeline(transaction=False) as pipe:
                    for s in members:
                        pipe.exists(f"{self.p}:source:{s}")
                    alive = pipe.execute()
                dead = [s for s, ok in zip(members, alive) if not ok]
                if dead:
                    gone += self.r.srem(f"{self.p}:sources", *dead)
            if cursor == 0:
                return gone

    def quarantined(self) -> set[str]:
        return set(self.r.smembers(f"{self.p}:sources:quarantined"))

    def trusted(self) -> set[str]:
        """Sources an operator released: their *feedback keys* are trusted from then on (an event sent
        with that key skips the screen; the name alone, without the key, earns nothing)."""
        return set(self.r.smembers(f"{self.p}:sources:trusted"))

    def release(self, source: str) -> bool:
        """Trust a source's key from now on (an operator's word outranks the screen; its counts start
        afresh). A keyless client's origin (``addr:...``) has no key to trust: it leaves quarantine and
        its counts start afresh, and its later feedback is screened as before."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.srem(f"{self.p}:sources:quarantined", source)
            if not anonymous(source):
                pipe.sadd(f"{self.p}:sources:trusted", source)
            pipe.hdel(f"{self.p}:source:{source}", "judged", "contradicted")
            return bool(pipe.execute()[0])

    def quarantine(self, source: str) -> None:
        """Quarantine a source (the screen's verdict, or an operator's): it is no longer trusted."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.sadd(f"{self.p}:sources:quarantined", source)
            pipe.srem(f"{self.p}:sources:trusted", source)
            pipe.execute()


def batch_counts(items: Sequence[Candidate], judged: Sequence[Judged]) -> dict[str, tuple[int, int]]:
    """(judged, contradicted) per ledger key (:attr:`Candidate.ledger_key`) in one batch: what the ledger adds."""
    counts: dict[str, list[int]] = {}
    for it, j in zip(items, judged):
        if j.contradicted is not None:
            st = counts.setdefault(it.ledger_key, [0, 0])
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
    return each item's hold reason (None: train on it) and the sources newly quarantined (source names,
    or the origins of anonymous senders: ``addr:<client address>``, ``unsigned``)."""
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
        SOURCE_HELD if it.source in held_sources or it.ledger_key in held_sources else (j.reason if j.hold else None)
        for it, j in zip(items, judged)
    ]
    return reasons, newly


def release(buffer: ReplayBuffer, ledger: SourceLedger, sids: Sequence[str] = (), source: str | None = None) -> int:
    """An operator releases held samples (the next round trains on them); with ``source`` (a source name,
    or an anonymous origin such as ``addr:10.0.0.7``), trusts that source again and releases everything
    of it that is held. Returns how many were released."""
    chosen = list(sids)
    if source:
        ledger.release(source)
        chosen += [h.sid for h in buffer.held() if _sent_by(h, source)]
    return buffer.release(chosen)


def _sent_by(h: Held, source: str) -> bool:
    """Whether ``source`` (a source name, or a keyless client's origin) sent held sample ``h``. An origin
    matches origins only: a name is free text, and one client naming itself ``addr:<another address>``
    must not ride on that address's release."""
    return h.origin == source if anonymous(source) else h.source == source


class Forgets(Protocol):
    """What :func:`drop` needs of the correction log (``online.memory.log``, a layer above)."""

    def forget(self, sids: list[str], reason: str) -> int: ...


def approve_label(book: LabelBook, buffer: ReplayBuffer, label: str) -> tuple[bool, int]:
    """An operator approves a new label: remembered for good, and the examples held only because the label
    was pending go back to the buffer as released, trained by the next round (examples held as
    contradicted stay held: approving a label does not vouch for each of them). Returns (newly
    approved, examples released)."""
    new = book.approve(label)
    chosen = [h.sid for h in buffer.held() if h.label == label and is_pending(h.reason)]
    return new, buffer.release(chosen)


def drop(buffer: ReplayBuffer, corrections: Forgets, sids: Sequence[str] = (), source: str | None = None) -> int:
    """An operator deletes held samples for good (with ``source``: everything of it that is held); they
    leave the correction memory too."""
    chosen = list(sids) + ([h.sid for h in buffer.held() if _sent_by(h, source)] if source else [])
    dropped = buffer.drop(chosen)
    corrections.forget(chosen, "quarantine: dropped")
    return dropped


def screening_summary(buffer: ReplayBuffer, ledger: SourceLedger, approved: set[str]) -> ScreeningSummary:
    """What the screen holds, in counts only (no texts): per kind of reason, per source, the new labels
    waiting to go live, and the sources quarantined or trusted. Read by ``GET /v1/feedback/stats``,
    `online status` and the dashboard; from counters the buffer keeps, so its cost does not grow with
    the held texts."""
    kinds, by_source, pending = buffer.held_counts()
    return ScreeningSummary(
        held=HeldCounts(total=sum(kinds.values()), by_reason=kinds, by_source=dict(sorted(by_source.items()))),
        pending_labels=[
            PendingLabel(label=label, examples=n, sources=sources, reason=reason)
            for label, n, sources, reason in pending
        ],
        quarantined_sources=sorted(ledger.quarantined()),
        trusted_sources=sorted(ledger.trusted()),
        approved_labels=sorted(approved),
    )
