"""The drift hook's sample at high rates: whole hand-overs, one nearest-neighbour search each."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from online.sampling import RateSampler
from online.serving.forward import Batch, DriftHook


class CountingWindow:
    """A drift window that records its searches and the batches it observed."""

    version = 1

    def __init__(self) -> None:
        self.searches: list[int] = []  # texts per distances() call
        self.observed: list[np.ndarray | None] = []

    def distances(self, emb: np.ndarray) -> np.ndarray:
        self.searches.append(len(emb))
        return np.full(len(emb), 0.5)

    def observe(self, version: int, probs: np.ndarray, emb: np.ndarray, dist: np.ndarray | None) -> np.ndarray | None:
        self.observed.append(dist)
        return dist


def batch(n: int, version: int = 1) -> Batch:
    probs, emb = torch.full((n, 3), 1 / 3), torch.zeros(n, 4)
    b = Batch(SimpleNamespace(version=version), ["t"] * n, [], [], probs, emb)  # type: ignore[arg-type]
    b.probs_np, b.embeddings_np = probs.numpy(), emb.numpy()
    return b


def test_above_the_budget_a_hand_over_is_searched_whole_in_one_call_or_left_out_whole():
    window = CountingWindow()
    hook = DriftHook(window, max_texts_per_s=10)  # type: ignore[arg-type]
    now = [50.0]
    hook.sampler = RateSampler(10, at_random=True, clock=lambda: now[0])
    hand_overs = []
    for second in range(6):  # 60 texts a second, in hand-overs of three batches: 6x the budget
        now[0] = 50.0 + second
        for _ in range(4):
            batches = [batch(5), batch(5), batch(5)]
            hook.after(batches)
            hand_overs.append(batches)
    kept = [h for h in hand_overs if h[0].distances is not None]
    assert 0 < len(kept) < len(hand_overs)
    for h in hand_overs:  # all of a hand-over or none of it
        assert len({b.distances is None for b in h}) == 1
    assert window.searches == [15] * len(kept)  # one search a kept hand-over, over all its texts
    assert len(window.observed) == 3 * len(kept)


def test_batches_of_an_older_version_are_left_out_and_the_rest_searched():
    window = CountingWindow()
    hook = DriftHook(window, max_texts_per_s=0)  # type: ignore[arg-type]
    old, new = batch(4, version=0), batch(6)
    hook.after([old, new])
    assert window.searches == [6]
    assert old.distances is None and new.distances is not None and len(new.distances) == 6
