"""The forward pass of an API replica and its side effects, as an ordered list of hooks.

:class:`ForwardPass` runs on the batcher's one forward thread: one batched pass of the predictor, then
each hook in order on the batch (shadow answers, prediction log, drift window, review queue). A hook
never costs an answer: a failing hook is logged and counted (``online_forward_hook_failures``) and the
batch is served anyway. A new side effect is a new hook, not another try/except in the forward pass.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import redis
import torch

from online.feedback.pii import mask_pii
from online.feedback.prediction_log import PredictionLog, PredictionRecord
from online.feedback.review_queue import ReviewQueue
from online.feedback.review_queue import candidates as review_candidates
from online.lifecycle.shadow import ShadowLedger
from online.memory.index import CorrectionMemory, blend
from online.predictor import Predictor
from online.serving.breaker import Breaker
from online.serving.drift_window import DriftWindow
from online.serving.metrics import ApiMetrics

log = logging.getLogger("online.serving.forward")


@dataclass(frozen=True)
class ServedPrediction:
    prediction_id: str
    label: str
    score: float
    top_k: list[tuple[str, float]]
    model_version: int
    source: str = "model"  # or "memory": a taught correction answered it (online.memory)
    memory_event_id: str | None = None  # the feedback event that taught it


@dataclass
class Batch:
    """One forward pass, as the hooks see it. Hooks may add to ``records`` and ``distances``."""

    predictor: Predictor
    texts: list[str]
    served: list[ServedPrediction]
    records: list[PredictionRecord]
    probs: torch.Tensor
    embeddings: torch.Tensor
    distances: np.ndarray | None = field(default=None)


class Hook(Protocol):
    name: str
    uses_redis: bool  # a best-effort Redis write: skipped while the breaker is open

    def __call__(self, batch: Batch) -> bool:
        """Run on one batch; True when it did talk to Redis (only that may close the breaker)."""
        ...


class ForwardPass:
    def __init__(self, hooks: Sequence[Hook], metrics: ApiMetrics, max_top_k: int, breaker: Breaker) -> None:
        self.hooks = list(hooks)
        self.metrics = metrics
        self.max_top_k = max_top_k
        self.breaker = breaker
        self.answered = {"model": 0, "memory": 0}  # texts by answer source since start (`online status`)

    def __call__(self, predictor: Predictor, texts: list[str]) -> list[ServedPrediction]:
        predictions, probs, emb = predictor.predict_with_probabilities(texts, self.max_top_k)
        served = [ServedPrediction(uuid.uuid4().hex, p.label, p.score, p.top_k, predictor.version) for p in predictions]
        records = [
            PredictionRecord(
                prediction_id=s.prediction_id, text=t, label=s.label, score=s.score, version=s.model_version
            )
            for s, t in zip(served, texts)
        ]
        batch = Batch(predictor, texts, served, records, probs, emb)
        for hook in self.hooks:
            if hook.uses_redis and not self.breaker.allow():
                self.metrics.side_effects_dropped.labels(hook.name).inc(len(texts))
                continue
            try:
                if hook(batch) and hook.uses_redis:
                    self.breaker.succeeded()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:  # Redis down: skip its side effects
                self.breaker.failed(exc)  # logs the outage once, not per batch
                self.metrics.side_effects_dropped.labels(hook.name).inc(len(texts))
            except Exception as exc:  # a side effect never costs an answer
                self.metrics.hook_failures.labels(hook.name).inc()
                log.warning("forward hook %s failed on a batch of %d: %r", hook.name, len(texts), exc)
        self.metrics.predictions.labels(str(predictor.version)).inc(len(texts))
        from_memory = sum(p.source == "memory" for p in batch.served)
        for source, n in (("memory", from_memory), ("model", len(texts) - from_memory)):
            self.answered[source] += n
            self.metrics.answers.labels(source).inc(n)
        return batch.served


class ShadowHook:
    """The shadow candidate answers a sampled share of the batch; its answers go to the log only."""

    name = "shadow"
    uses_redis = True

    def __init__(self, shadow: Callable[[], tuple[Predictor | None, float]], ledger: ShadowLedger) -> None:
        self.shadow = shadow
        self.ledger = ledger
        self._rng = random.Random()

    def __call__(self, batch: Batch) -> bool:
        predictor, share = self.shadow()
        if predictor is None or share <= 0:
            return False
        picked = [i for i in range(len(batch.texts)) if self._rng.random() < share]
        if not picked:
            return False
        answers = predictor.predict([batch.texts[i] for i in picked], 1)
        agreed = 0
        for i, answer in zip(picked, answers):
            rec = batch.records[i]
            batch.records[i] = rec.model_copy(
                update={"shadow_version": predictor.version, "shadow_label": answer.label}
            )
            agreed += answer.label == rec.label
        self.ledger.count(predictor.version, len(picked), agreed)
        return True


class MemoryHook:
    """Texts the correction memory knows are answered from it (``online.memory.index``): the served
    answer, its log record and the probabilities drift and review see all change together."""

    name = "memory"
    uses_redis = False  # the memory is in-process; it follows Redis on its own task

    def __init__(
        self, memory_for: Callable[[int], CorrectionMemory | None], max_top_k: int, metrics: ApiMetrics
    ) -> None:
        self.memory_for = memory_for
        self.max_top_k = max_top_k
        self.metrics = metrics

    def __call__(self, batch: Batch) -> bool:
        memory = self.memory_for(batch.predictor.version)
        if memory is None:
            return False
        hits = memory.lookup(batch.texts, batch.embeddings.numpy())
        labels = batch.predictor.labels
        if any(hits):
            batch.probs = batch.probs.clone()  # out of inference mode: the blended rows are written into it
        for i, hit in enumerate(hits):
            if hit is None:
                continue
            top, mixed = blend(hit, batch.probs[i].numpy(), labels, self.max_top_k)
            batch.probs[i] = torch.from_numpy(mixed)
            s = batch.served[i]
            batch.served[i] = replace(
                s, label=top[0][0], score=top[0][1], top_k=top, source="memory", memory_event_id=hit.event_id
            )
            batch.records[i] = batch.records[i].model_copy(
                update={"label": top[0][0], "score": top[0][1], "memory_sid": hit.sid}
            )
            self.metrics.memory_hits.labels("exact" if hit.exact else "near").inc()
        return False


class PredictionLogHook:
    """Every prediction, for resolving thumbs feedback later. Serving beats logging: a failed write only
    means thumbs on these ids will dead-letter."""

    name = "prediction_log"
    uses_redis = True

    def __init__(self, prediction_log: PredictionLog, metrics: ApiMetrics) -> None:
        self.prediction_log = prediction_log
        self.metrics = metrics

    def __call__(self, batch: Batch) -> bool:
        try:
            self.prediction_log.record_many(batch.records)
        except Exception:
            self.metrics.log_failures.inc()
            raise
        return True


class DriftHook:
    """The batch into this replica's drift window; distances to the training data for the review hook."""

    name = "drift"
    uses_redis = False  # local; the window's own Redis write at its close goes through the breaker

    def __init__(self, window: DriftWindow) -> None:
        self.window = window

    def __call__(self, batch: Batch) -> bool:
        batch.distances = self.window.observe(batch.predictor.version, batch.probs, batch.embeddings)
        return False


class ReviewHook:
    """Uncertain or unfamiliar predictions onto the review queue (PII-masked)."""

    name = "review"
    uses_redis = True

    def __init__(self, queue: ReviewQueue, window: DriftWindow, max_margin: float) -> None:
        self.queue = queue
        self.window = window
        self.max_margin = max_margin

    def __call__(self, batch: Batch) -> bool:
        queued = review_candidates(
            [p.prediction_id for p in batch.served], batch.texts, [p.label for p in batch.served],
            batch.probs.numpy(), batch.embeddings.numpy(), batch.distances, self.window.far_threshold,
            self.max_margin, batch.predictor.version,
        )  # fmt: skip
        if not queued:
            return False
        self.queue.add([replace(item, text=mask_pii(item.text)) for item in queued])
        return True
