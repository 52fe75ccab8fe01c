"""Shadow evaluation: a candidate answers a share of live traffic next to the live version; its answers
are logged, never returned. Agreement with live is counted per request; feedback that later arrives for
those requests judges both, on the same requests, so their accuracies compare fairly."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from online.keys import Keys
from online.monitoring.live_accuracy import Judgement, LiveAccuracy


@dataclass(frozen=True)
class ShadowStats:
    version: int
    requests: int
    agreed: int
    judged: int
    shadow_correct: int
    live_correct: int
    sources: int = 0  # distinct origins that judged shadowed requests (approximate)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.requests if self.requests else None

    @property
    def shadow_accuracy(self) -> float | None:
        return self.shadow_correct / self.judged if self.judged else None

    @property
    def live_accuracy(self) -> float | None:
        return self.live_correct / self.judged if self.judged else None


class ShadowLedger:
    def __init__(self, client: redis.Redis, keys: Keys, dedup_ttl_s: int) -> None:
        self.r = client
        self.p = keys.shadow
        # Judgements keyed by the *shadow* version: how the shadow did, and how live did on the same requests.
        self.shadow_acc = LiveAccuracy(client, keys.shadow_candidate_accuracy, dedup_ttl_s)
        self.live_acc = LiveAccuracy(client, keys.shadow_live_accuracy, dedup_ttl_s)

    def count(self, version: int, requests: int, agreed: int) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hincrby(f"{self.p}:{version}", "requests", requests)
            pipe.hincrby(f"{self.p}:{version}", "agreed", agreed)
            pipe.execute()

    def judge(self, shadow: list[Judgement], live: list[Judgement]) -> None:
        """Both lists are keyed by the shadow version (one entry per judged shadowed request). Live's side
        is written first: ``stats().judged`` counts the shadow's side, so a reader that sees a request
        judged also sees live's judgement of it (no half-judged request shows live at 0)."""
        self.live_acc.record(live)
        self.shadow_acc.record(shadow)

    def stats(self, version: int) -> ShadowStats:
        h = self.r.hgetall(f"{self.p}:{version}")
        s, lv = self.shadow_acc.get(version), self.live_acc.get(version)
        return ShadowStats(
            version, int(h.get("requests", 0)), int(h.get("agreed", 0)), s.n, s.correct, lv.correct, s.sources
        )


def verdict(stats: ShadowStats, settings) -> tuple[bool | None, str]:
    """(True: promote, False: end the shadow, None: keep watching) and why."""
    if stats.requests < settings.shadow_min_requests:
        return None, f"{stats.requests}/{settings.shadow_min_requests} shadowed requests"
    why = f"agreement {stats.agreement:.3f} on {stats.requests} requests"
    if stats.agreement < settings.shadow_min_agreement:
        return False, why + f" < {settings.shadow_min_agreement}"
    if stats.judged >= settings.shadow_min_judged and stats.sources < settings.verdict_min_sources:
        # judged enough, but by too few independent sources: one client's votes are not evidence
        why += f"; accuracy not counted: {stats.judged} judged by {stats.sources} of {settings.verdict_min_sources} sources"
    elif stats.judged >= settings.shadow_min_judged:
        why += (
            f"; accuracy on {stats.judged} judged: shadow {stats.shadow_accuracy:.3f}, live {stats.live_accuracy:.3f}"
        )
        if stats.shadow_accuracy < stats.live_accuracy - settings.shadow_max_accuracy_drop:
            return False, why
    return True, why
