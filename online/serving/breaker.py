"""A circuit breaker per dependency of an API replica (Redis, the broker), which is also its health.

Predictions need neither server. When one is down, even a fail-fast client costs its timeout on every
call, so after a failure the breaker *opens*: callers skip the dependency (side effects are dropped and
counted, feedback is answered 503 at once) for a cooldown, then one call tries again. The cooldown
doubles with each failed trial (up to ``max_cooldown_s``); any success closes the breaker.

The breaker is also the one place an outage is logged: one WARNING when it starts (with what the replica
does meanwhile), a reminder every ``remind_s`` while it lasts, one INFO when it ends, instead of a line
per request. ``/readyz`` reports :meth:`state` under ``dependencies``; ``online_dependency_up`` follows it.

Thread-safe: the forward thread, the feedback intake's worker threads and the event loop share one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger("online.serving.dependencies")


class Breaker:
    def __init__(
        self,
        name: str = "redis",
        meanwhile: str = "",
        on_change: Callable[[bool], None] | None = None,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 30.0,
        remind_s: float = 60.0,
    ) -> None:
        self.name = name
        self.meanwhile = meanwhile
        self.on_change = on_change
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.remind_s = remind_s
        self._failures = 0
        self._open_until = 0.0
        self._down_since: float | None = None
        self._reminded = 0.0
        self._last_error = ""
        self._lock = threading.Lock()
        if on_change:
            on_change(True)

    @property
    def current_cooldown_s(self) -> float:
        return min(self.cooldown_s * 2 ** max(self._failures - 1, 0), self.max_cooldown_s)

    @property
    def up(self) -> bool:
        return self._failures == 0

    def allow(self) -> bool:
        """True if a call may go through now (closed, or the cooldown passed: one trial call)."""
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return False
            if self._failures:  # half-open: this call is the trial; hold the rest back meanwhile
                self._open_until = now + self.current_cooldown_s
            return True

    def refusing(self) -> bool:
        """True while open (a call now would be refused). Unlike :meth:`allow` it claims no trial call:
        for skipping work whose Redis write is made later, by a caller that then asks :meth:`allow`."""
        return time.monotonic() < self._open_until

    def retry_after_s(self) -> int:
        """Whole seconds until the next trial call (at least 1): a client's ``Retry-After``."""
        with self._lock:
            return max(1, math.ceil(self._open_until - time.monotonic()))

    def failed(self, exc: BaseException | str = "") -> None:
        with self._lock:
            now = time.monotonic()
            self._failures += 1
            self._open_until = now + self.current_cooldown_s
            self._last_error = repr(exc) if isinstance(exc, BaseException) else exc
            started = self._down_since is None
            if started:
                self._down_since = self._reminded = now
            elif now - self._reminded >= self.remind_s:
                self._reminded = now
                log.warning(
                    "%s still unreachable after %.0f s (%d failed calls; last: %s)",
                    self.name, now - self._down_since, self._failures, self._last_error,
                )  # fmt: skip
            if started and self.on_change:
                self.on_change(False)  # under the lock: the gauge ends as the state does
        if started:
            log.warning("%s unreachable (%s): %s", self.name, self._last_error, self.meanwhile or "calls skipped")

    def succeeded(self) -> None:
        with self._lock:
            down_since, self._down_since = self._down_since, None
            self._failures = 0
            self._open_until = 0.0
            self._last_error = ""  # /readyz shows an error only while it is current
            if down_since is not None and self.on_change:
                self.on_change(True)
        if down_since is not None:
            log.info("%s reachable again after %.1f s", self.name, time.monotonic() - down_since)

    def state(self) -> dict:
        """For ``/readyz``: up or not, since when, and the last error."""
        with self._lock:
            now = time.monotonic()
            return {
                "up": self._down_since is None,
                "down_for_s": None if self._down_since is None else round(now - self._down_since, 1),
                "failed_calls": self._failures,
                "last_error": self._last_error or None,
                "next_try_in_s": round(max(self._open_until - now, 0.0), 1) if self._failures else None,
            }
