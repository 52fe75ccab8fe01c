"""The model service behind the API routers: the live predictor, micro-batching, hot swap.

Routers stay thin; everything with state is here. The service follows the registry's ``live`` alias
(pub/sub, with polling as the fallback), builds and warms the new predictor off the event loop, checks
its sha256, then swaps one reference. A request keeps the predictor it started with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, replace

import redis
import redis.asyncio as aredis

from online.inference import Prediction, Predictor
from online.pii import mask_pii
from online.prediction_log import PredictionLog, PredictionRecord
from online.registry import ModelRegistry
from online.review import ReviewQueue
from online.review import candidates as review_candidates
from online.settings import Settings
from online.shadow import ShadowLedger
from services.api.batcher import MicroBatcher
from services.api.drift import DriftMonitor
from services.api.metrics import ApiMetrics

log = logging.getLogger("online.api")


class NotReady(RuntimeError):
    """No model version is loaded yet."""


@dataclass(frozen=True)
class ServedPrediction:
    prediction_id: str
    label: str
    score: float
    top_k: list[tuple[str, float]]
    model_version: int


class ModelService:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        prediction_log: PredictionLog,
        async_redis: aredis.Redis,
        metrics: ApiMetrics,
        drift: DriftMonitor,
        review: ReviewQueue,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.prediction_log = prediction_log
        self.metrics = metrics
        self.drift = drift
        self.review = review
        self._aredis = async_redis
        self.current: Predictor | None = None
        self.shadow: Predictor | None = None  # a candidate answering a share of traffic, never returned
        self.shadow_share = 0.0
        self.shadow_ledger = ShadowLedger(registry.r, settings.key_prefix, settings.dedup_ttl_s)
        self._shadow_rng = random.Random()
        self.last_load_error: str | None = None
        self._failed_version: int | None = None
        self._swap_lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self.batcher: MicroBatcher[Predictor, ServedPrediction] = MicroBatcher(
            self._forward,
            max_batch=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            on_batch=self._observe_batch,
        )

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.batcher.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        await self.batcher.stop()

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    # --- predicting ---------------------------------------------------------------------------
    async def predict(self, texts: list[str], top_k: int) -> list[ServedPrediction]:
        predictor = self.current
        if predictor is None:
            raise NotReady("no model version is loaded yet")
        with self.metrics.request_latency.time():
            served = await self.batcher.submit(predictor, texts)
        return [
            ServedPrediction(p.prediction_id, p.label, p.score, p.top_k[:top_k], p.model_version) for p in served
        ]

    def _forward(self, predictor: Predictor, texts: list[str]) -> list[ServedPrediction]:
        """Runs on the forward thread: one batched pass, one Redis round trip for the log, monitoring."""
        predictions: list[Prediction]
        predictions, probs, emb = predictor.predict_with_probabilities(texts, self.settings.max_top_k)
        served = [
            ServedPrediction(uuid.uuid4().hex, p.label, p.score, p.top_k, predictor.version) for p in predictions
        ]
        records = [
            PredictionRecord(prediction_id=s.prediction_id, text=t, label=s.label, score=s.score, version=s.model_version)
            for s, t in zip(served, texts)
        ]
        try:
            self._run_shadow(texts, records)
        except Exception:  # the shadow never costs an answer
            log.exception("shadow evaluation failed on a batch")
        try:
            self.prediction_log.record_many(records)
        except redis.RedisError as exc:  # serving beats logging; thumbs on these ids will dead-letter
            self.metrics.log_failures.inc()
            log.warning("prediction log write failed: %s", exc)
        self.metrics.predictions.labels(str(predictor.version)).inc(len(texts))
        try:
            self._monitor(predictor, texts, served, probs, emb)
        except Exception:  # monitoring never costs an answer
            log.exception("drift monitor or review queue failed on a batch")
        return served

    def _run_shadow(self, texts: list[str], records: list[PredictionRecord]) -> None:
        """The shadow candidate answers a sampled share of the batch; its answers go to the log only."""
        shadow = self.shadow
        if shadow is None or self.shadow_share <= 0:
            return
        picked = [i for i in range(len(texts)) if self._shadow_rng.random() < self.shadow_share]
        if not picked:
            return
        answers = shadow.predict([texts[i] for i in picked], 1)
        agreed = 0
        for i, answer in zip(picked, answers):
            records[i] = records[i].model_copy(update={"shadow_version": shadow.version, "shadow_label": answer.label})
            agreed += answer.label == records[i].label
        self.shadow_ledger.count(shadow.version, len(picked), agreed)

    def _monitor(self, predictor: Predictor, texts: list[str], served: list[ServedPrediction], probs, emb) -> None:
        """Drift windows, and the uncertain predictions onto the review queue."""
        distances = self.drift.observe(predictor.version, probs, emb)
        queued = review_candidates(
            [p.prediction_id for p in served], texts, [p.label for p in served], probs.numpy(), emb.numpy(),
            distances, self.drift.far_threshold, self.settings.review_max_margin, predictor.version,
        )
        for i, item in enumerate(queued):
            queued[i] = replace(item, text=mask_pii(item.text))
        self.review.add(queued)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.forward_seconds.observe(seconds)

    # --- following the live alias -------------------------------------------------------------
    async def sync(self) -> None:
        """Swap to the registry's live version if it differs from what is served."""
        try:
            live = await asyncio.to_thread(self.registry.live)
        except redis.RedisError as exc:
            log.warning("cannot read the live alias: %s", exc)
            return
        if live is not None and live != self.version and live != self._failed_version:
            await self.swap_to(live)
        await self._sync_shadow()

    async def _sync_shadow(self) -> None:
        """Follow the registry's shadow slot: load its candidate off the request path, or drop it."""
        try:
            slot = await asyncio.to_thread(self.registry.shadow)
        except redis.RedisError:
            return
        wanted = slot["version"] if slot else None
        self.shadow_share = float(slot["share"]) if slot else 0.0
        current = self.shadow.version if self.shadow else None
        if wanted == current:
            return
        if wanted is None:
            self.shadow = None
            log.info("shadow evaluation of version %s ended", current)
            return
        try:
            self.shadow = await self._build(wanted)
            log.info("version %s now runs in shadow on %.0f%% of traffic", wanted, 100 * self.shadow_share)
        except Exception as exc:
            log.error("cannot load shadow version %s: %s", wanted, exc)

    async def swap_to(self, version: int) -> bool:
        async with self._swap_lock:
            if version == self.version:
                return True
            try:
                predictor = await self._build(version)
            except Exception as exc:
                self._failed_version = version
                self.last_load_error = f"version {version}: {exc}"
                self.metrics.load_failures.labels(str(version)).inc()
                log.error("cannot load version %s, still serving %s: %s", version, self.version, exc)
                return False
            old = self.version
            self.current = predictor  # the atomic swap: one reference
            path = self.registry.path(version)
            await self.batcher.call(lambda: self.drift.set_version(version, predictor.labels, path))
            self._failed_version = None
            self.last_load_error = None
            self.metrics.live_version.set(version)
            self.metrics.swaps.inc()
            log.info("now serving version %s (was %s)", version, old)
            return True

    async def _build(self, version: int) -> Predictor:
        """Verify off the forward thread; build and warm up on it, in steps so batches interleave."""
        await _at_low_priority(self.registry.verify, version)
        model, _ = await self.batcher.call(lambda: self.registry.load(version, verify=False))
        predictor = await self.batcher.call(
            lambda: Predictor(
                model,
                version,
                device=self.settings.device,
                precision=self.settings.precision,
                max_seq_len=self.settings.max_seq_len,
                copy_model=False,
            )
        )
        await self.batcher.call(predictor.warmup)
        return predictor

    async def _watch(self) -> None:
        """Pub/sub wakes us at once; the timeout makes the same loop a polling fallback."""
        pubsub = None
        while True:
            try:
                if pubsub is None:
                    pubsub = self._aredis.pubsub()
                    await pubsub.subscribe(self.registry.channel)
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.settings.model_poll_s)
            except (redis.RedisError, OSError) as exc:
                log.warning("live-alias subscription lost (%s); polling", exc)
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except (redis.RedisError, OSError):
                        pass
                pubsub = None
                await asyncio.sleep(min(self.settings.model_poll_s, 1.0))
            await self.sync()
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        """This replica in Redis for `online status`, and the live-accuracy gauges for Prometheus."""
        entry = {"version": self.version, "at": time.time(), "last_load_error": self.last_load_error}

        def write() -> None:
            self.registry.r.hset(f"{self.settings.key_prefix}:replicas", self.drift.replica, json.dumps(entry))
            for acc in self.drift.live_accuracy.all():
                if acc.accuracy is not None:
                    self.metrics.live_accuracy.labels(str(acc.version)).set(acc.accuracy)

        try:
            await asyncio.to_thread(write)
        except redis.RedisError as exc:
            log.warning("heartbeat not written: %s", exc)


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
