"""An API replica follows the registry: the live version it serves, the shadow it evaluates and the
canary it serves to a share of users.

Pub/sub on the registry's channel wakes the follower at once; the same loop's timeout makes it a
polling fallback, so a replica that missed a message (or lost Redis for a while) still converges. A new
version is verified (sha256 once per file it loads, on a low-priority thread so the forward thread keeps
its core), its engine opened (the int8 session on another thread, at normal priority unless the replica
has one thread; torch weights on the forward thread), warmed up on the forward thread one small batch at a time between live batches, then swapped in with
one reference assignment: a request keeps the predictor it started with.

A version that fails to load is retried with exponential backoff from ``model_poll_s`` (live and shadow alike), never in a hot loop;
after ``LOAD_MAX_FAILURES`` tries it is marked given up (``/readyz`` ``failed_loads``) and retried only
every ``MAX_BACKOFF_S``, until the registry names another version.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
import torch

from online.contract import CanarySlot, ShadowSlot
from online.engines import INT8_FILE, cpu_threads
from online.lifecycle.registry import IntegrityError, Manifest, ModelRegistry
from online.lifecycle.store import StoreUnavailable
from online.predictor import Predictor, int8_predictor, serves_int8, torch_predictor
from online.serving.batcher import MicroBatcher
from online.serving.breaker import Breaker
from online.serving.metrics import ApiMetrics, only
from online.settings import Settings

log = logging.getLogger("online.serving.follower")

MAX_BACKOFF_S = 300.0
STOP_GRACE_S = 2.0  # a cancelled watch's time to end, then again once its connection is closed
WATCH_READ_S = 1.0  # the longest the watch reads before it looks at its stop flag again
LOAD_MAX_FAILURES = 5


@dataclass
class LoadFailure:
    version: int
    error: str
    failures: int
    retry_at: float

    @property
    def given_up(self) -> bool:
        return self.failures >= LOAD_MAX_FAILURES


class VersionFollower:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        batcher: MicroBatcher,
        metrics: ApiMetrics,
        async_redis: aredis.Redis,
        redis_health: Breaker,
        on_swap: Callable[[Predictor], Awaitable[None]] | None = None,
        on_tick: Callable[[], Awaitable[None]] | None = None,
        prepare: Callable[[Predictor], Awaitable[None]] | None = None,
    ) -> None:
        self.s = settings
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics
        self._aredis = async_redis
        self._on_swap = on_swap
        self._on_tick = on_tick
        self._prepare = prepare  # a built predictor's companions (its correction memory), before it goes live
        self.redis_health = redis_health  # alias reads feed the replica's Redis breaker (its health)
        self.current: Predictor | None = None
        self.shadow: Predictor | None = None  # a candidate answering a share of traffic, never returned
        self.shadow_share = 0.0
        self.canary: Predictor | None = None  # a candidate answering (and returned to) a share of users
        self.canary_slot: CanarySlot | None = None  # set only while its predictor is loaded
        self.failures: dict[str, LoadFailure] = {}  # by slot: "live", "shadow", "canary"
        self._swap_lock = asyncio.Lock()
        self._process_threads = torch.get_num_threads()  # as configured at start, restored for torch engines
        self._task: asyncio.Task | None = None
        self._pubsub: aredis.client.PubSub | None = None  # the watch's subscription (stop closes it)
        self._stopping = False  # a watch whose cancellation was swallowed ends at its next turn

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    @property
    def last_load_error(self) -> str | None:
        failure = self.failures.get("live")
        return f"version {failure.version}: {failure.error}" if failure else None

    def shadow_state(self) -> tuple[Predictor | None, float]:
        return self.shadow, self.shadow_share

    def canary_state(self) -> tuple[Predictor, CanarySlot] | None:
        """The canary's predictor and slot, when one runs and this replica has it loaded."""
        predictor, slot = self.canary, self.canary_slot
        if predictor is None or slot is None or predictor.version != slot.version:
            return None
        return predictor, slot

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """End the watch. redis-py's pubsub can swallow a cancellation that lands while it reads (the same
        race as redis/redis-py#2028 for blocking commands) and then wait on its socket for good: seen here as
        a replica whose shutdown hung right after its start. So a watch not ended within a moment has its
        connection closed under it, and one that still does not end is left behind with a warning: a
        replica's shutdown never hangs on it."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_S)
        waited = STOP_GRACE_S
        if not done and self._pubsub is not None and self._pubsub.connection is not None:
            try:
                await self._pubsub.connection.disconnect(nowait=True)  # not aclose(): it waits on the reader's lock
            except (redis.RedisError, OSError):
                pass
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_S)
            waited += STOP_GRACE_S
        if not done:
            log.warning("the registry watch did not end within %.0f s of its cancellation: left behind", waited)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("the registry watch ended with %r", task.exception())

    # --- following ----------------------------------------------------------------------------
    def _may_try(self, slot: str, version: int) -> bool:
        failure = self.failures.get(slot)
        return failure is None or failure.version != version or time.monotonic() >= failure.retry_at

    def _failed(self, slot: str, version: int, exc: Exception) -> None:
        previous = self.failures.get(slot)
        n = previous.failures + 1 if previous and previous.version == version else 1
        if isinstance(exc, StoreUnavailable):  # the store is down, not the version: retried every poll, never given up
            failure = LoadFailure(version, str(exc), 1, time.monotonic() + self.s.model_poll_s)
            self.failures[slot] = failure
            log.warning("cannot fetch %s version %s yet (%s); still serving %s", slot, version, exc, self.version)
            return
        failure = LoadFailure(version, str(exc), n, 0.0)
        backoff = MAX_BACKOFF_S if failure.given_up else min(self.s.model_poll_s * 2 ** (n - 1), MAX_BACKOFF_S)
        failure.retry_at = time.monotonic() + backoff
        self.failures[slot] = failure
        self.metrics.load_failures.labels(str(version)).inc()
        log.error(
            "cannot load %s version %s (try %d%s; next in %.0f s), still serving %s: %s",
            slot, version, n, ", given up" if failure.given_up else "", backoff, self.version, exc,
        )  # fmt: skip

    async def sync(self) -> None:
        """Swap to the registry's live version if it differs from what is served; follow the shadow slot."""
        try:
            live, slot, canary = await asyncio.to_thread(self.registry.slots)
        except redis.RedisError as exc:
            self.redis_health.failed(exc)  # logged once per outage there
            return
        self.redis_health.succeeded()
        if live is not None and live == self.version:
            self.failures.pop("live", None)  # live moved back to what we serve: an old failure is moot
        elif live is not None and self._may_try("live", live):
            await self.swap_to(live)
        await self._sync_shadow(slot)
        await self._sync_canary(canary)

    async def _sync_shadow(self, slot: ShadowSlot | None) -> None:
        self.shadow_share = slot.share if slot else 0.0
        self.shadow = await self._follow_slot("shadow", self.shadow, slot.version if slot else None)

    async def _sync_canary(self, slot: CanarySlot | None) -> None:
        """The canary's predictor follows its slot; its share and steps are read from the slot at every
        request (:meth:`canary_state`), so a step takes effect at the next sync without a reload."""
        if slot is None or self.canary is None or slot.version != self.canary.version:
            self.canary_slot = None  # no routing to a canary that ended or is being replaced, even while one builds
        self.canary = await self._follow_slot("canary", self.canary, slot.version if slot else None)
        self.canary_slot = slot if self.canary is not None else None

    async def _follow_slot(self, name: str, current: Predictor | None, wanted: int | None) -> Predictor | None:
        """The predictor a side slot (shadow, canary) should hold: ``current`` when it is the wanted
        version, a fresh build when it is not, None when the slot is empty or its version cannot load
        (retried with backoff; a broken candidate never touches live serving)."""
        have = current.version if current else None
        if wanted == have:
            return current
        if wanted is None:
            self.failures.pop(name, None)
            log.info("%s of version %s ended", name, have)
            return None
        if wanted == self.version and self.current is not None:
            return self.current  # the live version itself (a slot about to be cleared): nothing to build
        if not self._may_try(name, wanted):
            return None
        if self.failures.get(name) and self.failures[name].version == wanted:
            self.metrics.load_retries.labels(name).inc()
        try:
            predictor = await self._build(wanted)
        except Exception as exc:  # a broken candidate never touches serving
            self._failed(name, wanted, exc)
            return None
        self.failures.pop(name, None)
        log.info("version %s now runs as the %s", wanted, name)
        return predictor

    async def swap_to(self, version: int) -> bool:
        async with self._swap_lock:
            if version == self.version:
                return True
            if self.failures.get("live") and self.failures["live"].version == version:
                self.metrics.load_retries.labels("live").inc()
            try:  # a canary promoted to live is served by the predictor it already runs on
                reuse = self.canary if self.canary is not None and self.canary.version == version else None
                predictor = reuse or await self._build(version)
            except Exception as exc:  # keep serving the old version; retried with backoff
                self._failed("live", version, exc)
                return False
            if self._prepare:
                await self._prepare(predictor)  # never raises: a version serves without its extras
            if await self._superseded(version):
                return False
            old = self.version
            # The whole forward thread (hooks included) at the engine's torch threads, not just its calls.
            threads = predictor.engine.torch_threads or self._process_threads
            await self.batcher.call(lambda: torch.set_num_threads(threads))
            self.current = predictor  # the atomic swap: one reference
            if self._on_swap:
                await self._on_swap(predictor)  # companions of the old version are dropped there
            # Everything alive now (libraries, the new version) leaves the cyclic GC's view: a full
            # collection walks the whole heap with the GIL held, and under load those walks set the p99
            # (`online bench swap` measures it). Refcounting still frees what is dropped.
            gc.freeze()
            self.failures.pop("live", None)
            self.metrics.live_version.set(version)
            only(self.metrics.engine, predictor.engine_name, 1)
            self.metrics.swaps.inc()
            log.info("now serving version %s on %s (was %s)", version, predictor.engine_name, old)
            return True

    async def _superseded(self, version: int) -> bool:
        """The live alias moved on while ``version`` was being built (a rollback during a slow swap):
        swapping now would serve a version that is no longer live until the next sync."""
        try:
            live = await asyncio.to_thread(self.registry.live)
        except redis.RedisError:
            return False  # cannot tell: the swap goes on, the next sync corrects it
        if live is not None and live != version:
            log.info("version %s was superseded by %s while it was being loaded: not swapped in", version, live)
            return True
        return False

    async def _build(self, version: int) -> Predictor:
        """Verify and open the engine off the forward thread; warm up on it one small batch at a time, so
        live batches interleave with the swap instead of waiting for all of it.

        A replica hashes the files it loads: on the int8 engine its artifact, not the torch weights
        beside it (those only when it falls back to them). Hashing the 90 MB of weights at every swap,
        even at nice 19, streamed them through the caches the forward lanes use: 11% of a replica's
        samples during `online bench swap` (issue 34, docs/benchmarks.md)."""
        predictor = None
        if serves_int8(self.s):
            manifest = await asyncio.to_thread(self.registry.get, version)
            predictor = await self._int8(version, manifest)
        if predictor is None:
            await _at_low_priority(self.registry.verify, version)
            model, _ = await self.batcher.call(lambda: self.registry.load(version, verify=False))
            predictor = await self.batcher.call(lambda: torch_predictor(model, version, self.s, copy_model=False))
            await self._warm_up(predictor)
        return predictor

    async def _warm_up(self, predictor: Predictor) -> None:
        for batch in predictor.warmup_batches():
            await self.batcher.call(lambda b=batch: predictor.probabilities(b))

    async def _int8(self, version: int, manifest: Manifest) -> Predictor | None:
        """The version on its int8 artifact, warmed up, or None (logged) when it has none or it cannot be
        used (checksum, session, a run that fails or answers the wrong shape): the caller then serves it
        with torch. A Redis error or an unreachable store is raised: the whole build is retried."""
        if INT8_FILE not in manifest.artifacts:
            check = manifest.gate.engine if manifest.gate else None
            log.warning(
                "version %s has no int8 artifact (%s): served by torch",
                version, (check.detail if check else "") or "not built at publish",
            )  # fmt: skip
            self.metrics.engine_fallbacks.labels("missing").inc()
            return None
        await _at_low_priority(self._fetch, version, manifest)  # files missing: the build fails, not the engine
        try:
            path = await _at_low_priority(self.registry.artifact, version, INT8_FILE, manifest)
            build = functools.partial(
                int8_predictor, path, version, manifest.labels, manifest.base_model, self.s, lanes=self.batcher.lanes
            )
            if cpu_threads(self.s.num_threads) == 1:
                # One thread: ONNX Runtime makes no pool, the session runs on the lane that calls it, so
                # it is built at nice 19 like the hashing: a replica of one core (a worker, or one of two
                # replicas on 2 cores) swaps a little later rather than slowing the answers it serves.
                predictor = await _at_low_priority(build)
            else:
                # At normal priority: the session's thread pool is created here and a thread inherits
                # its creator's nice value, so pool threads made at nice 19 would starve the forward.
                predictor = await asyncio.to_thread(build)
            await self._warm_up(predictor)
            probs = await self.batcher.call(lambda: predictor.probabilities(["a shape check"]))
            if tuple(probs.shape) != (1, len(manifest.labels)):
                raise IntegrityError(f"it answers {tuple(probs.shape)} for {len(manifest.labels)} labels")
        except (redis.RedisError, StoreUnavailable):
            raise  # nothing is concluded: the whole build is retried
        except Exception as exc:  # corrupted, unreadable or broken: the weights are still good
            log.error("version %s: int8 artifact refused (%s): served by torch", version, exc)
            self.metrics.engine_fallbacks.labels("refused").inc()
            return None
        return predictor

    def _fetch(self, version: int, manifest: Manifest) -> None:
        """The version's files and its imported base into the local cache (a no-op once cached)."""
        self.registry.fetch(version)
        self.registry.fetch_base(manifest)

    async def _watch(self) -> None:
        """Pub/sub wakes us at once; every ``model_poll_s`` the same loop polls anyway (the fallback when a
        message is lost or Redis was away). A read lasts at most ``WATCH_READ_S``, and a stop is checked
        after each: a watch whose cancellation redis-py swallowed (see :meth:`stop`) ends within a read,
        even where redis-py reconnects a connection that stop closed under it."""
        pubsub = None
        next_sync = 0.0  # the first turn syncs at once
        try:
            while not self._stopping:
                woken = False
                try:
                    if pubsub is None:
                        pubsub = self._pubsub = self._aredis.pubsub()
                        await pubsub.subscribe(self.registry.channel)
                        next_sync = 0.0  # (re)subscribed: what was published while away is read at once
                    wait = min(max(next_sync - time.monotonic(), 0.0), WATCH_READ_S)
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    woken = message is not None
                except (redis.RedisError, OSError) as exc:
                    if self._stopping:
                        return  # stop closed the connection: not an outage
                    self.redis_health.failed(exc)  # one line per outage, there; we poll meanwhile
                    await _close(pubsub)
                    pubsub = self._pubsub = None
                    await asyncio.sleep(min(self.s.model_poll_s, WATCH_READ_S))
                    woken = True
                if self._stopping:
                    return
                if not woken and time.monotonic() < next_sync:
                    continue
                next_sync = time.monotonic() + self.s.model_poll_s
                await self.sync()
                if self._on_tick:
                    try:
                        await self._on_tick()
                    except Exception as exc:  # a heartbeat never stops the replica following the registry
                        log.warning("replica tick failed: %r", exc)
        finally:
            await _close(pubsub)


async def _close(pubsub) -> None:
    """Close a pubsub whose connection may be gone already (it is, either way)."""
    if pubsub is None:
        return
    try:
        await pubsub.aclose()
    except (redis.RedisError, OSError):
        pass


async def _at_low_priority(fn, *args):
    """Run ``fn`` on a fresh thread at the lowest CPU priority (Linux: per-thread nice 19), so hashing a
    new version's weights takes spare CPU instead of the forward thread's during a hot swap."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass  # not Linux, or not allowed: run at normal priority
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, done, result, error)
        except RuntimeError:
            pass  # the event loop closed meanwhile (the replica is stopping): nobody waits for it

    threading.Thread(target=run, name="verify", daemon=True).start()
    return await done


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if not future.done():
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
