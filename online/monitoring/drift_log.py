"""Drift window snapshots in Redis: written by each API replica, read by every front end."""

from __future__ import annotations

import json

import redis

from online.keys import Keys


class DriftLog:
    """Window snapshots in Redis: each replica's latest, and a capped history of all."""

    def __init__(self, client: redis.Redis, keys: Keys, history: int) -> None:
        self.r = client
        self._history = keys.drift_history
        self._snapshots = keys.drift_replicas
        self._keep = history

    def write(self, replica: str, snapshot: dict) -> None:
        record = json.dumps({k: v for k, v in snapshot.items() if k != "label_counts"}, default=float)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.rpush(self._history, record)
            pipe.ltrim(self._history, -self._keep, -1)
            pipe.hset(self._snapshots, replica, json.dumps(snapshot, default=float))
            pipe.execute()

    def snapshots(self) -> list[dict]:
        return [json.loads(v) for v in self.r.hvals(self._snapshots)]

    def history(self, n: int) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(self._history, -n, -1)]
