"""Leader election with a Redis lock that expires: two trainers never train at once, and a dead
trainer's lock lapses after ``ttl_s`` so another can take over."""

from __future__ import annotations

import threading

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock


class Leadership:
    """Hold the lock while the block runs, renewing it from a background thread."""

    def __init__(self, client: redis.Redis, name: str, ttl_s: float = 30.0) -> None:
        self._lock: Lock = client.lock(name, timeout=ttl_s, thread_local=False)
        self._ttl = ttl_s
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = threading.Event()

    def acquire(self, wait_s: float | None = 0) -> bool:
        if not self._lock.acquire(blocking=wait_s != 0, blocking_timeout=wait_s):
            return False
        self._stop.clear()
        self.lost.clear()
        self._renewer = threading.Thread(target=self._renew, name="leader-renew", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        """``reacquire`` returns True or raises: ``LockNotOwnedError`` when the lock expired or another
        trainer holds it (leadership is lost), another ``RedisError`` while Redis is unreachable."""
        while not self._stop.wait(self._ttl / 3):
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                self.lost.set()
                return
            except redis.RedisError:
                continue  # Redis restarting: the lock may lapse; the next turn tells us
            except Exception:  # anything else: assume the worst, stop leading
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        try:
            self._lock.release()
        except Exception:
            pass  # expired or taken over: nothing of ours to release

    def __enter__(self) -> "Leadership":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
