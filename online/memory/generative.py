"""The correction memory of a generative deployment: a corrected prompt answered with its correction at
once, before any round trains on it.

A round takes minutes; a user who writes the answer the model should have given expects the same
question, asked a moment later, to get it. The feedback consumer appends every generative correction to
the correction log (``online.memory.log``: the same log, screening, forgetting and erasure as the
classifier's), and each generating replica keeps this index of it.

What it answers: a single-turn chat whose user message is a corrected prompt, compared as texts are
compared everywhere else (PII-masked, case and spaces normalised: ``online.memory.index.text_key``).
A multi-turn chat is never answered from memory: the same last question means something else after
other turns. Paraphrases are left to the round (the 135M model generalises a taught fact to unseen
phrasings in one round: ``online bench teach-generate``).

The screen: one client must not be able to make a replica tell every user what it wrote. An entry sent
with the admin token or a trusted feedback key is served at once. An untrusted one is served only once
``min_sources`` independent origins (``online.credentials``: keys, or client addresses without keys)
taught the same answer to the same prompt (the log merges the origins of one text taught again, and an
untrusted resend never takes a trusted teaching's trust away); until then it is ``held``, with the reason. Several answers to
one prompt: the one with the most independent origins among the servable ones, the newest on a tie
(a trusted correction outranks untrusted ones). ``absorbed`` (the version already answers it) is not
decided here: generating to check would cost a decode per correction; the round's own answer replaces
the memory's once the entry ages out or is voted down.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from online import generation_samples as gen
from online.feedback.buffer import normalise
from online.memory.index import ACTIVE, HELD, text_key
from online.memory.log import Correction


@dataclass(frozen=True)
class GenerativeHit:
    """A prompt answered from memory: the answer, and the entry (its sample id and feedback event)."""

    answer: str
    sid: str
    event_id: str


@dataclass(frozen=True)
class _Entry:
    correction: Correction
    key: str
    answer: str


def prompt_key(messages: list[dict[str, str]]) -> str | None:
    """The memory's key of a chat: its one user message, normalised; None for any other chat."""
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or any(m.get("role") == "assistant" for m in messages):
        return None
    return text_key(users[0]["content"])


class GenerativeMemory:
    def __init__(self, min_sources: int) -> None:
        self.min_sources = min_sources
        self._entries: dict[str, _Entry] = {}
        self._answers: dict[str, GenerativeHit] = {}  # prompt key -> the answer served
        self._states: dict[str, tuple[str, str]] = {}  # sid -> (state, reason)

    def load(self, corrections: list[Correction]) -> None:
        """Replace the entries with the log's generative corrections, and decide what is served."""
        entries = {}
        for c in corrections:
            if c.label != gen.CORRECTION:
                continue
            sample = gen.decode(c.text)
            key = prompt_key(sample.messages)
            if key is not None:
                entries[c.sid] = _Entry(c, key, sample.answer)
        self._entries = entries
        self._decide()

    def _decide(self) -> None:
        by_key: dict[str, dict[str, list[_Entry]]] = defaultdict(lambda: defaultdict(list))
        for e in self._entries.values():
            by_key[e.key][normalise(e.answer)].append(e)
        answers: dict[str, GenerativeHit] = {}
        states: dict[str, tuple[str, str]] = {}
        for key, groups in by_key.items():
            best: tuple[tuple[int, int, float], list[_Entry], _Entry] | None = None
            for group in groups.values():
                trusted = any(e.correction.trusted for e in group)
                origins = {o for e in group for o in (*e.correction.origins, e.correction.origin or e.correction.source)}
                if not (trusted or len(origins) >= self.min_sources):
                    why = (
                        f"untrusted: {len(origins)} of {self.min_sources} independent sources taught this answer "
                        "to this prompt (feedback with the admin token or a trusted key is served at once)"
                    )
                    states.update({e.correction.sid: (HELD, why) for e in group})
                    continue
                newest = max(group, key=lambda e: e.correction.at)
                rank = (int(trusted), len(origins), newest.correction.at)
                if best is not None:  # two servable answers to one prompt: the outranked one is held
                    loser = group if rank < best[0] else best[1]
                    states.update({e.correction.sid: (HELD, "another answer to the same prompt is served") for e in loser})
                    if rank < best[0]:
                        continue
                best = (rank, group, newest)
                states.update({e.correction.sid: (ACTIVE, "") for e in group})
            if best is not None:
                chosen = best[2]
                answers[key] = GenerativeHit(chosen.answer, chosen.correction.sid, chosen.correction.event_id)
        self._answers, self._states = answers, states

    def lookup(self, messages: list[dict[str, str]]) -> GenerativeHit | None:
        key = prompt_key(messages)
        return self._answers.get(key) if key is not None else None

    def explain(self, sid: str) -> tuple[str, str] | None:
        """(state, reason) of one correction, if the memory has it."""
        return self._states.get(sid)

    def stats(self) -> dict[str, int]:
        counts = {ACTIVE: 0, HELD: 0}
        for state, _ in self._states.values():
            counts[state] = counts.get(state, 0) + 1
        return counts
