"""Accepted feedback events per minute, shared by every API replica (a drift signal: a flood or a
silence of feedback is worth an operator's look)."""

from __future__ import annotations

import time

import redis

from online.keys import Keys


class FeedbackVolume:
    def __init__(self, client: redis.Redis, keys: Keys, keep_s: int = 2 * 24 * 3600) -> None:
        self.r = client
        self.p = keys.feedback_volume
        self.keep_s = keep_s

    def add(self, n: int, at: float | None = None) -> None:
        key = f"{self.p}:{int((at or time.time()) // 60)}"
        with self.r.pipeline(transaction=False) as pipe:
            pipe.incrby(key, n)
            pipe.expire(key, self.keep_s)
            pipe.execute()

    def per_minute(self, minutes: int = 60, now: float | None = None) -> list[tuple[int, int]]:
        """(epoch minute, events) for the last ``minutes`` minutes, oldest first, zeros included."""
        last = int((now or time.time()) // 60)
        keys = [f"{self.p}:{m}" for m in range(last - minutes + 1, last + 1)]
        values = self.r.mget(keys)
        return [(last - minutes + 1 + i, int(v or 0)) for i, v in enumerate(values)]
