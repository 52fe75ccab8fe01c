"""One version's correction memory: which taught texts it answers, and the lookup at predict time.

Built by every API replica for the version it serves (``online.serving.memory_follower``) from the
correction log (``online.memory.log``), embedded with that version's own encoder. An entry is in one of
four states, decided here and nowhere else:

- ``held``: the screen that guards training (``online.feedback.quarantine.screen``) would hold it, or
  its source is quarantined: the memory never serves what the quarantine holds. An entry sent with the
  admin token or a trusted feedback key (``Correction.trusted``) is not screened: served at once;
- ``pending``: its label is new and the label rules (``online.feedback.labels.govern``) do not let it
  go live yet, the same rules a round obeys;
- ``absorbed``: this version's weights already answer its text with its label (the round that trained
  on it went live): nothing to add. A rollback builds the older version's memory, where the entry is
  active again;
- ``active``: answered from memory.

Lookup: the exact text (normalised, PII-masked as stored) always answers from its newest entry. A
query is masked only when some servable entry holds a placeholder (``<email>``...): masking never
changes a text into one without placeholders, so otherwise the unmasked text finds the same entries. Any other
text answers from its nearest active entry when the cosine is >= ``similarity`` *and* that entry is
nearer than the nearest known training example of another label (the version's drift reference, which
indexes its training data): a fine-tuned encoder pulls texts of an intent it never learned into the
clusters of the intents it knows, so a similarity threshold alone lets 10,000 corrections capture
untouched traffic (`online bench memory`, 10,000 corrections at 0.9: -3.0 points without the
comparison, -0.18 with it).
The answer is interpolated with the model (kNN-LM style): ``p = s * onehot(label) + (1 - s) * p_model``,
``s`` the similarity (1 for the exact text), so the memory's label leads and ``top_k`` stays a distribution.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online.credentials import anonymous
from online.feedback.buffer import normalise
from online.feedback.labels import LabelRules, govern
from online.feedback.pii import mask_pii
from online.feedback.quarantine import Candidate, ScreenConfig, screen
from online.memory.log import Correction
from online.reference import Reference, unit_rows

ACTIVE, ABSORBED, HELD, PENDING = "active", "absorbed", "held", "pending"
STATES = (ACTIVE, ABSORBED, HELD, PENDING)


_PLACEHOLDER = re.compile(r"<[^<>\s]+>")  # what masking leaves (normalised: lower case)


def text_key(text: str) -> str:
    """How a text is compared with a taught one: masked like stored texts, case and spaces normalised."""
    return normalise(mask_pii(text))


@dataclass(frozen=True)
class Hit:
    sid: str
    event_id: str
    label: str
    similarity: float  # 1.0 for the exact text
    exact: bool


@dataclass(frozen=True)
class Policy:
    """What a replica reads from Redis now and then: whom and which new labels it may serve."""

    quarantined_sources: frozenset[str] = frozenset()
    approved_labels: frozenset[str] = frozenset()
    held_samples: frozenset[str] = frozenset()  # sids in the buffer's quarantine (any reason, pending too)


@dataclass(frozen=True)
class _View:
    """The servable entries as a lookup reads them, built by :meth:`CorrectionMemory.refresh`."""

    exact: dict[str, Correction] = field(default_factory=dict)  # text key -> its newest active entry
    entries: list[Correction] = field(default_factory=list)  # the active entries, in the index's order
    index: Any = None  # faiss inner-product index of their vectors
    mask_queries: bool = False  # some key holds a placeholder: queries must be masked to match


@dataclass
class _Known:
    entry: Correction
    vector: np.ndarray  # unit length, float32
    answer: str  # what this version's weights say about the text
    hold: str  # the screen's reason to hold it ("" : none)
    takeover: str | None
    key: str  # text_key of the entry's text
    state: str = PENDING


class CorrectionMemory:
    """The memory of one version. :meth:`learn` and :meth:`forget_all_but` on the forward thread (the
    follower calls them, one at a time); :meth:`refresh` (O(entries): up to ~0.1 s at 10,000) may run on
    another thread while lookups go on, as long as nothing else changes the memory meanwhile: it
    publishes what lookups read in one assignment. :meth:`counts` may be read from anywhere."""

    def __init__(
        self,
        labels: Sequence[str],
        similarity: float,
        rules: LabelRules,
        screen_cfg: ScreenConfig | None,
        reference: Reference | None,
    ) -> None:
        self.labels = list(labels)
        self.similarity = similarity
        self.rules = rules
        self.screen_cfg = screen_cfg  # None: nothing is screened (quarantine off)
        self.reference = reference
        self.policy = Policy()
        self._known: dict[str, _Known] = {}
        self._counts: dict[str, int] = {state: 0 for state in STATES}  # replaced whole by refresh
        self._view = _View()  # what lookups read: replaced whole by refresh
        self._known_index = None  # the version's indexed training data: a correction must be nearer than it
        if reference is not None and reference.train_labels:
            self._known_index = reference.index()
            self._known_labels = list(reference.train_labels)

    # --- contents ---------------------------------------------------------------------------
    def missing(self, entries: dict[str, Correction]) -> list[Correction]:
        """Entries of the log this memory lacks, or holds from an older teaching of the same text and
        label (a re-taught entry carries its new event, time and source)."""
        return [e for sid, e in entries.items() if sid not in self._known or self._known[sid].entry != e]

    def learn(self, entries: Sequence[Correction], probs: np.ndarray, embeddings: np.ndarray) -> None:
        """Add entries with this version's probabilities and embeddings of their texts; screen those
        whose source is not trusted. Call :meth:`refresh` afterwards."""
        if not entries:
            return
        x = unit_rows(embeddings)
        judged: dict[int, tuple[str, str | None]] = {}
        todo = [i for i, e in enumerate(entries) if not e.trusted]  # a trusted credential outranks the screen
        if self.screen_cfg is not None and todo:
            found = screen(
                [Candidate(entries[i].text, entries[i].label, entries[i].source, entries[i].origin) for i in todo],
                probs[todo], embeddings[todo], self.labels, self.reference, self.screen_cfg,
            )  # fmt: skip
            judged = {i: (j.reason if j.hold else "", j.takeover) for i, j in zip(todo, found)}
        for i, e in enumerate(entries):
            hold, takeover = judged.get(i, ("", None))
            answer = self.labels[int(np.argmax(probs[i]))]
            # the log's texts are masked already: normalised, not masked again
            self._known[e.sid] = _Known(e, x[i], answer, hold, takeover, normalise(e.text))

    def forget_all_but(self, sids: set[str]) -> int:
        """Drop the entries the log no longer has."""
        gone = [sid for sid in self._known if sid not in sids]
        for sid in gone:
            del self._known[sid]
        return len(gone)

    def refresh(self, policy: Policy | None = None) -> None:
        """Decide every entry's state under ``policy`` and rebuild the lookup structures."""
        import faiss

        if policy is not None:
            self.policy = policy
        live = set(self.labels)
        candidates: list[_Known] = []
        p = self.policy
        for k in self._known.values():
            screened = bool(k.hold) and not k.entry.trusted  # a trusted credential outranks the screen
            if screened or _quarantined(k.entry, p) or k.entry.sid in p.held_samples:
                k.state = HELD
            elif k.answer == k.entry.label:
                k.state = ABSORBED
            else:
                k.state = ACTIVE
                candidates.append(k)
        # a new label waits for the label rules, unless a trusted credential taught it (under the approval
        # policy, only the admin token)
        approval = self.rules.policy == "approval"
        new = [
            k for k in candidates
            if k.entry.label not in live and not (k.entry.trusted == "admin" or (k.entry.trusted and not approval))
        ]  # fmt: skip
        if new:
            teachers: dict[str, set[str]] = {}
            for k in new:
                teachers.setdefault(k.entry.label, set()).add(k.entry.origin or k.entry.source)
            reasons, _ = govern(
                [k.entry.label for k in new], [k.entry.source for k in new], [k.takeover for k in new],
                [None] * len(new), live, set(self.policy.approved_labels), lambda source: set(), self.rules,
                Counter(k.entry.label for k in new), teachers,
            )  # fmt: skip
            for k, reason in zip(new, reasons):
                if reason is not None:
                    k.state = PENDING
        # The newest word on a text wins (a trusted word over any untrusted one, whenever it came): an older
        # entry of the same text is neither exact nor near
        newest: dict[str, _Known] = {}
        for k in sorted(self._known.values(), key=lambda k: (bool(k.entry.trusted), k.entry.at)):
            if k.state != HELD:
                newest[k.key] = k
        active = {key: k for key, k in newest.items() if k.state == ACTIVE}
        index = None
        if active:
            index = faiss.IndexFlatIP(len(next(iter(active.values())).vector))
            index.add(np.stack([k.vector for k in active.values()]))
        self._view = _View(  # one assignment: a lookup on another thread sees the old view or the new one
            exact={key: k.entry for key, k in active.items()},
            entries=[k.entry for k in active.values()],
            index=index,
            mask_queries=any(_PLACEHOLDER.search(key) for key in active),
        )
        counts = Counter(k.state for k in self._known.values())
        self._counts = {state: counts.get(state, 0) for state in STATES}

    # --- serving ----------------------------------------------------------------------------
    def lookup(
        self, texts: Sequence[str], embeddings: np.ndarray, masked: Callable[[], Sequence[str]] | None = None
    ) -> list[Hit | None]:
        """The memory's answer for each text, or None where the model answers alone. ``masked`` gives
        the texts PII-masked (computed once for the batch); called only when a servable entry holds a
        placeholder, so most lookups mask nothing."""
        hits: list[Hit | None] = [None] * len(texts)
        view = self._view
        if not view.entries:
            return hits
        if view.mask_queries:
            keys = [normalise(t) for t in (masked() if masked is not None else [mask_pii(t) for t in texts])]
        else:
            keys = [normalise(t) for t in texts]
        for i, key in enumerate(keys):
            e = view.exact.get(key)
            if e is not None:
                hits[i] = Hit(e.sid, e.event_id, e.label, 1.0, True)
        rest = [i for i, h in enumerate(hits) if h is None]
        if rest and view.index is not None:
            x = unit_rows(embeddings[rest])
            sims, nn = view.index.search(x, 1)
            if self._known_index is not None:
                known_sims, known_nn = self._known_index.search(x, 1)
            for row, (i, sim, j) in enumerate(zip(rest, sims[:, 0], nn[:, 0])):
                if j < 0 or sim < self.similarity:
                    continue
                e = view.entries[j]
                if self._known_index is not None:
                    # the nearest known training example of another label is nearer: that intent's text
                    k = known_nn[row, 0]
                    if k >= 0 and self._known_labels[k] != e.label and known_sims[row, 0] >= sim:
                        continue
                hits[i] = Hit(e.sid, e.event_id, e.label, float(sim), False)
        return hits

    def counts(self) -> dict[str, int]:
        """Entries per state at the last refresh (safe to read from any thread)."""
        return self._counts

    def explain(self, sid: str) -> tuple[str, str] | None:
        """(state, the screen's reason to hold it) of one entry, or None if this memory lacks it."""
        k = self._known.get(sid)
        if k is None:
            return None
        reason = k.hold
        if k.state == HELD and not reason:
            if who := _quarantined(k.entry, self.policy):
                reason = f"source {who!r} is quarantined"
            elif sid in self.policy.held_samples:
                reason = "the replay buffer's quarantine holds it"
        return k.state, reason

    def states(self) -> dict[str, str]:
        """Each entry's state by sid (tests, `online status`)."""
        return {sid: k.state for sid, k in self._known.items()}


