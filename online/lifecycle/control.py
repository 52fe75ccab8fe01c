"""Operator switches for the trainer, kept in Redis so every trainer process sees them."""

from __future__ import annotations

import json
import time

import redis

from online.contract import TrainingState
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

    def state(self) -> TrainingState:
        """Whether training is paused, since when and why."""
        raw = self.r.get(self._paused)
        if not raw:
            return TrainingState(paused=False)
        stored = json.loads(raw)
        return TrainingState(paused=True, paused_at=stored.get("at"), reason=stored.get("reason", ""))

    def paused(self) -> bool:
        return bool(self.r.exists(self._paused))
