"""The forward pass of an API replica and its side effects, as an ordered list of hooks.

:class:`ForwardPass` runs on the batcher's one forward thread: one batched pass of the predictor, then
the hooks in order. A hook has up to two phases:

- ``before(batch)``, on the forward thread, before the batch is answered: what may change an answer or
  needs the predictor (the correction memory's answers, the shadow candidate's forward);
- ``after(batches)``, on the replica's side-effect thread (:class:`SideEffectWriter`), once the batch
  is answered: the prediction log, the drift window, the review queue, the shadow's counts. Every batch
  answered while the thread was busy is handed over at once, so a hook writes them in one call (one
  Redis pipeline); batches keep their order.

The forward thread thus never waits on a Redis round trip, a PII mask, a drift statistic or a review
pick: it goes straight on to the next batch. No torch operation runs in ``after`` (its arrays are
numpy views taken on the forward thread: one thread does torch work, see docs/how-it-works.md).

A hook never costs an answer: a failing hook is logged and counted (``online_forward_hook_failures``)
and the batch is served anyway; a hook whose Redis is down is skipped and counted
(``online_side_effects_dropped``). A new side effect is a new hook, not another try/except here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

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
from online.sampling import RateSampler
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
    """One forward pass, as the hooks see it. ``before`` hooks may change ``served``, ``records`` and
    ``probs``; ``probs_np`` and ``embeddings_np`` are the numpy views ``after`` hooks read (taken once the
    ``before`` hooks are done); ``notes`` carries a hook's own data from its ``before`` to its ``after``."""

    predictor: Predictor
    texts: list[str]
    served: list[ServedPrediction]
    records: list[PredictionRecord]
    probs: torch.Tensor
    embeddings: torch.Tensor
    distances: np.ndarray | None = field(default=None)
    probs_np: np.ndarray | None = field(default=None, repr=False)
    embeddings_np: np.ndarray | None = field(default=None, repr=False)
    notes: dict[str, Any] = field(default_factory=dict)
    _masked: list[str] | None = field(default=None, repr=False)

    def masked(self) -> list[str]:
        """The texts PII-masked, computed once for every hook that stores or compares them (the memory
        on the forward thread only when it must, the prediction log and the review queue after)."""
        if self._masked is None:
            self._masked = [mask_pii(t) for t in self.texts]
        return self._masked


class Hook(Protocol):
    """A side effect of the forward pass. Implement ``before``, ``after`` or both (the other absent)."""

    name: str
    uses_redis: bool  # best effort: skipped (and counted) while the replica's Redis breaker is open

    # def before(self, batch: Batch) -> None: on the forward thread, before the answer
    # def after(self, batches: list[Batch]) -> bool: on the side-effect thread, after the answers;
    #     True when it did talk to Redis (only that may close the breaker)


def _texts(batches: Sequence[Batch]) -> int:
    return sum(len(b.texts) for b in batches)