def blend(hit: Hit, probs: np.ndarray, labels: Sequence[str], k: int) -> tuple[list[tuple[str, float]], np.ndarray]:
    """The served top-k for a memory hit, and the probabilities over ``labels`` it implies (for drift and
    the review queue). A label the weights do not know yet ranks first and is absent from the latter."""
    s = hit.similarity
    mixed = probs * (1.0 - s)
    scores = {lab: float(p) for lab, p in zip(labels, mixed)}
    scores[hit.label] = scores.get(hit.label, 0.0) + s
    if hit.label in labels:
        mixed = mixed.copy()
        mixed[labels.index(hit.label)] += s
    model = {lab: float(p) for lab, p in zip(labels, probs)}
    # ties (every other label is 0 for the exact text) keep the model's order, not the label list's
    top = sorted(scores.items(), key=lambda kv: (-kv[1], -model.get(kv[0], 0.0)))[:k]
    return [(lab, round(p, 6)) for lab, p in top], mixed


def _quarantined(entry: Correction, policy: Policy) -> str | None:
    """The quarantined sender an entry came from: its source name, or its origin when the sender had no
    key (the source ledger quarantines a keyless client by its address, whatever names it uses)."""
    if entry.source in policy.quarantined_sources:
        return entry.source
    if anonymous(entry.origin) and entry.origin in policy.quarantined_sources:
        return entry.origin
    return None
