"""API replicas' heartbeats: which version each serves and its last load error, for `online status`."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import redis

from online.keys import Keys

FORGET_AFTER_S = 3600.0  # a replica silent this long is gone (its pod crashed or moved), not stale


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

    def leave(self, replica: str) -> None:
        """A replica that stops cleanly: gone from `online status` at once, not listed stale."""
        self.r.hdel(self._key, replica)

    def all(self, forget_after_s: float = FORGET_AFTER_S) -> list[Heartbeat]:
        """Every replica heard from within ``forget_after_s`` (one silent for a while is listed, stale:
        a replica that died); older ones are forgotten here, so restarts (every pod's new name) do not
        pile up in the hash for good."""
        beats = [Heartbeat(replica=name, **json.loads(raw)) for name, raw in sorted(self.r.hgetall(self._key).items())]
        now = time.time()
        gone = [b.replica for b in beats if b.age_s(now) > forget_after_s]
        if gone:
            self.r.hdel(self._key, *gone)
        return [b for b in beats if b.replica not in gone]


async def leave(replicas: Replicas, replica: str) -> None:
    """:meth:`Replicas.leave` from a stopping replica's event loop; Redis away means the entry ages out
    (:data:`FORGET_AFTER_S`) instead: a shutdown never waits on it."""
    try:
        await asyncio.to_thread(replicas.leave, replica)
    except redis.RedisError:
        pass
