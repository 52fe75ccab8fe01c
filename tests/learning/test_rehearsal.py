"""Rehearsal strategies pick from the pool only, the number asked, and balance labels where promised."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from online.examples import class_quotas
from online.learning.rehearsal import STRATEGIES, strategy

POOL = [(f"text {i} of {lab}", lab) for lab, n in (("a", 40), ("b", 40), ("c", 5), ("d", 40)) for i in range(n)]
NEW = [(f"new text {i}", "e") for i in range(10)]


def embed(texts: list[str]) -> np.ndarray:
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=16) for t in texts])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_picks_k_distinct_pool_examples(name):
    picked = strategy(name).select(POOL, 40, random.Random(0), embed, NEW)
    assert len(picked) == 40 and len(set(picked)) == 40 and set(picked) <= set(POOL)


def test_balanced_gives_every_label_its_share_and_passes_on_what_a_small_label_lacks():
    counts = Counter(lab for _, lab in strategy("balanced").select(POOL, 40, random.Random(0)))
    assert counts["c"] == 5 and counts["a"] + counts["b"] + counts["d"] == 35 and max(counts.values()) <= 12
    assert class_quotas({"a": 3, "b": 10}, 8) == {"a": 3, "b": 5}


def test_strategies_that_search_embeddings_need_an_embedding_function():
    with pytest.raises(ValueError, match="embedding function"):
        strategy("diverse").select(POOL, 10, random.Random(0))
    with pytest.raises(ValueError, match="unknown rehearsal strategy"):
        strategy("nope")
