"""A circuit breaker for the serving path's best-effort writes to Redis.

Predictions need no Redis; the prediction log, review queue and shadow counts are side effects. When
Redis is down, even a fail-fast client costs its timeout on every batch, so after one failure the
breaker *opens*: side effects are skipped (and counted as dropped) for ``cooldown_s``, then one batch
tries again. A success closes it. No request ever waits on a Redis that is known to be down.
"""

from __future__ import annotations

import threading
import time


class Breaker:
    def __init__(self, cooldown_s: float = 2.0) -> None:
        self.cooldown_s = cooldown_s
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def allow(self) -> bool:
        """True if a call may go through now (closed, or the cooldown passed: one trial call)."""
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return False
            if self._open_until:  # half-open: let this one try, hold the rest back meanwhile
                self._open_until = now + self.cooldown_s
            return True

    def failed(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self.cooldown_s

    def succeeded(self) -> None:
        with self._lock:
            self._open_until = 0.0
