"""API replicas' heartbeats: which version each serves and its last load error, for `online status`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from online.keys import Keys


@dataclass(frozen=True)
class Heartbeat:
    replica: str
    version: int | None
    at: float
    last_load_error: str | None = None
    memory: dict[str, int] | None = None  # correction memory by state, answers by source (None: off)
    engine: str | None = None  # what runs the live version's forward: onnx-int8, torch-bf16, ...

    def age_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.at


class Replicas:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self._key = keys.replicas

    def beat(self, beat: Heartbeat) -> None:
        entry = {
            "version": beat.version,
            "at": beat.at,
            "last_load_error": beat.last_load_error,
            "memory": beat.memory,
            "engine": beat.engine,
        }
        self.r.hset(self._key, beat.replica, json.dumps(entry))

    def all(self) -> list[Heartbeat]:
        rows = sorted(self.r.hgetall(self._key).items())
        return [Heartbeat(replica=name, **json.loads(raw)) for name, raw in rows]
