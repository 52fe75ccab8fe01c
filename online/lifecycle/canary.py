"""Progressive delivery: a candidate that passed the gate answers a share of live traffic, is compared
with live on what users say about each one's own answers, and is stepped up (5% -> 25% -> 50% ->
promoted), or rolled back, on that evidence.

Routing (:func:`routed_to_canary`) is a pure function of (canary version, user or text, share): every
replica decides the same way without talking to the others, a user (or, without one, a text) stays on
one version while the share holds, and a step up only adds users (whoever was in at 5% is still in at
25%). Salting with the version gives each canary a different first 5%.

Evidence, all over the canary's own window:

- judged accuracy from feedback on each version's own predictions (``LiveAccuracy``: thumbs and
  corrections, once per prediction, with the distinct sources that judged), and the thumbs-down rate
  of its thumbs votes; live's over the same minutes as the canary's;
- requests, forward errors and latency of each arm, counted by every replica (:class:`CanaryLedger`).

The verdict is sequential: a mixture SPRT on the difference of the two accuracies (Johari et al.,
"Always valid inference", the test behind Optimizely's stats engine), so checking on every tick does
not inflate its error. A canary is rolled back as soon as the test says it is worse (or its error rate
or latency is out of bounds), stepped up early when the test says it is better, and otherwise stepped up
once its share has seen enough judgements and time with an accuracy within ``canary_margin`` of live's.
It decides nothing on too few judgements, or on judgements from too few independent sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import redis

from online.contract import ArmEvidence, CanarySlot
from online.keys import Keys
from online.lifecycle import promotion
from online.lifecycle.registry import CanaryMoved, IntegrityError, LiveChange, LiveMoved, ModelRegistry
from online.lifecycle.store import StoreUnavailable
from online.monitoring.live_accuracy import LiveAccuracy
from online.settings import Settings

Role = Literal["live", "canary"]
Action = Literal["hold", "step", "promote", "rollback", "abort"]
Run = tuple[int, int]  # (canary version, its start second): what serving counts are kept by

# Latency histogram bounds (ms), geometric from 1 ms to ~33 s: every replica counts into the same buckets,
# so their sums give a fleet-wide quantile.
BUCKETS_MS = [2 ** (i / 2) for i in range(31)]
TAU2 = 0.01  # the mSPRT's mixing variance: effects of about 10 points of accuracy are what it is tuned for


def routed_to_canary(key: str, version: int, share: float) -> bool:
    """Whether ``key`` (a user id, else the text) is served by canary ``version`` at ``share``."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{version}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def run_of(slot: CanarySlot) -> Run:
    return slot.version, int(slot.since)


def schedule(first: float, steps: list[float]) -> list[float]:
    """The shares after ``first``: the configured steps above it."""
    return [s for s in steps if s > first]


# --- serving counts ---------------------------------------------------------------------------
@dataclass
class ArmCounts:
    """One replica's counts for one arm since its last flush."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))

    def merge(self, other: "ArmCounts") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]

    def observe(self, seconds: float, error: bool = False) -> None:
        self.requests += 1
        self.errors += int(error)
        ms = seconds * 1000
        i = next((i for i, b in enumerate(BUCKETS_MS) if ms <= b), len(BUCKETS_MS))
        self.buckets[i] += 1


def quantile_ms(buckets: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None with no observation)."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return BUCKETS_MS[min(i, len(BUCKETS_MS) - 1)]
    return BUCKETS_MS[-1]


class CanaryLedger:
    """Requests, errors and latency per arm of each canary, summed over replicas in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int = 30 * 86400) -> None:
        self.r = client
        self.p = keys.canary
        self.ttl = ttl_s

    def add(self, run: Run, counts: dict[Role, ArmCounts]) -> None:
        """``run``: (version, start second) of one canary: a version canaried again starts from zero."""
        with self.r.pipeline(transaction=False) as pipe:
            for role, c in counts.items():
                key = f"{self.p}:{run[0]}:{run[1]}:{role}"
                pipe.hincrby(key, "requests", c.requests)
                pipe.hincrby(key, "errors", c.errors)
                for i, n in enumerate(c.buckets):
                    if n:
                        pipe.hincrby(key, f"b{i}", n)
                pipe.expire(key, self.ttl)
            pipe.execute()

    def note(self, version: int, decision: Decision) -> None:
        """The trainer's last decision on a canary, for every reader (they may run other settings)."""
        body = json.dumps({"at": time.time(), "action": decision.action, "reason": decision.reason})
        self.r.set(f"{self.p}:{version}:decision", body, ex=self.ttl)

    def noted(self, version: int) -> tuple[float, Decision] | None:
        raw = self.r.get(f"{self.p}:{version}:decision")
        if raw is None:
            return None
        d = json.loads(raw)
        return d["at"], Decision(d["action"], d["reason"])

    def get(self, run: Run, role: Role) -> ArmCounts:
        h = self.r.hgetall(f"{self.p}:{run[0]}:{run[1]}:{role}")
        buckets = [int(h.get(f"b{i}", 0)) for i in range(len(BUCKETS_MS) + 1)]
        return ArmCounts(int(h.get("requests", 0)), int(h.get("errors", 0)), buckets)


