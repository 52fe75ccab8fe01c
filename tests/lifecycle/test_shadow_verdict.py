"""Unit tests of the shadow evaluation's promotion verdict (no Redis: stats built by hand)."""

from __future__ import annotations

import pytest

from online.lifecycle.shadow import ShadowStats, verdict
from online.settings import Settings


@pytest.fixture
def s() -> Settings:
    return Settings(
        _env_file=None,
        shadow_min_requests=100,
        shadow_min_agreement=0.8,
        shadow_min_judged=20,
        shadow_max_accuracy_drop=0.05,
    )


def stats(
    requests: int, agreed: int, judged: int = 0, shadow_correct: int = 0, live_correct: int = 0, sources: int = 9
) -> ShadowStats:
    return ShadowStats(7, requests, agreed, judged, shadow_correct, live_correct, sources)


def test_stats_properties():
    st = stats(200, 150, 40, 30, 36)
    assert st.agreement == pytest.approx(0.75)
    assert st.shadow_accuracy == pytest.approx(0.75)
    assert st.live_accuracy == pytest.approx(0.9)
    empty = stats(0, 0)
    assert empty.agreement is None and empty.shadow_accuracy is None and empty.live_accuracy is None


def test_not_enough_requests_keeps_watching(s):
    ok, why = verdict(stats(99, 99), s)
    assert ok is None
    assert "99/100" in why


def test_no_requests_at_all_keeps_watching(s):
    ok, _ = verdict(stats(0, 0), s)
    assert ok is None


def test_not_enough_requests_even_with_terrible_agreement(s):
    ok, _ = verdict(stats(50, 0, judged=50, shadow_correct=0, live_correct=50), s)
    assert ok is None


def test_enough_requests_and_agreement_promotes(s):
    ok, why = verdict(stats(100, 95), s)
    assert ok is True
    assert "agreement 0.950 on 100 requests" in why


def test_low_agreement_ends_the_shadow(s):
    ok, why = verdict(stats(500, 350), s)  # 0.70 < 0.8
    assert ok is False
    assert "< 0.8" in why


def test_agreement_exactly_at_minimum_is_enough(s):
    ok, _ = verdict(stats(100, 80), s)
    assert ok is True


def test_low_agreement_fails_even_if_shadow_is_more_accurate(s):
    ok, _ = verdict(stats(500, 300, judged=100, shadow_correct=100, live_correct=50), s)
    assert ok is False


def test_judged_accuracy_drop_beyond_limit_ends_the_shadow(s):
    # shadow 0.80 vs live 0.90: a 0.10 drop > 0.05 allowed
    ok, why = verdict(stats(500, 450, judged=100, shadow_correct=80, live_correct=90), s)
    assert ok is False
    assert "shadow 0.800, live 0.900" in why


def test_judged_accuracy_drop_within_limit_promotes(s):
    # shadow 0.87 vs live 0.90: a 0.03 drop <= 0.05 allowed
    ok, why = verdict(stats(500, 450, judged=100, shadow_correct=87, live_correct=90), s)
    assert ok is True
    assert "accuracy on 100 judged" in why


def test_shadow_better_than_live_promotes(s):
    ok, _ = verdict(stats(500, 450, judged=100, shadow_correct=95, live_correct=80), s)
    assert ok is True


def test_accuracy_ignored_below_min_judged(s):
    # A huge drop, but on 19 < 20 judged requests: too few to count.
    ok, why = verdict(stats(500, 450, judged=19, shadow_correct=0, live_correct=19), s)
    assert ok is True
    assert "judged" not in why


def test_accuracy_counts_at_exactly_min_judged(s):
    ok, _ = verdict(stats(500, 450, judged=20, shadow_correct=10, live_correct=20), s)
    assert ok is False


def test_zero_allowed_drop_rejects_any_loss():
    strict = Settings(
        _env_file=None,
        shadow_min_requests=10,
        shadow_min_agreement=0.5,
        shadow_min_judged=10,
        shadow_max_accuracy_drop=0.0,
    )
    assert verdict(stats(100, 90, judged=100, shadow_correct=89, live_correct=90), strict)[0] is False
    assert verdict(stats(100, 90, judged=100, shadow_correct=90, live_correct=90), strict)[0] is True


def test_judgements_of_too_few_sources_do_not_count(s):
    """One client voting on many shadowed requests cannot end a shadow: its accuracy is not counted."""
    ok, why = verdict(stats(500, 450, judged=100, shadow_correct=0, live_correct=100, sources=1), s)
    assert ok is True and "1 of 3 sources" in why
    ok, _ = verdict(stats(500, 450, judged=100, shadow_correct=0, live_correct=100, sources=3), s)
    assert ok is False
