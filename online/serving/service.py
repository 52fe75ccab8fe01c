"""One API replica's model service: micro-batching, the forward pass with its hooks, the version follower.

Routers stay thin; everything with state is here, built from the process's :class:`Stores`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Protocol

import redis
import redis.asyncio as aredis

from online.contract import CanarySlot
from online.feedback.prediction_log import PredictionLog
from online.feedback.review_queue import ReviewQueue
from online.lifecycle.canary import ArmCounts, CanaryLedger, Role, Run, routed_to_canary, run_of
from online.lifecycle.registry import IntegrityError
from online.lifecycle.shadow import ShadowLedger
from online.monitoring.drift_log import DriftLog
from online.monitoring.live_accuracy import LiveAccuracy
from online.monitoring.replicas import Heartbeat, Replicas, leave
from online.predictor import Predictor, forward_lanes
from online.reference import REFERENCE_FILE
from online.serving.batcher import MicroBatcher, Overloaded
from online.serving.breaker import Breaker
from online.serving.drift_window import DriftWindow
from online.serving.follower import VersionFollower
from online.serving.forward import (
    DriftHook,
    ForwardPass,
    MemoryHook,
    PredictionLogHook,
    ReviewHook,
    ServedPrediction,
    ShadowHook,
    SideEffectWriter,
    one_openmp_thread,
)
from online.serving.memory_follower import MemoryFollower, MemoryStores
from online.serving.metrics import ApiMetrics, only

log = logging.getLogger("online.serving")


class ServingStores(MemoryStores, Protocol):
    """The stores an API replica uses (the wiring's ``Stores`` has them all)."""

    @property
    def drift(self) -> DriftLog: ...

    @property
    def live_accuracy(self) -> LiveAccuracy: ...

    @property
    def predictions(self) -> PredictionLog: ...

    @property
    def replicas(self) -> Replicas: ...

    @property
    def review(self) -> ReviewQueue: ...

    @property
    def shadow(self) -> ShadowLedger: ...

    @property
    def canary(self) -> CanaryLedger: ...


class NotReady(RuntimeError):
    """No model version is loaded yet."""


class ModelService:
    def __init__(self, stores: ServingStores, metrics: ApiMetrics, async_redis: aredis.Redis) -> None:
        s = stores.settings
        self.settings = s
        self.stores = stores
        self.metrics = metrics
        fail_mode = "fails open" if s.feedback_rate_limit_fail == "open" else "fails closed (503)"
        # One breaker per dependency, shared by everything of this replica that calls it: its state is
        # the replica's view of that dependency's health (/readyz, online_dependency_up).
        self.redis_health = Breaker(
            "redis",
            f"predictions go on; prediction log, review queue, drift and shadow counts dropped; "
            f"feedback rate limit {fail_mode}",
            on_change=lambda up: metrics.dependency_up.labels("redis").set(int(up)),
        )
        self.broker_health = Breaker(
            "broker",
            "predictions go on; /v1/feedback answers 503 with Retry-After",
            on_change=lambda up: metrics.dependency_up.labels("broker").set(int(up)),
        )
        self.window = DriftWindow(s, stores.drift, metrics, self.redis_health)
        self.follower: VersionFollower
        self._arms: dict[Run, dict[Role, ArmCounts]] = {}  # per canary run, flushed at each heartbeat
        self.memory: MemoryFollower | None = None
        hooks = [
            ShadowHook(lambda: self.follower.shadow_state(), stores.shadow),  # first: compares weights
            MemoryHook(self._memory_for, s.max_top_k, metrics),  # before the log: it may change the answer
            PredictionLogHook(stores.predictions, metrics),
            DriftHook(self.window, s.drift_max_texts_per_s),
            ReviewHook(stores.review, self.window, s.review_max_margin),  # after drift: uses its distances
        ]
        # the hooks' after-answer work (Redis writes, drift, review) on a thread of its own
        self.writer = SideEffectWriter(hooks, self.redis_health, metrics, nice=s.side_effect_nice)
        self.forward = forward = ForwardPass(hooks, metrics, s.max_top_k, self.redis_health, self.writer)
        self.batcher: MicroBatcher[Predictor, ServedPrediction] = MicroBatcher(
            forward, max_batch=s.max_batch_size, max_wait_ms=s.max_wait_ms, on_batch=self._observe_batch,
            max_queue=s.predict_queue_max, lanes=forward_lanes(s), lanes_of=self._lanes_of,
            lane_setup=one_openmp_thread,
        )  # fmt: skip
        if s.memory:
            self.memory = MemoryFollower(
                stores, self.batcher, async_redis, self.redis_health, metrics, lambda: self.follower.current
            )
        self.follower = VersionFollower(
            s, stores.registry, self.batcher, metrics, async_redis, self.redis_health,
            on_swap=self._swapped, on_tick=self._heartbeat, prepare=self.memory.prepare if self.memory else None,
        )  # fmt: skip

    async def start(self) -> None:
        self.batcher.start()
        self.follower.start()
        if self.memory:
            self.memory.start()

    async def stop(self) -> None:
        if self.memory:
            await self.memory.stop()
        await self.follower.stop()
        await self.batcher.stop()
        await asyncio.to_thread(self.writer.stop)  # what the last batches handed over is written
        await leave(self.stores.replicas, self.window.replica)

    async def settled(self) -> None:
        """Until this replica's side effects handed over so far are in Redis (for its own reads)."""
        await self.writer.settled()

    def _memory_for(self, version: int):
        return self.memory.memory_for(version) if self.memory else None

    @property
    def version(self) -> int | None:
        return self.follower.version

    async def predict(self, texts: list[str], top_k: int, user: str | None = None) -> list[ServedPrediction]:
        """Each text's answer from live, or from the canary for the users (or, without a user, the
        texts) its share routes there; every answer names its version."""
        predictor = self.follower.current
        if predictor is None:
            raise NotReady("no model version is loaded yet")
        canary = self.follower.canary_state()
        with self.metrics.request_latency.time():
            if canary is None:
                served = await self.batcher.submit(predictor, texts)
            else:
                served = await self._split(predictor, *canary, texts, user)
        return [replace(p, top_k=p.top_k[:top_k]) for p in served]

    async def _split(
        self, live: Predictor, candidate: Predictor, slot: CanarySlot, texts: list[str], user: str | None
    ) -> list[ServedPrediction]:
        """Live's and the canary's texts as two batcher calls at once, answers back in the texts' order.
        A canary that fails answers nothing: its texts are answered by live (and the error counted
        against it), so a broken canary costs no request."""
        keys = [user] * len(texts) if user is not None else texts
        to_canary = [routed_to_canary(k, slot.version, slot.share) for k in keys]
        arms = self._arms.setdefault(run_of(slot), {"live": ArmCounts(), "canary": ArmCounts()})

        async def run(role: Role, idx: list[int]) -> list[ServedPrediction]:
            part = [texts[i] for i in idx]
            started = time.perf_counter()
            try:
                out = await self.batcher.submit(candidate if role == "canary" else live, part)
            except Overloaded:
                raise
            except Exception as exc:
                arms[role].observe(time.perf_counter() - started, error=True)
                if role == "live":
                    raise
                log.warning("canary version %s failed a request (%r): answered by live", slot.version, exc)
                return await self.batcher.submit(live, part)
            arms[role].observe(time.perf_counter() - started)
            return out

        groups: dict[Role, list[int]] = {"live": [], "canary": []}
        for i, c in enumerate(to_canary):
            groups["canary" if c else "live"].append(i)
        parts = [(role, idx) for role, idx in groups.items() if idx]
        answers = await asyncio.gather(*(run(role, idx) for role, idx in parts))
        served: list[ServedPrediction | None] = [None] * len(texts)
        for (_, idx), out in zip(parts, answers):
            for i, p in zip(idx, out):
                served[i] = p
        return served  # type: ignore[return-value]

    async def memory_state(self, sid: str) -> tuple[str, str] | None:
        """(state, the screen's reason) of one correction in the served version's memory, if it has it."""
        version = self.version
        memory = self._memory_for(version) if version is not None else None
        return memory.explain(sid) if memory is not None else None

    def _lanes_of(self, predictor: Predictor) -> int:
        """Batches ``predictor`` may run at once: its engine's lanes, but 1 while a torch shadow answers
        beside it (its forward runs inside the live batch's: torch on one thread at a time)."""
        shadow, share = self.follower.shadow_state()
        if shadow is not None and share > 0 and shadow.lanes == 1:
            return 1
        return predictor.lanes

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.forward_seconds.observe(seconds)

    async def _swapped(self, predictor: Predictor) -> None:
        """A new live version: a fresh drift window against its reference (on the side-effect thread,
        after the batches answered so far)."""
        try:
            path = await asyncio.to_thread(self.stores.registry.optional_artifact, predictor.version, REFERENCE_FILE)
        except (IntegrityError, redis.RedisError) as exc:  # monitoring must never stop serving
            log.error("version %s: drift reference unavailable (%s); input-drift signals off", predictor.version, exc)
            path = None
        self.writer.call(lambda: self.window.set_version(predictor.version, predictor.labels, path))
        if self.memory:
            await self.memory.swapped(predictor)

    async def _heartbeat(self) -> None:
        """This replica in Redis for `online status`, and the live-accuracy gauges for Prometheus."""
        beat = Heartbeat(
            self.window.replica, self.version, time.time(), self.follower.last_load_error,
            memory=self.memory_stats(),
            engine=self.follower.current.engine_name if self.follower.current else None,
        )  # fmt: skip

        canary = self.follower.canary_state()
        slot = canary[1] if canary is not None else None
        only(self.metrics.canary_share, str(slot.version) if slot else None, slot.share if slot else 0.0)

        def write() -> None:
            self.stores.replicas.beat(beat)
            for run, counts in arms.items():
                self.stores.canary.add(run, counts)
            for acc in self.stores.live_accuracy.all():
                if acc.accuracy is not None:
                    self.metrics.live_accuracy.labels(str(acc.version)).set(acc.accuracy)

        if not self.redis_health.allow():
            return
        arms, self._arms = self._arms, {}  # counted on this loop; written by the thread below
        try:
            await asyncio.to_thread(write)
        except redis.RedisError as exc:
            self.redis_health.failed(exc)  # logged once per outage there
            for run, counts in arms.items():  # kept for the next heartbeat (a partial write may count twice)
                mine = self._arms.setdefault(run, {"live": ArmCounts(), "canary": ArmCounts()})
                for role, c in counts.items():
                    mine[role].merge(c)
        else:
            self.redis_health.succeeded()

    def memory_stats(self) -> dict[str, int] | None:
        """The served version's correction memory by state, and answers by source since start."""
        if self.memory is None:
            return None
        return {**self.memory.stats(), **{f"answers_{k}": v for k, v in self.forward.answered.items()}}

    def dependencies(self) -> dict[str, dict]:
        """This replica's view of its dependencies, for ``/readyz`` (never part of readiness)."""
        return {"redis": self.redis_health.state(), "broker": self.broker_health.state()}
