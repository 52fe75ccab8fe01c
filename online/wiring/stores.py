"""The composition root: every Redis-backed store of the system, built once from :class:`Settings`.

The API, the CLI, the consumer, the trainer and the benchmarks all get their stores from
:meth:`Stores.from_settings`, so a store is always built with the configured capacity, TTLs and key
names (``online.keys``), and one process holds one Redis client per role. FastAPI routers receive them
through typed dependencies (``services.api.deps``); nothing else constructs a store.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from online.connections import Role, redis_client
from online.feedback import pii
from online.feedback.buffer import ReplayBuffer
from online.feedback.labels import LabelBook
from online.feedback.prediction_log import PredictionLog
from online.feedback.quarantine import SourceLedger
from online.feedback.review_queue import ReviewQueue
from online.feedback.status import EventStatusLog
from online.keys import Keys
from online.lifecycle.canary import CanaryLedger
from online.lifecycle.control import TrainingControl
from online.lifecycle.registry import ModelRegistry
from online.lifecycle.shadow import ShadowLedger
from online.lifecycle.store import open_store
from online.memory.log import CorrectionLog
from online.monitoring.drift_log import DriftLog
from online.monitoring.feedback_volume import FeedbackVolume
from online.monitoring.live_accuracy import LiveAccuracy
from online.monitoring.replicas import Replicas
from online.settings import Settings


@dataclass(frozen=True)
class Stores:
    """Everything a process reads or writes in Redis (and the model store: a folder or object storage)."""

    settings: Settings
    redis: redis.Redis
    keys: Keys
    registry: ModelRegistry
    buffer: ReplayBuffer
    corrections: CorrectionLog
    sources: SourceLedger
    labels: LabelBook
    predictions: PredictionLog
    review: ReviewQueue
    live_accuracy: LiveAccuracy
    shadow: ShadowLedger
    canary: CanaryLedger
    volume: FeedbackVolume
    control: TrainingControl
    replicas: Replicas
    drift: DriftLog
    status: EventStatusLog

    @classmethod
    def from_settings(cls, settings: Settings, role: Role = "worker", client: redis.Redis | None = None) -> "Stores":
        """``role``: ``serving`` for the API (fails fast when Redis is down), ``worker`` for the rest
        (retries through a Redis restart). ``client``: share one already built."""
        pii.configure(settings.pii_mask, settings.pii_phone_regions, settings.pii_patterns)  # every stored text
        r = client if client is not None else redis_client(settings, role)
        keys = Keys(settings.key_prefix)
        s = settings
        registry = ModelRegistry(r, open_store(s.model_store or s.models_dir, s.models_dir), keys)
        return cls(
            settings=s,
            redis=r,
            keys=keys,
            registry=registry,
            buffer=ReplayBuffer(r, keys, s.buffer_capacity, s.dedup_ttl_s),
            corrections=CorrectionLog(r, keys, s.memory_capacity, s.memory_max_age_s, s.dedup_ttl_s),
            sources=SourceLedger(r, keys),
            labels=LabelBook(r, keys),
            predictions=PredictionLog(r, keys, s.prediction_ttl_s),
            review=ReviewQueue(r, keys, s.review_capacity, s.prediction_ttl_s),
            live_accuracy=LiveAccuracy(r, keys.live_accuracy, s.dedup_ttl_s),
            shadow=ShadowLedger(r, keys, s.dedup_ttl_s),
            canary=CanaryLedger(r, keys),
            volume=FeedbackVolume(r, keys),
            control=TrainingControl(r, keys),
            replicas=Replicas(r, keys),
            drift=DriftLog(r, keys, s.drift_history),
            status=EventStatusLog(r, keys, s.feedback_status_ttl_s),
        )

    def close(self) -> None:
        self.redis.close()
