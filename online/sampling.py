"""Rate-bounded sampling: at most about ``max_per_s`` events a second kept, the rest skipped.

What a replica does per request beyond answering it (an access-log line, the drift window's nearest-
neighbour search) costs CPU per request; at high rates a uniform sample says as much about the traffic
as every request does, at a bounded cost. 1 in k events is kept, k from the previous second's rate, so
below ``max_per_s`` every event is kept and each kept one stands for k (counts stay reconstructible).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable


class RateSampler:
    """``at_random``: each call kept with probability 1/k instead of every k-th one. Batches of a
    replica's lanes alternate between groups of clients: every k-th batch could be the same group's."""

    def __init__(self, max_per_s: float, at_random: bool = False, clock: Callable[[], float] | None = None) -> None:
        self.max_per_s = max_per_s  # 0: keep every event
        self.clock = clock or time.monotonic  # looked up now, not when this module loaded
        self._random = random.Random() if at_random else None
        self._second = 0  # the current whole second (monotonic)
        self._seen = 0  # weight seen in it (events, or the texts of batches)
        self._calls = 0  # calls in it
        self._every = 1  # keep 1 call in this many (from the previous second's rate)

    def take(self, weight: int = 1) -> int | None:
        """k for an event kept to stand for k, None for one not kept. ``weight``: the events it holds
        (a batch of texts): whole batches are kept, 1 in k, k from the texts of the previous second."""
        if not self.max_per_s:
            return 1
        now = int(self.clock())
        if now != self._second:
            rate = self._seen if now == self._second + 1 else 0  # an idle gap: back to every event
            self._every = max(1, math.ceil(rate / self.max_per_s))
            self._second, self._seen, self._calls = now, 0, 0
        self._seen += weight
        self._calls += 1
        if self._random is not None:
            return self._every if self._random.random() * self._every < 1 else None
        return self._every if self._calls % self._every == 0 else None