# --- the sequential test ----------------------------------------------------------------------
def log_msprt(correct_a: int, n_a: int, correct_b: int, n_b: int, theta0: float = 0.0) -> float:
    """log of the mixture SPRT statistic for H0: acc_a - acc_b = theta0 (normal approximation, normal
    mixture of variance :data:`TAU2`). H0 is rejected, at any time, once it reaches log(1/alpha)."""
    if n_a == 0 or n_b == 0:
        return 0.0
    pa, pb = (correct_a + 0.5) / (n_a + 1), (correct_b + 0.5) / (n_b + 1)  # never a zero variance
    v = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
    d = correct_a / n_a - correct_b / n_b - theta0
    return 0.5 * math.log(v / (v + TAU2)) + TAU2 * d * d / (2 * v * (v + TAU2))


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


@dataclass(frozen=True)
class Analysis:
    live: ArmEvidence
    candidate: ArmEvidence
    decision: Decision
    curve: list[tuple[int, float | None, float | None]]


def _arm(version: int, minutes: list[tuple[int, int, int, int, int]], sources: int, counts: ArmCounts) -> ArmEvidence:
    judged, correct = sum(m[1] for m in minutes), sum(m[2] for m in minutes)
    thumbs, down = sum(m[3] for m in minutes), sum(m[4] for m in minutes)
    return ArmEvidence(
        version=version, judged=judged, correct=correct, accuracy=correct / judged if judged else None,
        sources=sources, thumbs=thumbs, thumbs_down_rate=down / thumbs if thumbs else None,
        requests=counts.requests, errors=counts.errors, p95_ms=quantile_ms(counts.buckets, 0.95),
    )  # fmt: skip


