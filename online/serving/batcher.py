"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests queue up while a forward runs on a single worker thread; the next batch takes everything
waiting (up to ``max_batch`` texts). A batch that is not full waits at most ``max_wait_ms`` for company,
but only while traffic is concurrent (its model's last batch held more than one request), and only until
as many requests as that batch held are there: a lone client, who could never be joined, is served at once
instead of paying the wait on every call, and 8 steady clients go as soon as the 8th is back instead of
waiting out the deadline for a 9th. Clients answered by one forward come back one by one as the event
loop writes their answers; waiting for them all fills the next batch, which a fixed short wait did not
(batches of 23.5 texts at 32 clients: issue 34 in docs/benchmarks.md). Requests that
started on different model versions are never mixed in one forward; a request of another version waits
for the next batch without ending this one (a canary's requests interleave with live's).

A replica may run ``lanes`` forwards at once, each on a thread of its own (ONNX Runtime's int8 engine on
CPU: two single-threaded runs of one session did 1,420 texts/s on 2 cores where one run on two threads did
950, measured, issue 34). A batch then takes its share of what waits (``ceil(waiting / free lanes)``), so
32 clients become two groups of 16 whose forwards overlap the event loop's work of answering the other
group, instead of one batch of 32 with the cores idle while its answers go out. A ``call`` (a model load,
a warm-up, a memory update: work that must not run beside a forward) waits until every lane is free and
holds them all while it runs, so it still runs between batches, as with one lane.

The queue is bounded (``max_queue`` requests): past it a request is refused at once with
:class:`Overloaded` (the API answers 503 with Retry-After) instead of waiting behind work it cannot
catch up with, so a flood costs the flooder, not the memory of the replica or every caller's latency.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

M = TypeVar("M")  # the model a request is bound to (a Predictor)
R = TypeVar("R")  # one result per text


class Overloaded(RuntimeError):
    """The forward queue is full: try again shortly (``retry_after_s``)."""

    def __init__(self, waiting: int, retry_after_s: int = 1) -> None:
        super().__init__(f"{waiting} requests are waiting for the model; try again shortly")
        self.retry_after_s = retry_after_s


@dataclass
class _Item(Generic[M]):
    model: M
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[M, R]):
    def __init__(
        self,
        run: Callable[[M, list[str]], list[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        max_queue: int = 1024,
        lanes: int = 1,
        lanes_of: Callable[[M], int] | None = None,
        lane_setup: Callable[[], None] | None = None,
    ) -> None:
        self.max_queue = max_queue
        self.lanes = max(1, lanes)
        self._lanes_of = lanes_of or (lambda _: 1)  # how many batches a model may run at once
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item[M]] = asyncio.Queue()
        # calls and a lane-less model's batches: always the same thread (a second thread running torch
        # starts a second OpenMP team: every forward of the process ~2x slower, online.predictor)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._lane_pool = (
            ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="forward-lane", initializer=lane_setup)
            if self.lanes > 1
            else None
        )
        self._free = asyncio.Semaphore(self.lanes)  # a batch holds one lane; a call holds them all
        self._held = 0  # lane permits taken (by batches, calls, and calls still gathering theirs)
        self._exclusive = asyncio.Lock()  # one call at a time gathers the lanes (none half-gathered)
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._carry: deque[_Item[M]] = deque()  # taken from the queue, waiting for a batch of their model
        # requests in each model's last batch (by id: a canary's and live's alternate): was anyone else
        # around, and how many are likely to come back
        self._last_requests: dict[int, int] = {}
        self._calls = 0  # calls waiting for (or on) the forward thread

    def waiting(self) -> int:
        """Requests and calls waiting for the forward thread (read from any thread: a hint, not a count
        to rely on)."""
        return self._queue.qsize() + len(self._carry) + self._calls

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel(self._task)
        for task in list(self._running):
            await cancel(task)
        self._pool.shutdown(wait=True)
        if self._lane_pool is not None:
            self._lane_pool.shutdown(wait=True)

    async def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on a forward thread while no batch runs (on any lane): between batches, as the one
        thread that runs torch here."""
        self._calls += 1
        try:
            await self._gather_lanes()
            try:
                future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
            except BaseException:
                self._give(self.lanes)
                raise
            # the lanes come back when fn is done, not when this caller stops waiting (a cancelled call's
            # fn still runs: no batch may start beside it)
            future.add_done_callback(lambda _: self._give(self.lanes))
            return await asyncio.shield(future)
        finally:
            self._calls -= 1

    async def _take(self) -> None:
        await self._free.acquire()
        self._held += 1

    def _give(self, n: int) -> None:
        self._held -= n
        for _ in range(n):
            self._free.release()

    async def _gather_lanes(self) -> None:
        """Every lane, one by one as they come free, one gatherer at a time (two half-gathered would wait
        for each other); given back if cancelled meanwhile."""
        got = 0
        try:
            async with self._exclusive:
                while got < self.lanes:
                    await self._take()
                    got += 1
        except BaseException:
            self._give(got)
            raise

    async def submit(self, model: M, texts: list[str]) -> list[R]:
        waiting = self._queue.qsize() + len(self._carry)
        if waiting >= self.max_queue:
            raise Overloaded(waiting)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(model, texts, future))
        return await future

    async def _next_batch(self) -> list[_Item[M]]:
        """The oldest waiting request and every waiting one bound to the same model that fits; requests
        of another model (a canary's beside live's) wait, in order, for the next batch, so two models
        interleaved in the queue still get full batches each."""
        first = self._carry.popleft() if self._carry else await self._queue.get()
        batch, size = [first], len(first.texts)
        deferred: deque[_Item[M]] = deque()
        full = False
        while self._carry:  # deferred earlier: the same model's join this batch, in their order
            item = self._carry.popleft()
            if item.model is first.model and not full and size + len(item.texts) <= self.max_batch:
                batch.append(item)
                size += len(item.texts)
            else:
                full = full or item.model is first.model
                deferred.append(item)
        last = self._last_requests.get(id(first.model), 0)
        deadline = time.monotonic() + (self.max_wait if last > 1 else 0.0)
        while size < self.max_batch and not full:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if len(batch) >= last:
                    break  # as many as the last batch: whoever else comes is not this traffic's
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if item.model is not first.model:
                deferred.append(item)  # another model's: first in line for a later batch
                if len(deferred) >= self.max_batch:
                    break  # enough for a full batch of its own: do not keep it waiting longer
                continue
            if size + len(item.texts) > self.max_batch:
                deferred.append(item)
                break
            batch.append(item)
            size += len(item.texts)
        free = min(self.lanes - self._held + 1, self._lanes_of(first.model))  # with the lane it will take
        if free > 1 and len(batch) > 1:  # a share for each free lane; the rest go next, at once
            keep = math.ceil(len(batch) / free)
            deferred.extendleft(reversed(batch[keep:]))
            batch = batch[:keep]
        self._carry = deferred
        key = id(first.model)
        self._last_requests.pop(key, None)
        self._last_requests[key] = sum(not it.future.done() for it in batch)  # who may come back
        while len(self._last_requests) > 4:  # models swapped out long ago
            self._last_requests.pop(next(iter(self._last_requests)))
        return batch

    async def _loop(self) -> None:
        while True:
            if not self._carry:  # a request first (a call may take every lane meanwhile) ...
                self._carry.append(await self._queue.get())
            await self._take()  # ... then a free lane: what waits meanwhile joins the batch
            try:
                batch = await self._next_batch()
            except BaseException:
                self._give(1)
                raise
            batch = [it for it in batch if not it.future.done()]  # clients that gave up
            if not batch:
                self._give(1)
                continue
            held = 1
            if self.lanes > 1 and self._lanes_of(batch[0].model) == 1:  # runs alone (torch): every lane,
                self._give(1)  # gathered like a call's (holding one while waiting could deadlock)
                await self._gather_lanes()
                held = self.lanes
            task = asyncio.get_running_loop().create_task(self._forward(batch, held))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _forward(self, batch: list[_Item[M]], held: int) -> None:
        """One batch on one lane; its answers set as soon as it is done (lanes finish in any order)."""
        try:
            texts = [t for it in batch for t in it.texts]
            started = time.perf_counter()
            try:
                pool = self._pool if held == self.lanes or self._lane_pool is None else self._lane_pool
                results = await asyncio.get_running_loop().run_in_executor(pool, self._run, batch[0].model, texts)
            except Exception as exc:  # answered per request; the loop itself never dies
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                return
            if self._on_batch:
                self._on_batch(len(texts), time.perf_counter() - started)
            offset = 0
            for it in batch:
                if not it.future.done():
                    it.future.set_result(results[offset : offset + len(it.texts)])
                offset += len(it.texts)
        finally:
            self._give(held)


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has ended (its CancelledError is the expected end)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
