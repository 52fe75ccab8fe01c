"""Label creation is governed: who may put a new label live, and the operator's approvals (Redis).

A *new* label is one the live version does not have. ``label_policy`` decides when its examples may be
trained on:

- ``open``: whenever the screen finds nothing against them;
- ``limited`` (default): a label must have ``label_min_examples`` examples; a single source may create
  at most ``label_budget_per_hour`` labels an hour, and may not take over texts the live model
  confidently answers with an existing label whose known examples agree (a hijack looks exactly like
  that). A label that ``quarantine_release_sources`` distinct sources teach is exempt from both limits,
  and a source with an API key (``feedback_api_keys``: the operator vouched for it) from the budget;
- ``approval``: every new label waits for an operator.

Examples that may not go live yet are held with a reason starting ``pending label``; they are not
suspicious (nothing counts against their source) and each round looks at them again, so they go live as
soon as the label is allowed. An approval (`online labels approve`, ``POST /v1/labels/{label}/approve``)
is remembered: the label is never governed again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import redis

from online.keys import Keys
from online.settings import Settings

LabelPolicy = Literal["open", "limited", "approval"]
PENDING = "pending label"
HOUR_S = 3600.0


@dataclass(frozen=True)
class LabelRules:
    policy: LabelPolicy
    min_examples: int
    budget_per_hour: int
    corroborating_sources: int
    vouched: frozenset[str] = frozenset()  # sources with an API key: no hourly budget (takeovers still wait)

    @classmethod
    def from_settings(cls, settings: Settings) -> "LabelRules":
        return cls(
            policy=settings.label_policy,
            min_examples=settings.label_min_examples,
            budget_per_hour=settings.label_budget_per_hour,
            corroborating_sources=settings.quarantine_release_sources,
            vouched=frozenset(settings.feedback_api_keys or {}),
        )


def pending_reason(why: str) -> str:
    return f"{PENDING}: {why}"


def is_pending(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(PENDING)


class LabelBook:
    """Approved labels, and which source created which new label when (for the hourly budget)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.approved_key = keys.labels_approved
        self.created_prefix = keys.labels_created

    def approved(self) -> set[str]:
        return set(self.r.smembers(self.approved_key))

    def approve(self, label: str) -> bool:
        """Remember an operator's approval; True if it is new."""
        return bool(self.r.sadd(self.approved_key, label))

    def created_recently(self, source: str, now: float | None = None) -> set[str]:
        """The new labels ``source`` created in the last hour."""
        now = time.time() if now is None else now
        return set(self.r.zrangebyscore(f"{self.created_prefix}:{source}", now - HOUR_S, "+inf"))

    def record_created(self, created: Iterable[tuple[str, str]], now: float | None = None) -> None:
        """(source, label) pairs a round let go live; old entries fall out of the window."""
        now = time.time() if now is None else now
        with self.r.pipeline(transaction=False) as pipe:
            for source, label in created:
                key = f"{self.created_prefix}:{source}"
                pipe.zadd(key, {label: now}, nx=True)
                pipe.zremrangebyscore(key, "-inf", now - HOUR_S)
                pipe.expire(key, int(2 * HOUR_S))
            pipe.execute()


def govern(
    labels: list[str],
    sources: list[str],
    takeovers: list[str | None],
    reasons: list[str | None],
    live_labels: set[str],
    approved: set[str],
    created_recently: Callable[[str], set[str]],
    rules: LabelRules,
    examples: dict[str, int],
    teachers: dict[str, set[str]],
) -> tuple[list[str | None], list[tuple[str, str]]]:
    """Each example of a new label that nothing else holds: None (may go live) or a pending reason.
    ``examples``/``teachers``: per label, its examples and distinct sources in the buffer;
    ``approved``/``created_recently``: what :class:`LabelBook` knows. Also returns the (source, label)
    creations to record against the hourly budget."""
    out = list(reasons)
    if rules.policy == "open":
        return out, []
    # A source's new label takes over an existing intent when most of its examples are that intent's texts
    per_pair: dict[tuple[str, str], list[str | None]] = {}
    for label, source, t in zip(labels, sources, takeovers):
        per_pair.setdefault((source, label), []).append(t)
    taken: dict[tuple[str, str], str] = {}
    for pair, ts in per_pair.items():
        found = Counter(t for t in ts if t is not None).most_common(1)
        if found and found[0][1] / len(ts) >= 0.5:
            taken[pair] = found[0][0]
    recent: dict[str, set[str]] = {}
    created: list[tuple[str, str]] = []
    for i, (label, source) in enumerate(zip(labels, sources)):
        if out[i] is not None or label in live_labels or label in approved:
            continue
        hint = f"`online labels approve {label}`"
        if rules.policy == "approval":
            out[i] = pending_reason(f"new label {label!r} awaits an operator ({hint})")
            continue
        if len(teachers.get(label, ())) >= rules.corroborating_sources:
            continue  # several sources teach it: trusted
        if examples.get(label, 0) < rules.min_examples:
            out[i] = pending_reason(
                f"new label {label!r} has {examples.get(label, 0)} of {rules.min_examples} examples"
            )
            continue
        if (source, label) in taken:
            out[i] = pending_reason(f"new label {label!r} would take over texts of {taken[source, label]!r} ({hint})")
            continue
        if source in rules.vouched:
            continue
        if source not in recent:
            recent[source] = created_recently(source)
        mine = recent[source]
        if label not in mine:
            if len(mine) >= rules.budget_per_hour:
                out[i] = pending_reason(f"source {source!r} created {len(mine)} new labels this hour ({hint})")
                continue
            mine.add(label)
            created.append((source, label))
    return out, created