class SideEffectWriter:
    """The ``after`` phase of the hooks, on one thread of its own, batch after batch in serving order.

    Everything waiting is taken at once and each hook gets those batches together; at low rates the
    thread lingers up to ``linger_s`` for company (so side effects land within ~20 ms of the answer). The breaker is asked
    before a Redis hook runs and told the outcome (a success may close it); a hook refused by the breaker
    or failing on a connection error is counted as dropped, any other failure is a bug, logged and
    counted. At most ``max_pending`` texts wait: beyond that (side effects slower than serving, e.g. a
    slow Redis) new batches' side effects are dropped and counted rather than queued without bound.
    :meth:`call` runs a function on this thread between batches (the drift window's version change);
    :meth:`settled` waits until what was handed over before it is done (a replica's reads of its own
    side effects: the review queue, the shadow's counts). The thread runs at niceness ``nice``
    (``ONLINE_SIDE_EFFECT_NICE``): where ONNX Runtime's pool fills the cores, its writes take the CPU the
    forward leaves between batches instead of stalling a forward (issue 34 in docs/benchmarks.md)."""

    def __init__(
        self,
        hooks: Sequence[Hook],
        breaker: Breaker,
        metrics: ApiMetrics,
        *,
        linger_s: float = 0.02,
        gather: int = 128,
        max_pending: int = 20_000,
        nice: int = 0,
    ) -> None:
        self.hooks = [h for h in hooks if hasattr(h, "after")]
        self.nice = nice
        self.breaker = breaker
        self.metrics = metrics
        self.linger_s = linger_s  # at low rates, wait this long for company: one pipeline, one BLAS call
        self.gather = gather  # ... unless this many texts are waiting already
        self.max_pending = max_pending
        self._pending = 0  # texts handed over, not yet done
        self._jobs: deque[Batch | Callable[[], None]] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._urgent = False  # a call or a settled() waits: no lingering
        self._lingering = False  # the thread waits out linger_s: a new batch need not wake it
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="side-effects", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """Hand over an answered batch (from the forward thread); returns at once."""
        n = len(batch.texts)
        with self._wake:
            accepted = self._pending + n <= self.max_pending and not self._stopping
            if accepted:
                self._pending += n
                self._jobs.append(batch)
                # a lingering thread wakes at its deadline anyway: waking it for each batch only took the
                # CPU from the next forward (one wake less a batch; at one client within noise, issue 34)
                if not self._lingering or self._pending >= self.gather:
                    self._wake.notify()
        if not accepted:
            for hook in self.hooks:
                self.metrics.side_effects_dropped.labels(hook.name).inc(n)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the side-effect thread after the batches handed over so far."""
        with self._wake:
            self._jobs.append(fn)
            self._urgent = True
            self._wake.notify()

    async def settled(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` seconds) until the batches handed over before this call are done."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def mark() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        with self._wake:
            if self._stopping or not self._thread.is_alive():
                return
            self._jobs.append(mark)
            self._urgent = True
            self._wake.notify()
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            log.warning("side effects not done within %.1f s (Redis slow?)", timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is waiting, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        if self.nice:  # Linux: a thread's own niceness; side effects take the CPU the forward leaves
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except (AttributeError, OSError) as exc:  # pragma: no cover - not Linux, or not allowed
                log.info("side-effect thread keeps its priority: %r", exc)
        one_openmp_thread(torch_too=False)  # the drift window's faiss search starts no OpenMP team here
        while True:
            with self._wake:
                while not self._jobs and not self._stopping:
                    self._wake.wait()
                deadline = time.monotonic() + self.linger_s
                self._lingering = True
                while not (self._stopping or self._urgent or self._pending >= self.gather):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                self._lingering = False
                if not self._jobs:
                    return  # stopping, nothing left
                jobs = list(self._jobs)
                self._jobs.clear()
                self._urgent = False
            run: list[Batch] = []
            for job in jobs:  # batches between two calls go together; a call runs in its place
                if isinstance(job, Batch):
                    run.append(job)
                    continue
                self._after(run)
                run = []
                try:
                    job()
                except Exception as exc:  # the thread never dies
                    log.warning("side-effect thread call failed: %r", exc)
            self._after(run)

    def _after(self, batches: list[Batch]) -> None:
        if not batches:
            return
        n = _texts(batches)
        try:
            for hook in self.hooks:
                if hook.uses_redis and not self.breaker.allow():
                    self.metrics.side_effects_dropped.labels(hook.name).inc(n)
                    continue
                try:
                    talked = hook.after(batches)  # type: ignore[attr-defined]
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:  # Redis down: drop, count
                    self.breaker.failed(exc)  # logs the outage once, not per batch
                    self.metrics.side_effects_dropped.labels(hook.name).inc(n)
                except Exception as exc:  # a side effect never stops the others
                    self.metrics.hook_failures.labels(hook.name).inc()
                    log.warning("forward hook %s failed on %d texts: %r", hook.name, n, exc)
                else:
                    if talked and hook.uses_redis:
                        self.breaker.succeeded()
        finally:
            with self._wake:
                self._pending -= n


def one_openmp_thread(torch_too: bool = True) -> None:
    """This thread's OpenMP settings (they are per thread) at one thread: a helper thread (a forward
    lane; the side-effect thread, faiss only) then starts no OpenMP team beside ONNX Runtime's runs
    (faiss does the drift and memory searches there, torch a lane's bookkeeping). ``torch_too=False``
    where torch may serve on another thread: its setting also reaches process-wide pools (MKL)."""
    import faiss

    if torch_too:
        torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


class ForwardPass:
    def __init__(
        self,
        hooks: Sequence[Hook],
        metrics: ApiMetrics,
        max_top_k: int,
        breaker: Breaker,
        writer: SideEffectWriter | None = None,
    ) -> None:
        self.hooks = list(hooks)
        self.before = [h for h in self.hooks if hasattr(h, "before")]
        self.metrics = metrics
        self.max_top_k = max_top_k
        self.breaker = breaker
        self.writer = writer or SideEffectWriter(self.hooks, breaker, metrics)
        self.answered = {"model": 0, "memory": 0}  # texts by answer source since start (`online status`)
        self._counting = threading.Lock()  # lanes (online.serving.batcher) run this from two threads

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
        for hook in self.before:
            if hook.uses_redis and self.breaker.refusing():  # Redis down: its write would be dropped anyway
                self.metrics.side_effects_dropped.labels(hook.name).inc(len(texts))
                continue
            try:
                hook.before(batch)  # type: ignore[attr-defined]
            except Exception as exc:  # a side effect never costs an answer
                self.metrics.hook_failures.labels(hook.name).inc()
                log.warning("forward hook %s failed on a batch of %d: %r", hook.name, len(texts), exc)
        batch.probs_np, batch.embeddings_np = batch.probs.numpy(), batch.embeddings.numpy()
        self.metrics.predictions.labels(str(predictor.version)).inc(len(texts))
        from_memory = sum(p.source == "memory" for p in batch.served)
        for source, n in (("memory", from_memory), ("model", len(texts) - from_memory)):
            with self._counting:
                self.answered[source] += n
            self.metrics.answers.labels(source).inc(n)
        self.writer.submit(batch)
        return batch.served


class ShadowHook:
    """The shadow candidate answers a sampled share of the batch; its answers go to the log only, its
    agreement with live to the shadow ledger."""

    name = "shadow"
    uses_redis = True

    def __init__(self, shadow: Callable[[], tuple[Predictor | None, float]], ledger: ShadowLedger) -> None:
        self.shadow = shadow
        self.ledger = ledger
        self._rng = random.Random()

    def before(self, batch: Batch) -> None:
        predictor, share = self.shadow()
        if predictor is None or share <= 0:
            return
        picked = [i for i in range(len(batch.texts)) if self._rng.random() < share]
        if not picked:
            return
        answers = predictor.predict([batch.texts[i] for i in picked], 1)
        agreed = 0
        for i, answer in zip(picked, answers):
            rec = batch.records[i]
            batch.records[i] = rec.model_copy(
                update={"shadow_version": predictor.version, "shadow_label": answer.label}
            )
            agreed += answer.label == rec.label
        batch.notes[self.name] = (predictor.version, len(picked), agreed)

    def after(self, batches: list[Batch]) -> bool:
        """One count per shadow version for the batches handed over together."""
        per_version: dict[int, list[int]] = {}
        for b in batches:
            if self.name in b.notes:
                version, requests, agreed = b.notes[self.name]
                acc = per_version.setdefault(version, [0, 0])
                acc[0] += requests
                acc[1] += agreed
        for version, (requests, agreed) in per_version.items():
            self.ledger.count(version, requests, agreed)
        return bool(per_version)


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

    def before(self, batch: Batch) -> None:
        memory = self.memory_for(batch.predictor.version)
        if memory is None:
            return
        hits = memory.lookup(batch.texts, batch.embeddings.numpy(), masked=batch.masked)
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


class PredictionLogHook:
    """Every prediction, for resolving thumbs feedback later (PII-masked). Serving beats logging: a
    failed write only means thumbs on these ids will dead-letter."""

    name = "prediction_log"
    uses_redis = True

    def __init__(self, prediction_log: PredictionLog, metrics: ApiMetrics) -> None:
        self.prediction_log = prediction_log
        self.metrics = metrics

    def after(self, batches: list[Batch]) -> bool:
        try:
            records = [r.model_copy(update={"text": text}) for b in batches for r, text in zip(b.records, b.masked())]
            self.prediction_log.record_many(records, masked=True)  # one round trip
        except Exception:
            self.metrics.log_failures.inc()
            raise
        return True


class DriftHook:
    """Each batch into this replica's drift window; distances to the training data for the review hook
    (a batch left out of the sample has none: its review picks are by margin alone).

    Above ``max_texts_per_s`` (online.sampling) the sample is of whole hand-overs (the batches the
    side-effect thread takes at once), not of single batches: the search reads every training embedding
    of the reference once a call, memory traffic the forward lanes pay for too, so the same texts in
    fewer, larger calls cost less (issue 34, docs/benchmarks.md)."""

    name = "drift"
    uses_redis = False  # local; the window's own Redis write at its close goes through the breaker

    def __init__(self, window: DriftWindow, max_texts_per_s: float = 0.0) -> None:
        self.window = window
        self.sampler = RateSampler(max_texts_per_s, at_random=True)

    def after(self, batches: list[Batch]) -> bool:
        current = [b for b in batches if b.predictor.version == self.window.version]
        if current and not self.sampler.take(_texts(current)):
            current = []  # the sample is of whole hand-overs: one search a hand-over kept (see the class)
        dist = self.window.distances(np.concatenate([b.embeddings_np for b in current])) if current else None
        offset = 0
        for b in current:  # batch by batch: a window closes at the batch that fills it, as it always did
            n = len(b.texts)
            b.distances = self.window.observe(
                b.predictor.version, b.probs_np, b.embeddings_np, None if dist is None else dist[offset : offset + n]
            )
            offset += n
        return False


class ReviewHook:
    """Uncertain or unfamiliar predictions onto the review queue (PII-masked)."""

    name = "review"
    uses_redis = True

    def __init__(self, queue: ReviewQueue, window: DriftWindow, max_margin: float) -> None:
        self.queue = queue
        self.window = window
        self.max_margin = max_margin

    def after(self, batches: list[Batch]) -> bool:
        queued = []
        floor = self.queue.floor()  # a full queue refuses the less uncertain: they are not built
        for b in batches:
            queued += review_candidates(
                [p.prediction_id for p in b.served], b.masked(), [p.label for p in b.served],
                b.probs_np, b.embeddings_np, b.distances, self.window.far_threshold,
                self.max_margin, b.predictor.version, above=floor,
            )  # fmt: skip
        return self.queue.add(queued) > 0  # texts masked already (Batch.masked); most refused before Redis once full
