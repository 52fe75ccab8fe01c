"""Leader election with a Redis lock that expires: two trainers never train at once, and a dead
trainer's lock lapses after ``ttl_s`` so another can take over."""

from __future__ import annotations

import threading

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock


class LeadershipLost(RuntimeError):
    """The lock is no longer ours: whatever the holder was about to write must not be written."""


class Leadership:
    """Hold the lock while the block runs, renewing it from a background thread.

    The renewal thread notices a lost lock within a third of the TTL; writers that must not happen
    without leadership call :meth:`fence` right before writing, which re-extends the lock only if it is
    still ours (one atomic script) and raises :class:`LeadershipLost` otherwise. A passing fence leaves
    at least ``ttl_s`` of ownership for the write that follows."""

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

    def fence(self) -> None:
        """Raise :class:`LeadershipLost` unless the lock is still ours (and extend it if it is)."""
        if self.lost.is_set():
            raise LeadershipLost("leadership was lost")
        try:
            self._lock.reacquire()
        except LockNotOwnedError as exc:
            self.lost.set()
            raise LeadershipLost("the leader lock is no longer ours") from exc
        except redis.RedisError as exc:  # cannot tell: a write now could race a new leader
            raise LeadershipLost(f"leadership cannot be confirmed: {exc}") from exc

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
