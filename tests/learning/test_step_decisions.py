"""Unit tests of a round's data decisions: the holdout split, the rehearsal size and how often new
examples repeat. Pure functions: no model is built."""

from __future__ import annotations

import math
import random

import pytest

from online.learning.step import LearnConfig, new_repeats, rehearsal_size, split_holdout
from online.settings import Settings


@pytest.fixture(scope="module")
def base() -> LearnConfig:
    return LearnConfig.from_settings(Settings(_env_file=None)).but(
        rehearsal_ratio=1.0, rehearsal_min=256, new_share_min=0.5, max_repeats=8
    )


def examples(n: int, labels: int = 5, prefix: str = "text") -> list[tuple[str, str]]:
    return [(f"{prefix} number {i}", f"label_{i % labels}") for i in range(n)]


# --- LearnConfig ------------------------------------------------------------------------------------


def test_from_settings_maps_settings_fields():
    s = Settings(
        _env_file=None,
        train_mode="lora",
        rehearsal_strategy="interfered",
        bias_correction="head-finetune",
        probe_first=False,
        rehearsal_ratio=0.5,
        rehearsal_min=7,
        new_share_min=0.25,
        distill_weight=0.3,
        train_epochs=3,
        train_batch_size=16,
        learning_rate=1e-4,
        head_learning_rate=1e-3,
        max_seq_len=32,
        device="cpu",
        seed=42,
    )
    c = LearnConfig.from_settings(s)
    assert (c.mode, c.strategy, c.rehearsal_ratio, c.rehearsal_min, c.new_share_min) == (
        "lora",
        "interfered",
        0.5,
        7,
        0.25,
    )
    assert (c.distill_weight, c.epochs, c.batch_size, c.lr, c.head_lr) == (0.3, 3, 16, 1e-4, 1e-3)
    assert (c.max_seq_len, c.device, c.seed) == (32, "cpu", 42)
    assert (c.bias_correction, c.probe_first) == ("head-finetune", False)


def test_but_returns_a_changed_copy(base):
    other = base.but(max_repeats=3, rehearsal_min=0)
    assert other.max_repeats == 3 and other.rehearsal_min == 0
    assert base.max_repeats == 8 and base.rehearsal_min == 256
    assert other.but(max_repeats=8, rehearsal_min=256) == base


# --- rehearsal_size ---------------------------------------------------------------------------------


def test_rehearsal_size_at_least_minimum(base):
    assert rehearsal_size(20, base) == 256
    assert rehearsal_size(0, base) == 256


def test_rehearsal_size_follows_ratio_above_minimum(base):
    assert rehearsal_size(1000, base) == 1000
    assert rehearsal_size(1000, base.but(rehearsal_ratio=0.5)) == 500
    assert rehearsal_size(1001, base.but(rehearsal_ratio=0.5, rehearsal_min=0)) == round(500.5)


def test_rehearsal_off_when_ratio_zero_despite_minimum(base):
    assert rehearsal_size(1000, base.but(rehearsal_ratio=0.0, rehearsal_min=256)) == 0


# --- new_repeats ------------------------------------------------------------------------------------


def test_repeats_reach_the_wanted_share(base):
    # 100 new beside 256 rehearsed at share 0.5: 256 new wanted -> ceil(2.56) = 3 repeats
    assert new_repeats(100, 256, base) == 3
    # at share 0.25: 256/3 = 85.3 wanted -> 1 repeat of 100 is enough
    assert new_repeats(100, 256, base.but(new_share_min=0.25)) == 1
    # at share 0.75: 768 wanted -> ceil(7.68) = 8
    assert new_repeats(100, 256, base.but(new_share_min=0.75)) == 8


