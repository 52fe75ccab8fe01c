"""An API replica follows the correction log into the memory of the version it serves.

At start (and after any Redis trouble) it loads the log's snapshot, then follows its change stream with a
blocking read, so a taught text is answered from memory about as soon as the consumer stored it. Texts
are embedded with the served version's own encoder on the forward thread (the one thread running torch
here), in small chunks between batches (at most ``CHUNK`` texts and ``CHUNK_CHARS`` characters: a
chunk of long texts is a short one, so a request waits at most one short forward); the log's texts are
masked already, so nothing is masked again here. Before a hot swap, :meth:`MemoryFollower.prepare` builds
the new version's memory, so the swap changes weights and memory together; the swap waits for it at
most ``memory_prepare_timeout_s`` (a full memory on a slow replica must not keep a version, or the
replica's first one, from serving): past it the build goes on in the background and the version's
memory answers once built. A memory that fails to build never stops a swap (the version serves
without one, logged, and it is built again after).

Every ``model_poll_s`` (and at once when the quarantine removes something) it re-reads the quarantined
and trusted sources, the approved labels and the samples the buffer's quarantine holds: the policy each
memory's states depend on. Learning and forgetting entries run on the forward thread; deciding states
and rebuilding the index (O(entries)) run on a worker thread and are published in one assignment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import redis
import redis.asyncio as aredis

from online import generation_samples as gen
from online.feedback.buffer import ReplayBuffer
from online.feedback.labels import LabelBook, LabelRules
from online.feedback.quarantine import ScreenConfig, SourceLedger
from online.lifecycle.registry import IntegrityError, ModelRegistry
from online.memory.index import STATES, CorrectionMemory, Policy
from online.memory.log import Correction, CorrectionLog, parse_change
from online.predictor import Predictor
from online.reference import REFERENCE_FILE, Reference
from online.serving.batcher import MicroBatcher, cancel
from online.serving.breaker import Breaker
from online.serving.metrics import ApiMetrics
from online.settings import Settings

log = logging.getLogger("online.serving.memory")

CHUNK = 64  # texts embedded per forward-thread call: a request waits at most one chunk's forward
CHUNK_CHARS = 32_000  # ...and at most this many characters (long texts make short chunks)
READ_BLOCK_MS = 1000
READ_COUNT = 1000  # changes per stream read


class MemoryStores(Protocol):
    """The stores a replica's correction memory follows (the wiring's ``Stores`` has them all)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> ModelRegistry: ...

    @property
    def buffer(self) -> ReplayBuffer: ...

    @property
    def sources(self) -> SourceLedger: ...

    @property
    def labels(self) -> LabelBook: ...

    @property
    def corrections(self) -> CorrectionLog: ...


