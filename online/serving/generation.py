"""One API replica's generation service (``ONLINE_TASK=generate``): micro-batched decoding on the forward
thread, the version follower, the prediction log of generations.

The same rails as the classifier's :class:`~online.serving.service.ModelService`: one forward thread (the
only one that runs torch: on 2 cores a second torch thread halves the speed of both), the registry
followed by pub/sub and polling, a version verified off the forward thread and swapped in with one
reference assignment (a request keeps the version it started on; batches never mix versions), every
answer naming its version, Redis side effects off the answer's path behind the replica's breaker.

What differs is the model: the base is loaded once (:class:`~online.generative.AdapterHost`) and each
version is an adapter loaded beside the live one, then switched to (``online.generative``); a request is
a prompt decoded for many steps, so each answer is handed back as soon as its own row ends
(``online.generator``), and streaming clients get its text as it is decoded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis
import redis.asyncio as aredis
from prometheus_client import Counter, Histogram

from online import generation_samples
from online.feedback.pii import mask_pii
from online.feedback.prediction_log import PredictionLog, PredictionRecord
from online.generative import AdapterHost, GenerativeLM
from online.generator import Generated, Generation, JoinQueue, generate, prompt_ids
from online.keys import Keys
from online.lifecycle.registry import ModelRegistry
from online.memory.generative import GenerativeHit, GenerativeMemory
from online.memory.log import CorrectionLog
from online.model import resolve_device
from online.monitoring.drift_log import DriftLog
from online.monitoring.replicas import Heartbeat, Replicas, leave
from online.serving.batcher import MicroBatcher
from online.serving.breaker import Breaker
from online.serving.drift_window import replica_name
from online.serving.follower import VersionFollower, _at_low_priority
from online.serving.forward import SideEffectWriter
from online.serving.metrics import ApiMetrics
from online.serving.prompt_drift import PromptDrift, PromptEncoder
from online.serving.service import NotReady
from online.settings import Settings

log = logging.getLogger("online.serving.generation")


class GenerationStores(Protocol):
    """The stores a generating replica uses (the wiring's ``Stores`` has them all)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> ModelRegistry: ...

    @property
    def predictions(self) -> PredictionLog: ...

    @property
    def replicas(self) -> Replicas: ...

    @property
    def corrections(self) -> CorrectionLog: ...

    @property
    def drift(self) -> DriftLog: ...

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def keys(self) -> Keys: ...


@dataclass(frozen=True)
class _Engine:
    name: str
    torch_threads: int | None = None  # the process's threads (the follower restores them)


@dataclass(frozen=True)
class ServedVersion:
    """A version ready to serve: its adapter loaded on the host's base (what the follower swaps in)."""

    version: int
    model: GenerativeLM
    host: AdapterHost
    engine: _Engine
    labels: list[str] = field(default_factory=list)

    @property
    def engine_name(self) -> str:
        return self.engine.name


@dataclass(frozen=True)
class ServedGeneration:
    generation_id: str
    text: str
    model_version: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    source: str = "model"  # or "memory": a taught correction answered it
    memory_event_id: str | None = None
    memory_sid: str | None = None


@dataclass(frozen=True)
class GenerationStream:
    """One streamed generation: who answers, its id, then its text pieces and the whole answer."""

    version: int
    generation_id: str
    items: AsyncIterator[str | ServedGeneration]

    def __aiter__(self) -> AsyncIterator[str | ServedGeneration]:
        return self.items.__aiter__()

    async def aclose(self) -> None:
        await self.items.aclose()  # type: ignore[attr-defined]


class GenerationFollower(VersionFollower):
    """The registry follower with the generative family's build: verify off the forward thread, then
    load the adapter beside the live one and warm it up on the forward thread."""

    def __init__(self, *args, build: Callable[[int], object], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._build_version = build

    async def _build(self, version: int) -> ServedVersion:  # type: ignore[override]
        await _at_low_priority(self.registry.verify, version)
        return await self._build_version(version)  # type: ignore[misc]


class _Outbox:
    """What the forward thread hands to the event loop (text pieces, answers), delivered once a step.

    Why: every hand-off wakes the event loop's thread, and on a small machine that wake preempts one of
    torch's threads mid-operation and stalls the whole step; one wake per token and streaming row cost
    ~8% of the tokens/s at concurrency 1 on 2 cores (``online bench serve --task generate``). So a step's
    pieces are handed over together after the step. The forward thread does not wait for the loop to
    write them: with the packed decode, waiting (up to 20 ms a step) measured API/raw 1.03x at
    concurrency 1 and 0.91x at 8, not waiting 1.02x and 0.94x / 1.01x (runs of the same bench).
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, object]] = []

    def put(self, queue: asyncio.Queue, item: object) -> None:
        """On the forward thread: ``item`` for ``queue``, delivered at the next :meth:`flush`."""
        with self._lock:
            self._items.append((queue, item))

    def flush(self) -> None:
        """On the forward thread: deliver what was put, in one wake of the event loop."""
        with self._lock:
            items, self._items = self._items, []
        loop = self.loop
        if not items or loop is None:
            return

        def deliver() -> None:
            for queue, item in items:
                queue.put_nowait(item)

        try:
            loop.call_soon_threadsafe(deliver)
        except RuntimeError:
            return  # the event loop closed (the replica is stopping): nobody reads it


def _retrieved(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # read here: the waiting generation (if any) raises it from its own queue


class GenerationMetrics:
    def __init__(self, metrics: ApiMetrics) -> None:
        r = metrics.registry
        self.requests = Counter("online_generations", "Generations answered", ["version"], registry=r)
        self.tokens = Counter("online_generated_tokens", "Tokens generated", ["version"], registry=r)
        self.joined = Counter(
            "online_generate_joined", "Generations that joined a running decode (continuous batching)", registry=r
        )
        self.first_token = Histogram(
            "online_generate_first_token_seconds",
            "From a generation's arrival to its first token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.latency = Histogram(
            "online_generate_request_seconds",
            "Latency of a whole generation",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )


class GenerationService:
    def __init__(self, stores: GenerationStores, metrics: ApiMetrics, async_redis: aredis.Redis) -> None:
        s = stores.settings
        self.settings = s
        self.stores = stores
        self.metrics = metrics
        self.gen_metrics = GenerationMetrics(metrics)
        self.device = resolve_device(s.device)
        self.replica = replica_name()
        self.redis_health = Breaker(
            "redis",
            "generations go on; their log (what feedback on them resolves) is dropped",
            on_change=lambda up: metrics.dependency_up.labels("redis").set(int(up)),
        )
        self.broker_health = Breaker(
            "broker",
            "generations go on; /v1/feedback answers 503 with Retry-After",
            on_change=lambda up: metrics.dependency_up.labels("broker").set(int(up)),
        )
        self.window = None  # the classifier's drift window; generations have their own:
        self.drift = PromptDrift(
            s, stores.drift, stores.redis, stores.keys, metrics, self.redis_health, self.replica
        )  # prompt and answer drift against the deployment's first prompts
        self.encoder: PromptEncoder | None = PromptEncoder(s.base_model, s.max_seq_len, self.device)
        self._drift_pending: deque[tuple[int, str, int, bool]] = deque()  # (version, prompt, tokens, cut)
        self.memory = GenerativeMemory(s.verdict_min_sources)
        self._async_redis = async_redis
        self._memory_task: asyncio.Task | None = None
        self.writer = SideEffectWriter([], self.redis_health, metrics, nice=s.side_effect_nice)
        self._answered = {"model": 0, "memory": 0}
        self.joining = JoinQueue(s.generate_max_batch)  # continuous batching: arrivals join a running decode
        self.outbox = _Outbox()
        self.batcher: MicroBatcher[ServedVersion, Generated] = MicroBatcher(
            self._run, max_batch=s.generate_max_batch, max_wait_ms=s.max_wait_ms, on_batch=self._observe_batch
        )
        self._hosts: dict[str, AdapterHost] = {}  # by base model: in practice one, loaded once
        self.follower = GenerationFollower(
            s, stores.registry, self.batcher, metrics, async_redis, self.redis_health,
            on_tick=self._heartbeat, build=self._build,
        )  # fmt: skip

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.outbox.loop = asyncio.get_running_loop()
        self.batcher.start()
        self.follower.start()
        if self.settings.memory:
            self._memory_task = asyncio.get_running_loop().create_task(self._follow_memory())

    async def stop(self) -> None:
        if self._memory_task is not None:
            self._memory_task.cancel()
            try:
                await self._memory_task
            except asyncio.CancelledError:
                pass
        await self.follower.stop()
        await self.batcher.stop()
        await asyncio.to_thread(self.writer.stop)
        await leave(self.stores.replicas, self.replica)

    async def settled(self) -> None:
        await self.writer.settled()

    @property
    def version(self) -> int | None:
        return self.follower.version

    def dependencies(self) -> dict[str, dict]:
        return {"redis": self.redis_health.state(), "broker": self.broker_health.state()}

    def memory_stats(self) -> dict[str, int]:
        return {**self.memory.stats(), **{f"answers_{k}": v for k, v in self._answered.items()}}

    async def memory_state(self, sid: str) -> tuple[str, str] | None:
        """(state, reason) of one correction in this replica's generative memory, if it has it."""
        return self.memory.explain(sid)

    async def _follow_memory(self) -> None:
        """Keep the memory equal to the correction log's generative entries: the log's snapshot at start
        and again after any change (the entries are few and the rebuild is a dict; the stream only says
        when). A Redis outage keeps the last memory and retries."""
        log_ = self.stores.corrections
        position: str | None = None
        while True:
            try:
                if position is None:  # the snapshot and the rebuild off the event loop (lookups go on meanwhile)
                    position, entries = await asyncio.to_thread(log_.snapshot)
                    await asyncio.to_thread(self.memory.load, entries)
                    continue
                if await self._async_redis.xread({log_.stream: position}, count=1000, block=1000):
                    position = None  # changed: read the current entries again
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, an unreadable entry: never stop following
                if isinstance(exc, redis.RedisError):
                    self.redis_health.failed(exc)
                else:
                    log.warning("generative memory not updated: %r", exc)
                position = None
                await asyncio.sleep(1.0)

    # --- versions -----------------------------------------------------------------------------
    async def _build(self, version: int) -> ServedVersion:
        """Load the version's adapter beside the live one on the forward thread (the base model only
        the first time), then warm it up there with a two-token generation."""
        registry = self.stores.registry
        model, manifest = await self.batcher.call(lambda: registry.load(version, verify=False))
        if not isinstance(model, GenerativeLM):
            raise TypeError(f"version {version} is a {manifest.family}, not a generative model")
        host = await self.batcher.call(lambda: self._host(model.base_model))
        await self.batcher.call(lambda: host.load(model))
        engine = _Engine(f"torch-{str(host.model.dtype).removeprefix('torch.')}-{host.device.type}")
        served = ServedVersion(version, model, host, engine)
        if self.encoder is not None and not self.encoder.loaded:
            try:
                await self.batcher.call(self.encoder.load)
            except Exception as exc:  # monitoring never stops serving
                log.warning("prompt drift off: its encoder %s did not load (%r)", self.settings.base_model, exc)
                self.encoder = None
        warm = Generation([{"role": "user", "content": "Hello"}], max_new_tokens=2)
        await self.batcher.call(lambda: generate(host, model, [warm], self.settings.generate_max_prompt_tokens))
        return served

    def _host(self, base_model: str) -> AdapterHost:
        if base_model not in self._hosts:
            started = time.perf_counter()
            cache = self.settings.state_dir / "base-cache"  # a .gguf base de-quantised once per host
            self._hosts[base_model] = AdapterHost(base_model, self.device, cache_dir=cache)
            log.info("base model %s loaded in %.1f s", base_model, time.perf_counter() - started)
        return self._hosts[base_model]

    # --- generating ---------------------------------------------------------------------------
    def _run(self, served: ServedVersion, requests: list[Generation]) -> list[Generated]:
        """A micro-batch decoded on the forward thread; requests of the same version that arrive meanwhile
        join it. If the decode fails, every request that joined it (or waits to) fails with it."""
        self.joining.open(served)
        try:
            return self._generate(served, requests)
        except BaseException as exc:
            self.joining.close()  # what still waited joins ``taken``
            for request in self.joining.taken:
                if request.on_failed:
                    request.on_failed(exc)
            raise
        finally:
            self.outbox.flush()  # answers given outside a step (nothing to decode, a failure)
            self._observe_drift()

    def _generate(self, served: ServedVersion, requests: list[Generation]) -> list[Generated]:
        s = self.settings
        return generate(
            served.host, served.model, requests, s.generate_max_prompt_tokens, joiner=self.joining,
            max_batch=s.generate_max_batch, join_window_s=s.generate_join_window_s, after_step=self._after_step,
            others_waiting=lambda: self.batcher.waiting() > 0,
        )  # fmt: skip

    def _after_step(self) -> None:
        """After each step of a decode: its text to the event loop; the prompts answered meanwhile to the
        drift windows once a batch's worth waits (a decode that keeps taking newcomers may not end)."""
        self.outbox.flush()
        if len(self._drift_pending) >= self.settings.generate_max_batch:
            self._observe_drift()

    def _observe_drift(self) -> None:
        """On the forward thread, after a decode: embed the prompts answered since the last one (one
        encoder forward), then hand the window arithmetic to the side-effect thread."""
        current = self.version  # answers of a version no longer served (a swap's last ones) are not windowed
        taken = [self._drift_pending.popleft() for _ in range(len(self._drift_pending))]
        taken = [t for t in taken if t[0] == current]
        if not taken or self.encoder is None or current is None:
            return
        try:
            emb = self.encoder.embed([prompt for _, prompt, _, _ in taken])
        except Exception as exc:  # monitoring never stops serving
            log.warning("prompt drift off: the prompt encoder failed (%r)", exc)
            self.encoder = None
            return
        tokens, cut = [t[2] for t in taken], [t[3] for t in taken]
        self.writer.call(lambda: self.drift.observe(current, emb, tokens, cut))

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.forward_seconds.observe(seconds)

    async def generate(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> ServedGeneration:
        result = None
        served, generation_id = self._current(), uuid.uuid4().hex
        async for item in self._stream(served, generation_id, messages, max_new_tokens, temperature, top_p, False):
            result = item
        assert isinstance(result, ServedGeneration)
        return result

    def stream(
        self, messages: list[dict[str, str]], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0
    ) -> "GenerationStream":
        """The text as it is decoded (``str`` pieces), then the whole answer, with the version that answers
        and the generation's id known up front. Raises :class:`NotReady` before any version is loaded. A
        consumer that stops iterating (a client gone) takes its row out of the batch at the next step."""
        served = self._current()
        generation_id = uuid.uuid4().hex
        items = self._stream(served, generation_id, messages, max_new_tokens, temperature, top_p, True)
        return GenerationStream(served.version, generation_id, items)

    def _current(self) -> ServedVersion:
        served = self.follower.current
        if served is None:
            raise NotReady("no model version is loaded yet")
        return served  # type: ignore[return-value]

    async def _stream(
        self,
        served: ServedVersion,
        generation_id: str,
        messages: list[dict[str, str]],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        deltas: bool,
    ) -> AsyncIterator[str | ServedGeneration]:
        queue: asyncio.Queue = asyncio.Queue()
        hit = self.memory.lookup(messages) if self.settings.memory else None
        if hit is not None:
            result = self._from_memory(served, generation_id, messages, max_new_tokens, hit)
            if deltas and result.text:
                yield result.text
            self._answered["memory"] += 1
            self._log(result, messages)
            yield result
            return
        gone = threading.Event()
        arrived = time.perf_counter()
        prompt = generation_samples.last_user_turn(messages)
        first_token = False

        def put(item) -> None:  # on the forward thread
            self.outbox.put(queue, item)

        def done(generated: Generated) -> None:  # on the forward thread: windowed after this very decode
            if generated.finish_reason != "cancelled":
                cut = generated.finish_reason == "length"
                self._drift_pending.append((served.version, prompt, generated.completion_tokens, cut))
            put(generated)

        request = Generation(
            messages,
            max_new_tokens,
            temperature,
            top_p,
            on_delta=(lambda d: put(d)) if deltas else None,
            on_done=done,
            on_failed=lambda exc: put(exc),
            cancelled=gone.is_set,
        )
        if self.joining.offer(served, request):
            self.gen_metrics.joined.inc()
        else:  # no decode of this version runs, or it is full: a batch of its own
            batch = asyncio.ensure_future(self.batcher.submit(served, [request]))
            batch.add_done_callback(_retrieved)  # a client gone before its batch failed leaves nothing unread
            batch.add_done_callback(queue.put_nowait)  # a failed batch (its exception) ends the wait too
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    if not first_token:
                        first_token = True
                        self.gen_metrics.first_token.observe(time.perf_counter() - arrived)
                    yield item
                    continue
                if isinstance(item, BaseException):
                    raise item  # the decode it joined failed
                generated = item.result()[0] if isinstance(item, asyncio.Future) else item
                break
        finally:
            gone.set()
        if not first_token:
            self.gen_metrics.first_token.observe(time.perf_counter() - arrived)
        self.gen_metrics.latency.observe(time.perf_counter() - arrived)
        result = ServedGeneration(
            generation_id,
            generated.text,
            served.version,
            "length" if generated.finish_reason == "length" else "stop",
            generated.prompt_tokens,
            generated.completion_tokens,
        )
        self.gen_metrics.requests.labels(str(served.version)).inc()
        self.gen_metrics.tokens.labels(str(served.version)).inc(generated.completion_tokens)
        self._answered["model"] += 1
        self._log(result, messages)
        yield result

    def _from_memory(
        self, served: ServedVersion, generation_id: str, messages: list[dict[str, str]], max_new_tokens: int,
        hit: GenerativeHit,
    ) -> ServedGeneration:  # fmt: skip
        """The taught answer, cut to ``max_new_tokens`` like a generation (the tokenizer only: no torch)."""
        tok = served.host.tokenizer
        ids = tok(hit.answer, add_special_tokens=False)["input_ids"]
        text, reason = (hit.answer, "stop") if len(ids) <= max_new_tokens else (tok.decode(ids[:max_new_tokens]), "length")
        prompt = prompt_ids(tok, messages, self.settings.generate_max_prompt_tokens)
        return ServedGeneration(
            generation_id, text, served.version, reason, len(prompt), min(len(ids), max_new_tokens),
            source="memory", memory_event_id=hit.event_id, memory_sid=hit.sid,
        )  # fmt: skip

    def _log(self, result: ServedGeneration, messages: list[dict[str, str]]) -> None:
        """The generation in the prediction log (what feedback on it resolves), on the side-effect thread."""
        chat = [{"role": m["role"], "content": mask_pii(m["content"])} for m in messages]
        record = PredictionRecord(
            prediction_id=result.generation_id,
            text=generation_samples.encode_chat(chat),
            label="",
            score=0.0,
            version=result.model_version,
            answer=result.text,
            memory_sid=result.memory_sid,  # a thumbs down or a correction on it makes the memory forget it
        )

        def write() -> None:
            if not self.redis_health.allow():
                self.metrics.side_effects_dropped.labels("prediction_log").inc()
                return
            try:
                self.stores.predictions.record_many([record])
            except redis.RedisError as exc:
                self.redis_health.failed(exc)
                self.metrics.side_effects_dropped.labels("prediction_log").inc()
            else:
                self.redis_health.succeeded()

        self.writer.call(write)

    async def _heartbeat(self) -> None:
        current = self.follower.current
        beat = Heartbeat(
            self.replica, self.version, time.time(), self.follower.last_load_error,
            memory=self.memory_stats() if self.settings.memory else None,
            engine=current.engine_name if current else None,
        )  # fmt: skip
        if not self.redis_health.allow():
            return
        try:
            await asyncio.to_thread(self.stores.replicas.beat, beat)
        except redis.RedisError as exc:
            self.redis_health.failed(exc)
        else:
            self.redis_health.succeeded()
