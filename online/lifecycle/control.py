"""Operator switches for the trainer, kept in Redis so every trainer process sees them."""

from __future__ import annotations

import json
import time

import redis

from online.keys import Keys


class TrainingControl:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self._paused = keys.trainer_paused

    def pause(self, reason: str = "") -> None:
        """No new round starts until :meth:`resume` (a round already running finishes)."""
        self.r.set(self._paused, json.dumps({"at": time.time(), "reason": reason}))

    def resume(self) -> None:
        self.r.delete(self._paused)

    def paused(self) -> dict | None:
        raw = self.r.get(self._paused)
        return json.loads(raw) if raw else None