@pytest.mark.parametrize("n_new", [1, 7, 20, 33, 64, 100, 255, 256, 1000])
@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_repeats_bounded_and_share_reached_unless_capped(base, n_new, share):
    cfg = base.but(new_share_min=share)
    n_rehearsal = 256
    r = new_repeats(n_new, n_rehearsal, cfg)
    assert 1 <= r <= cfg.max_repeats
    achieved = r * n_new / (r * n_new + n_rehearsal)
    if r < cfg.max_repeats:
        assert achieved >= share - 1e-9
        if r > 1:  # and no more repeats than needed
            assert (r - 1) * n_new / ((r - 1) * n_new + n_rehearsal) < share


def test_repeats_capped_at_max_repeats(base):
    assert new_repeats(20, 256, base) == 8  # would need ceil(12.8) = 13
    assert new_repeats(1, 10_000, base) == 8
    assert new_repeats(20, 256, base.but(max_repeats=3)) == 3
    assert new_repeats(20, 256, base.but(max_repeats=20)) == 13


def test_repeats_one_without_new_examples(base):
    assert new_repeats(0, 256, base) == 1


def test_repeats_one_when_share_off(base):
    assert new_repeats(5, 256, base.but(new_share_min=0.0)) == 1
    assert new_repeats(5, 256, base.but(new_share_min=-0.1)) == 1


def test_repeats_one_without_rehearsal(base):
    assert new_repeats(50, 0, base) == 1


def test_repeats_one_when_new_already_dominate(base):
    assert new_repeats(5000, 256, base) == 1


# --- split_holdout ----------------------------------------------------------------------------------


def test_no_holdout_below_minimum():
    new = examples(49)
    train, holdout = split_holdout(new, 0.5, 50)
    assert holdout == []
    assert train == new


def test_no_holdout_when_fraction_zero():
    new = examples(500)
    train, holdout = split_holdout(new, 0.0, 1)
    assert holdout == [] and train == new


def test_split_at_exactly_minimum():
    train, holdout = split_holdout(examples(50), 0.5, 50)
    assert holdout  # 50 is not below the minimum of 50
    assert len(train) + len(holdout) == 50


def test_split_is_a_partition():
    new = examples(300)
    train, holdout = split_holdout(new, 0.2, 10)
    assert sorted(train + holdout) == sorted(new)
    assert not set(train) & set(holdout)


def test_split_is_stable_and_order_independent():
    new = examples(400)
    first = split_holdout(new, 0.1, 10)
    assert split_holdout(list(new), 0.1, 10) == first
    shuffled = list(new)
    random.Random(3).shuffle(shuffled)
    train, holdout = split_holdout(shuffled, 0.1, 10)
    assert sorted(holdout) == sorted(first[1])
    assert sorted(train) == sorted(first[0])


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_holdout_size_tracks_fraction(fraction):
    n = 4000
    _, holdout = split_holdout(examples(n, labels=20), fraction, 10)
    sd = math.sqrt(n * fraction * (1 - fraction))
    assert abs(len(holdout) - n * fraction) < 5 * sd + 20  # 20: the per-label first training example


def test_larger_fraction_holds_out_a_superset():
    new = examples(1000)
    _, small = split_holdout(new, 0.1, 10)
    _, large = split_holdout(new, 0.3, 10)
    assert set(small) < set(large)


def test_more_feedback_never_moves_a_held_out_example_into_training():
    """Held out by text hash: examples held out in a round stay held out when the set grows."""
    first = examples(300)
    _, held = split_holdout(first, 0.2, 10)
    _, held_more = split_holdout(first + examples(300, prefix="later"), 0.2, 10)
    assert held
    assert set(held) <= set(held_more)


def test_every_label_keeps_a_training_example():
    new = examples(600, labels=30)
    train, holdout = split_holdout(new, 0.95, 10)
    assert holdout
    assert {lab for _, lab in train} == {lab for _, lab in new}


def test_single_example_label_is_never_held_out():
    new = examples(200, labels=4) + [("the only example of a brand new intent", "brand_new")]
    for fraction in (0.1, 0.5, 0.9):
        train, holdout = split_holdout(new, fraction, 10)
        assert ("the only example of a brand new intent", "brand_new") in train
        assert all(lab != "brand_new" for _, lab in holdout)
