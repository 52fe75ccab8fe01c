"""A circuit breaker for the serving path's best-effort writes to Redis.

Predictions need no Redis; the prediction log, review queue, shadow counts and drift snapshots are side
effects. When Redis is down, even a fail-fast client costs its timeout on every batch, so after a
failure the breaker *opens*: side effects are skipped (and counted as dropped) for a cooldown, then one
batch tries again. The cooldown doubles with each failed trial (up to ``max_cooldown_s``); a success
closes the breaker. No request waits on a Redis that is known to be down.

Only the forward thread uses it; the lock keeps it correct if another thread ever does.
"""

from __future__ import annotations

import threading
import time


class Breaker:
    def __init__(self, cooldown_s: float = 1.0, max_cooldown_s: float = 30.0) -> None:
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._failures = 0
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def current_cooldown_s(self) -> float:
        return min(self.cooldown_s * 2 ** max(self._failures - 1, 0), self.max_cooldown_s)

    def allow(self) -> bool:
        """True if a call may go through now (closed, or the cooldown passed: one trial call)."""
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return False
            if self._failures:  # half-open: this call is the trial; hold the rest back meanwhile
                self._open_until = now + self.current_cooldown_s
            return True

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            self._open_until = time.monotonic() + self.current_cooldown_s

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._open_until = 0.0
