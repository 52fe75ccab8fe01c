"""Automatic rollback: take back a freshly promoted version that live feedback shows is worse.

Live accuracy per version comes from feedback on each version's own predictions (``LiveAccuracy``). A
version promoted by a round (not one made live by a rollback) within the last ``window`` is compared
with its parent by a one-sided two-proportion z-test; with at least ``min_samples`` judgements on each
(a judgement counts once per prediction), from at least ``verdict_min_sources`` distinct origins on each
(so one client, however many predictions it votes on, cannot decide), a p-value under ``alpha`` and a
drop of at least ``min_drop``, live goes back to the parent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from online.lifecycle import promotion
from online.lifecycle.registry import IntegrityError, LiveChange, LiveMoved, ModelRegistry
from online.monitoring.live_accuracy import LiveAccuracy, VersionAccuracy
from online.settings import Settings


@dataclass(frozen=True)
class Verdict:
    fire: bool
    reason: str
    p_value: float | None = None
    drop: float | None = None


def two_proportion_p_value(parent: VersionAccuracy, child: VersionAccuracy) -> float:
    """One-sided p-value of "child's accuracy is lower than parent's" (pooled z-test)."""
    p1, p2 = parent.correct / parent.n, child.correct / child.n
    pooled = (parent.correct + child.correct) / (parent.n + child.n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / parent.n + 1 / child.n))
    if se == 0:
        return 1.0 if p2 >= p1 else 0.0
    z = (p1 - p2) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def judge(parent: VersionAccuracy, child: VersionAccuracy, settings: Settings) -> Verdict:
    need = settings.auto_rollback_min_samples
    if parent.n < need or child.n < need:
        return Verdict(
            False, f"waiting for {need} judgements each (v{parent.version}: {parent.n}, v{child.version}: {child.n})"
        )
    sources = settings.verdict_min_sources
    if parent.sources < sources or child.sources < sources:
        return Verdict(
            False,
            f"waiting for judgements from {sources} independent sources each "
            f"(v{parent.version}: {parent.sources}, v{child.version}: {child.sources})",
        )
    p_value = two_proportion_p_value(parent, child)
    drop = parent.correct / parent.n - child.correct / child.n
    fire = p_value < settings.auto_rollback_alpha and drop >= settings.auto_rollback_min_drop
    reason = (
        f"live accuracy v{child.version} {child.correct}/{child.n} vs parent v{parent.version} "
        f"{parent.correct}/{parent.n}: drop {drop:+.3f}, one-sided p={p_value:.2g}"
    )
    return Verdict(fire, reason, p_value, drop)


def check(registry: ModelRegistry, live_accuracy: LiveAccuracy, settings: Settings) -> LiveChange | None:
    """Roll back the live version if it qualifies; returns the change made, if any."""
    if not settings.auto_rollback:
        return None
    live = registry.live()
    last = registry.last_change()
    if live is None or last is None or last.version != live or last.action != "promote":
        return None
    if time.time() - last.at > settings.auto_rollback_window_s:
        return None
    parent = registry.get(live).parent
    if parent is None:
        return None
    verdict = judge(live_accuracy.get(parent), live_accuracy.get(live), settings)
    if not verdict.fire:
        return None
    try:
        return promotion.promote(registry, parent, verdict.reason, expect_live=live, action="auto_rollback")
    except (LiveMoved, ValueError, IntegrityError):
        return None  # someone else moved live meanwhile, or the parent can no longer be live