class MemoryFollower:
    def __init__(
        self,
        stores: MemoryStores,
        batcher: MicroBatcher,
        async_redis: aredis.Redis,
        redis_health: Breaker,
        metrics: ApiMetrics,
        served: Callable[[], Predictor | None],
    ) -> None:
        s = stores.settings
        self.s = s
        self.stores = stores
        self.log = stores.corrections
        self.batcher = batcher
        self._aredis = async_redis
        self.redis_health = redis_health
        self.metrics = metrics
        self._served = served
        self.rules = LabelRules.from_settings(s)
        self.screen_cfg = ScreenConfig.from_settings(s) if s.quarantine else None
        self.entries: dict[str, Correction] = {}
        self.memories: dict[int, tuple[CorrectionMemory, Predictor]] = {}  # served (+ one being prepared)
        self.policy = Policy()
        self._position: str | None = None  # None: (re)load the snapshot
        self._policy_due = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._building: dict[int, asyncio.Task] = {}  # version -> its memory being built
        self._preparing: int | None = None  # the version a swap waits for (or went on without)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        # redis-py may turn a cancellation inside a blocking read into a connection error, which the loop
        # treats as an outage and retries: the flag ends it whatever the cancellation became
        self._stopping = True
        await cancel(self._task)
        for task in list(self._building.values()):
            await cancel(task)

    def memory_for(self, version: int) -> CorrectionMemory | None:
        held = self.memories.get(version)
        return held[0] if held else None

    def stats(self) -> dict[str, int]:
        """The served version's memory by state, for the heartbeat (`online status`)."""
        predictor = self._served()
        memory = self.memory_for(predictor.version) if predictor else None
        return dict(memory.counts()) if memory else {state: 0 for state in STATES}

    # --- building a version's memory ----------------------------------------------------------
    async def prepare(self, predictor: Predictor) -> None:
        """Build ``predictor``'s memory before it goes live (called by the version follower). The swap
        waits for it up to ``memory_prepare_timeout_s``: embedding N entries costs N/64 short
        forward-thread calls between batches; past the timeout the build goes on in the background."""
        version = predictor.version
        self._preparing = version
        task = self._building.get(version)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._build(predictor))
            self._building[version] = task
            task.add_done_callback(lambda _: self._building.pop(version, None))
        done, _ = await asyncio.wait({task}, timeout=self.s.memory_prepare_timeout_s)
        if not done:
            log.warning(
                "version %s: correction memory still building after %.0f s; the version serves without it "
                "until it is built",
                version,
                self.s.memory_prepare_timeout_s,
            )

    async def _build(self, predictor: Predictor) -> None:
        try:
            reference = await asyncio.to_thread(self._reference, predictor.version)
            async with self._lock:
                memory = await self.batcher.call(
                    lambda: CorrectionMemory(
                        predictor.labels, self.s.memory_similarity, self.rules, self.screen_cfg, reference
                    )
                )
                await self._fill(memory, predictor)
                served = self._served()
                if served is None or predictor.version in (served.version, self._preparing):
                    self.memories[predictor.version] = (memory, predictor)  # not a superseded version's
            self._gauges()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # serving goes on without a memory for this version
            log.error("version %s: correction memory not built (%r); it serves without one", predictor.version, exc)

    async def swapped(self, predictor: Predictor) -> None:
        """Keep only the served version's memory; build it if its preparation failed. (No lock: one
        assignment, and a build still running in the background must not hold up the swap.)"""
        self.memories = {v: held for v, held in self.memories.items() if v == predictor.version}
        if predictor.version not in self.memories and predictor.version not in self._building:
            await self.prepare(predictor)
        self._gauges()

    def _reference(self, version: int) -> Reference | None:
        try:
            path = self.stores.registry.optional_artifact(version, REFERENCE_FILE)
        except IntegrityError as exc:  # the screen then works without neighbours, as for a version without one
            log.error("version %s: drift reference refused (%s)", version, exc)
            return None
        return Reference.load(path) if path else None

    async def _fill(self, memory: CorrectionMemory, predictor: Predictor) -> None:
        """Bring ``memory`` to the log's entries: embed what is new, forget what left, decide states.
        Every touch of the memory runs on the forward thread; the caller holds the lock."""
        entries, policy = dict(self.entries), self.policy
        todo = await self.batcher.call(lambda: memory.missing(entries))
        for chunk in _chunks(todo):
            await self.batcher.call(lambda chunk=chunk: _learn(memory, predictor, chunk))

        await self.batcher.call(lambda: memory.forget_all_but(set(entries)))
        # deciding states and indexing is O(entries): off the forward thread (lookups read the old view
        # until it is published); nothing else touches this memory meanwhile (the caller holds the lock)
        await asyncio.to_thread(memory.refresh, policy)

    async def _sync(self) -> None:
        """Every memory held (the served version's, and one being prepared for a swap) to the log."""
        async with self._lock:
            for memory, predictor in list(self.memories.values()):
                await self._fill(memory, predictor)
        self._gauges()

    def _gauges(self) -> None:
        for state, n in self.stats().items():
            self.metrics.memory_entries.labels(state).set(n)

    # --- following the log --------------------------------------------------------------------
    async def _follow(self) -> None:
        while not self._stopping:
            try:
                changed = await self._read()
                if time.monotonic() >= self._policy_due:
                    changed |= await self._read_policy()
            except (redis.RedisError, OSError) as exc:
                self.redis_health.failed(exc)  # logged once per outage there
                self._position = None  # reload the snapshot when Redis is back: changes may be lost
                await asyncio.sleep(min(self.s.model_poll_s, 1.0))
                continue
            except Exception as exc:  # an unreadable change: never stop following
                log.warning("correction log not read (%r); reloading its snapshot", exc)
                self._position = None
                await asyncio.sleep(min(self.s.model_poll_s, 1.0))
                continue
            if changed:
                try:
                    await self._sync()
                except Exception as exc:  # never stop following; the next change retries
                    log.warning("correction memory not updated: %r", exc)

    async def _read(self) -> bool:
        """One step of following; True when the entries changed."""
        if self._position is None:
            position, entries = await asyncio.to_thread(self.log.snapshot)
            self.entries = {e.sid: e for e in entries if e.label not in gen.LABELS}  # generative: its own memory
            self._position = position
            log.info("correction memory: %d entries loaded", len(entries))
            return True
        reply = await self._aredis.xread({self.log.stream: self._position}, count=READ_COUNT, block=READ_BLOCK_MS)
        if not reply:
            return False
        changes = [parse_change(sid, fields) for sid, fields in reply[0][1]]
        if len(changes) == READ_COUNT:  # behind: maybe past the stream's cap (one extra read, only then)
            first = await asyncio.to_thread(self.log.first_position)
            if first is not None and self._position != "0-0" and _older(self._position, first):
                self._position = None  # changes may be lost: reload the snapshot
                return False
        for change in changes:
            if change.entry is not None:
                if change.entry.label not in gen.LABELS:
                    self.entries[change.entry.sid] = change.entry
            elif change.sid is not None:
                self.entries.pop(change.sid, None)
                if change.reason.startswith("quarantine"):
                    self._policy_due = 0.0  # a source may have been quarantined with it
        self._position = changes[-1].stream_id
        return True

    async def _read_policy(self) -> bool:
        def read() -> Policy:
            return Policy(
                frozenset(self.stores.sources.quarantined()),
                frozenset(self.stores.labels.approved()),
                frozenset(self.stores.buffer.held_ids()),
            )

        policy = await asyncio.to_thread(read)
        self._policy_due = time.monotonic() + self.s.model_poll_s
        if policy == self.policy:
            return False
        self.policy = policy
        return True


def _chunks(entries: list[Correction]) -> list[list[Correction]]:
    """``entries`` in forward-thread slices of at most ``CHUNK`` texts and ``CHUNK_CHARS`` characters."""
    out: list[list[Correction]] = []
    chunk: list[Correction] = []
    chars = 0
    for e in entries:
        if chunk and (len(chunk) >= CHUNK or chars + len(e.text) > CHUNK_CHARS):
            out.append(chunk)
            chunk, chars = [], 0
        chunk.append(e)
        chars += len(e.text)
    if chunk:
        out.append(chunk)
    return out


def _learn(memory: CorrectionMemory, predictor: Predictor, chunk: list[Correction]) -> None:
    probs, emb = predictor.probabilities_and_embeddings([e.text for e in chunk])
    memory.learn(chunk, probs.numpy(), emb.numpy())


def _older(a: str, b: str) -> bool:
    """Stream id ``a`` is before ``b``."""
    ma, sa = (int(x) for x in a.split("-"))
    mb, sb = (int(x) for x in b.split("-"))
    return (ma, sa) < (mb, sb)
