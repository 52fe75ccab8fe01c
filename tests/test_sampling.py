"""Rate-bounded sampling (the access log's lines, the drift window's batches)."""

from __future__ import annotations

import pytest

from online.sampling import RateSampler


@pytest.fixture
def clock():
    return [100.0]


def test_below_the_budget_everything_is_kept_above_it_one_in_k(clock):
    s = RateSampler(max_per_s=100, clock=lambda: clock[0])
    assert all(s.take() == 1 for _ in range(50))  # the first second: no rate known yet
    clock[0] += 1
    assert all(s.take() == 1 for _ in range(400))  # the previous second had 50: under budget
    clock[0] += 1
    kept = [k for k in (s.take() for _ in range(400)) if k is not None]
    assert kept == [4] * 100  # 400 the second before: 1 in 4, each standing for 4


def test_batches_are_kept_whole_at_the_rate_of_their_texts(clock):
    s = RateSampler(max_per_s=200, clock=lambda: clock[0])
    for _ in range(60):
        s.take(16)  # 960 texts in this second
    clock[0] += 1
    kept = [s.take(16) for _ in range(60)]
    assert sum(k is not None for k in kept) == 12 and set(kept) == {None, 5}  # 1 batch in 5: 192 texts


def test_random_sampling_keeps_about_one_in_k_and_not_every_kth(clock):
    s = RateSampler(max_per_s=200, at_random=True, clock=lambda: clock[0])
    for _ in range(60):
        s.take(16)
    clock[0] += 1
    kept = [i for i in range(6000) if s.take(16) is not None]  # 1 in 5, at random
    assert 1000 < len(kept) < 1400
    assert {k % 5 for k in kept} == set(range(5))  # not always the same place in a cycle of batches


def test_an_idle_gap_and_a_zero_budget_keep_everything(clock):
    s = RateSampler(max_per_s=10, clock=lambda: clock[0])
    for _ in range(100):
        s.take()
    clock[0] += 5  # no events for seconds: the old rate no longer holds
    assert s.take() == 1
    assert all(RateSampler(0).take(32) == 1 for _ in range(100))