def analyse(
    slot: CanarySlot, accuracy: LiveAccuracy, ledger: CanaryLedger, settings: Settings, now: float | None = None
) -> Analysis:
    """The canary's evidence against live over its window, and what it calls for now."""
    now = time.time() if now is None else now
    first = int(slot.since // 60)  # both arms' judgements from the canary's first minute on
    live_minutes = [m for m in accuracy.per_minute_thumbs(slot.parent) if m[0] >= first]
    cand_minutes = [m for m in accuracy.per_minute_thumbs(slot.version) if m[0] >= first]
    run = run_of(slot)
    live = _arm(slot.parent, live_minutes, accuracy.get(slot.parent).sources, ledger.get(run, "live"))
    cand = _arm(slot.version, cand_minutes, accuracy.get(slot.version).sources, ledger.get(run, "canary"))
    by_minute_live = {m[0]: m for m in live_minutes}
    by_minute_cand = {m[0]: m for m in cand_minutes}
    curve = [
        (minute, _ratio(by_minute_live.get(minute)), _ratio(by_minute_cand.get(minute)))
        for minute in sorted(set(by_minute_live) | set(by_minute_cand))
    ]
    return Analysis(live, cand, decide(slot, live, cand, settings, now), curve)


def _ratio(minute: tuple[int, int, int, int, int] | None) -> float | None:
    return minute[2] / minute[1] if minute and minute[1] else None


def decide(slot: CanarySlot, live: ArmEvidence, cand: ArmEvidence, s: Settings, now: float) -> Decision:
    """hold, step (or promote, past the last step), rollback or abort, and why (the reason goes to the
    history). Errors and latency are checked even while an operator holds the canary (pause stops the
    steps, not the safety); a step needs the non-inferiority test, not a point estimate, so re-checking
    on every tick cannot walk a worse canary up."""
    if cand.requests >= s.canary_min_requests and live.requests >= s.canary_min_requests:
        err_c, err_l = cand.errors / cand.requests, live.errors / live.requests
        if err_c > err_l + s.canary_max_error_rate:
            return Decision("rollback", f"error rate {err_c:.2%} vs live {err_l:.2%} on {cand.requests} requests")
        if cand.p95_ms and live.p95_ms and cand.p95_ms > s.canary_max_latency_ratio * live.p95_ms:
            return Decision(
                "rollback", f"p95 latency {cand.p95_ms:.0f} ms vs live {live.p95_ms:.0f} ms (> {s.canary_max_latency_ratio}x)"
            )
    if slot.paused:
        return Decision("hold", "paused by an operator")
    if now - slot.since > s.canary_max_s:
        return Decision("abort", f"undecided after {s.canary_max_s / 3600:.1f} h (it holds rounds back): promote it by hand if wanted")
    need = s.canary_min_judged
    if cand.judged < need or live.judged < need:
        return Decision("hold", f"too little evidence: {cand.judged} canary and {live.judged} live judgements of {need} each")
    if cand.sources < s.verdict_min_sources or live.sources < s.verdict_min_sources:
        return Decision(
            "hold",
            f"too few independent sources: canary {cand.sources}, live {live.sources} of {s.verdict_min_sources} each",
        )
    assert cand.accuracy is not None and live.accuracy is not None
    diff = cand.accuracy - live.accuracy
    bound = math.log(1 / s.canary_alpha)
    worse = log_msprt(cand.correct, cand.judged, live.correct, live.judged)  # H0: no difference
    not_worse = log_msprt(cand.correct, cand.judged, live.correct, live.judged, -s.canary_margin)  # H0: margin worse
    evidence = (
        f"accuracy {cand.accuracy:.3f} ({cand.correct}/{cand.judged}) vs live {live.accuracy:.3f} "
        f"({live.correct}/{live.judged}), log-mSPRT {worse:.1f} (difference) and {not_worse:.1f} "
        f"(non-inferiority at {s.canary_margin:.0%}) of {bound:.1f}"
    )
    if cand.thumbs_down_rate is not None and live.thumbs_down_rate is not None:
        evidence += f"; thumbs down {cand.thumbs_down_rate:.1%} vs {live.thumbs_down_rate:.1%}"
    if diff < 0 and worse >= bound:
        return Decision("rollback", f"worse: {evidence}")
    at_step, elapsed = cand.judged - slot.judged_at_step, now - slot.step_since
    nxt = "promote" if not slot.steps else "step"
    if at_step < need:
        return Decision("hold", f"{at_step} of {need} judgements at {slot.share:.0%}; {evidence}")
    if diff > 0 and worse >= bound:
        return Decision(nxt, f"better: {evidence}")  # early: no need to wait out the step's time
    if not (diff > -s.canary_margin and not_worse >= bound):
        return Decision("hold", f"not shown within {s.canary_margin:.0%} of live yet: {evidence}")
    if elapsed < s.canary_min_step_s:
        return Decision("hold", f"{elapsed:.0f} of {s.canary_min_step_s:.0f} s at {slot.share:.0%}; {evidence}")
    return Decision(nxt, f"within {s.canary_margin:.0%} of live: {evidence}")


# --- moves ------------------------------------------------------------------------------------
def start(
    registry: ModelRegistry,
    version: int,
    settings: Settings,
    reason: str,
    share: float | None = None,
    expect_live: int | None = None,
) -> LiveChange:
    """Put a published version on a share of live traffic (raises ValueError, KeyError, ``LiveMoved``,
    ``CanaryMoved`` when a canary already runs); ``expect_live``: only while live is that version (a
    round's candidate is compared with its parent)."""
    live = registry.live()
    if live is None:
        raise ValueError("nothing is live: a canary needs a live version to compare with")
    if expect_live is not None and live != expect_live:
        raise LiveMoved(f"live is {live}, not {expect_live}: version {version} is no canary of it")
    if version == live:
        raise ValueError(f"version {version} is live already")
    if registry.get(version).family != "classifier":
        raise ValueError(f"version {version} is a {registry.get(version).family} model: canaries route classifications only")
    running = registry.canary()
    if running is not None:
        raise CanaryMoved(f"version {running.version} is on a canary already: abort or promote it first")
    registry.verify(version)  # a canary serves real users: its weights are checked as a promotion's are
    first = share if share is not None else (settings.canary_share or (settings.canary_steps or [0.05])[0])
    if not 0 < first < 1:
        raise ValueError(f"a canary's share is in (0, 1), not {first}")
    now = time.time()
    slot = CanarySlot(
        version=version, parent=live, share=first, steps=schedule(first, settings.canary_steps),
        since=now, step_since=now, shares=[(now, first)],
    )  # fmt: skip
    why = f"{first:.0%} of traffic: {reason}" if reason else f"{first:.0%} of traffic"
    return registry.set_canary(slot, "canary_start", why, current=None)


def pause(registry: ModelRegistry, paused: bool, reason: str) -> LiveChange:
    slot = _running(registry)
    action = "canary_pause" if paused else "canary_resume"
    update = slot.model_copy(update={"paused": paused})
    return registry.set_canary(update, action, reason or action.split("_")[1] + "d", current=slot)


def abort(registry: ModelRegistry, reason: str, action: Literal["canary_abort", "canary_rollback"] = "canary_abort") -> LiveChange:
    slot = _running(registry)
    return registry.set_canary(None, action, reason, current=slot)


def promote_now(registry: ModelRegistry, reason: str) -> LiveChange:
    """An operator's promotion of the canary to 100% (checked like any promotion)."""
    slot = _running(registry)
    return promotion.promote(registry, slot.version, reason or f"canary promoted at {slot.share:.0%}", expect_live=slot.parent)


def _running(registry: ModelRegistry) -> CanarySlot:
    slot = registry.canary()
    if slot is None:
        raise ValueError("no canary is running")
    return slot


def settle(
    registry: ModelRegistry, accuracy: LiveAccuracy, ledger: CanaryLedger, settings: Settings, now: float | None = None
) -> LiveChange | None:
    """The trainer's tick: take the step the analysis calls for, if any; returns the change made. A move
    that fails (the version's files gone, weights that fail their check) ends the canary with the reason,
    so a broken canary never holds the trainer's housekeeping or its rounds."""
    slot = registry.canary()
    if slot is None:
        return None
    now = time.time() if now is None else now
    try:
        if registry.live() != slot.parent:  # live moved under it (a rollback, a manual promotion)
            return registry.set_canary(None, "canary_abort", f"live is no longer version {slot.parent}", current=slot)
        analysis = analyse(slot, accuracy, ledger, settings, now)
        decision = analysis.decision
        ledger.note(slot.version, decision)
        if decision.action in ("rollback", "abort"):
            action = "canary_rollback" if decision.action == "rollback" else "canary_abort"
            return registry.set_canary(None, action, decision.reason, current=slot)
        if decision.action == "promote":
            return promotion.promote(
                registry, slot.version, f"canary passed at {slot.share:.0%}: {decision.reason}", expect_live=slot.parent
            )
        if decision.action == "step":
            nxt = slot.model_copy(
                update={"share": slot.steps[0], "steps": slot.steps[1:], "step_since": now,
                        "judged_at_step": analysis.candidate.judged, "shares": [*slot.shares, (now, slot.steps[0])]}
            )  # fmt: skip
            return registry.set_canary(nxt, "canary_step", f"{slot.share:.0%} -> {nxt.share:.0%}: {decision.reason}", current=slot)
    except CanaryMoved:
        return None  # an operator (or another trainer) moved it first: the next tick reads the new state
    except (LiveMoved, ValueError, KeyError, IntegrityError, StoreUnavailable) as exc:
        try:
            return registry.set_canary(None, "canary_abort", f"cannot go on: {exc}", current=slot)
        except (CanaryMoved, LiveMoved, ValueError):
            return None
    return None
