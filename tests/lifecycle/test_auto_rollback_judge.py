"""Unit tests of the automatic rollback's statistics: the one-sided two-proportion test and the
verdict built on it (no registry, no Redis)."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from online.lifecycle.auto_rollback import Verdict, judge, two_proportion_p_value
from online.monitoring.live_accuracy import VersionAccuracy
from online.settings import Settings


@pytest.fixture
def s() -> Settings:
    return Settings(_env_file=None, auto_rollback_min_samples=50, auto_rollback_alpha=0.01, auto_rollback_min_drop=0.05)


def reference_p(pc: int, pn: int, cc: int, cn: int) -> float:
    """Independent pooled z-test: P(Z >= z) for z = (p_parent - p_child) / se."""
    p1, p2 = pc / pn, cc / cn
    pooled = (pc + cc) / (pn + cn)
    se = math.sqrt(pooled * (1 - pooled) * (1 / pn + 1 / cn))
    return 1 - NormalDist().cdf((p1 - p2) / se)


# --- two_proportion_p_value -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pc", "pn", "cc", "cn"),
    [(90, 100, 80, 100), (450, 500, 400, 480), (30, 60, 35, 60), (700, 1000, 690, 1000)],
)
def test_p_value_matches_pooled_z_test(pc, pn, cc, cn):
    p = two_proportion_p_value(VersionAccuracy(1, pn, pc), VersionAccuracy(2, cn, cc))
    assert p == pytest.approx(reference_p(pc, pn, cc, cn), rel=1e-6)


def test_p_value_known_value():
    # 0.90 vs 0.80 on 100 each: pooled 0.85, se = sqrt(.85 * .15 * .02) = 0.0505, z = 1.980
    p = two_proportion_p_value(VersionAccuracy(1, 100, 90, 9), VersionAccuracy(2, 100, 80, 9))
    assert p == pytest.approx(0.02385, abs=2e-4)


def test_p_value_equal_accuracies_is_one_half():
    assert two_proportion_p_value(VersionAccuracy(1, 100, 70, 9), VersionAccuracy(2, 300, 210, 9)) == pytest.approx(0.5)


def test_p_value_is_one_sided():
    worse = two_proportion_p_value(VersionAccuracy(1, 200, 180, 9), VersionAccuracy(2, 200, 150, 9))
    better = two_proportion_p_value(VersionAccuracy(1, 200, 150, 9), VersionAccuracy(2, 200, 180, 9))
    assert worse < 0.001
    assert better > 0.999
    assert worse + better == pytest.approx(1.0)


def test_p_value_shrinks_with_more_evidence_for_the_same_drop():
    small = two_proportion_p_value(VersionAccuracy(1, 100, 90, 9), VersionAccuracy(2, 100, 85, 9))
    large = two_proportion_p_value(VersionAccuracy(1, 10_000, 9000, 9), VersionAccuracy(2, 10_000, 8500, 9))
    assert large < small


def test_p_value_no_variance_does_not_divide_by_zero():
    assert two_proportion_p_value(VersionAccuracy(1, 50, 50, 9), VersionAccuracy(2, 80, 80, 9)) == 1.0
    assert two_proportion_p_value(VersionAccuracy(1, 50, 0, 9), VersionAccuracy(2, 80, 0, 9)) == 1.0


# --- judge ----------------------------------------------------------------------------------------


def test_too_few_child_samples_does_not_fire(s):
    v = judge(VersionAccuracy(1, 1000, 950, 9), VersionAccuracy(2, 49, 0, 9), s)  # catastrophic, but 49 < 50
    assert v.fire is False
    assert v.p_value is None and v.drop is None
    assert "waiting for 50" in v.reason


def test_too_few_parent_samples_does_not_fire(s):
    v = judge(VersionAccuracy(1, 10, 10, 9), VersionAccuracy(2, 1000, 100, 9), s)
    assert v.fire is False
    assert v.p_value is None


def test_clear_large_drop_fires(s):
    v = judge(VersionAccuracy(1, 200, 180, 9), VersionAccuracy(2, 200, 120, 9), s)  # 0.90 -> 0.60
    assert isinstance(v, Verdict)
    assert v.fire is True
    assert v.drop == pytest.approx(0.30)
    assert v.p_value is not None and v.p_value < 1e-6
    assert "v2 120/200" in v.reason and "parent v1 180/200" in v.reason


def test_exactly_min_samples_is_judged(s):
    v = judge(VersionAccuracy(1, 50, 50, 9), VersionAccuracy(2, 50, 25, 9), s)
    assert v.p_value is not None
    assert v.fire is True


def test_small_significant_drop_below_min_drop_does_not_fire(s):
    parent, child = VersionAccuracy(1, 200_000, 180_000, 9), VersionAccuracy(2, 200_000, 176_000, 9)  # 0.90 -> 0.88
    v = judge(parent, child, s)
    assert v.p_value is not None and v.p_value < s.auto_rollback_alpha  # significant...
    assert v.drop == pytest.approx(0.02)  # ...but smaller than min_drop 0.05
    assert v.fire is False


def test_large_but_insignificant_drop_does_not_fire(s):
    parent, child = VersionAccuracy(1, 50, 45, 9), VersionAccuracy(2, 50, 40, 9)  # 0.90 -> 0.80, p ~ 0.08
    v = judge(parent, child, s)
    assert v.drop == pytest.approx(0.10)
    assert v.p_value is not None and v.p_value > s.auto_rollback_alpha
    assert v.fire is False


def test_improvement_does_not_fire(s):
    v = judge(VersionAccuracy(1, 500, 300, 9), VersionAccuracy(2, 500, 450, 9), s)
    assert v.fire is False
    assert v.drop == pytest.approx(-0.30)
    assert v.p_value is not None and v.p_value > 0.5


def test_min_drop_zero_fires_on_any_significant_drop():
    s = Settings(_env_file=None, auto_rollback_min_samples=50, auto_rollback_alpha=0.01, auto_rollback_min_drop=0.0)
    v = judge(VersionAccuracy(1, 200_000, 180_000, 9), VersionAccuracy(2, 200_000, 176_000, 9), s)
    assert v.fire is True


def test_alpha_decides_borderline_cases():
    parent, child = VersionAccuracy(1, 100, 90, 9), VersionAccuracy(2, 100, 80, 9)  # drop 0.10, p ~ 0.024
    loose = Settings(
        _env_file=None, auto_rollback_min_samples=50, auto_rollback_alpha=0.05, auto_rollback_min_drop=0.05
    )
    strict = Settings(
        _env_file=None, auto_rollback_min_samples=50, auto_rollback_alpha=0.01, auto_rollback_min_drop=0.05
    )
    assert judge(parent, child, loose).fire is True
    assert judge(parent, child, strict).fire is False


def test_judgements_from_too_few_sources_do_not_fire(s):
    """However many predictions one client votes on, one source's judgements are not a verdict."""
    v = judge(VersionAccuracy(1, 200, 200, 1), VersionAccuracy(2, 200, 0, 1), s)
    assert v.fire is False and "3 independent sources" in v.reason
    assert judge(VersionAccuracy(1, 200, 200, 3), VersionAccuracy(2, 200, 0, 2), s).fire is False
    assert judge(VersionAccuracy(1, 200, 200, 3), VersionAccuracy(2, 200, 0, 3), s).fire is True
