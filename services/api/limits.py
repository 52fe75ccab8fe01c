"""Limits enforced before the application sees a request: body size (413), the predict rate (429), and
the feedback gate (401/403/429 from the headers alone).

:class:`BodySizeLimit`: a pure ASGI middleware: a declared ``Content-Length`` over the limit is refused at
once; otherwise the body is read here, counting as it streams (so a chunked body cannot slip past), and
handed on intact. Bodies are small by design (the default limit is 1 MB), so reading them first costs
nothing.

:class:`PredictRateLimit`: a token bucket per client address for ``POST /v1/predict`` on this replica
(``predict_rate_limit`` a second, bursts of twice that), in process: no Redis round trip on the hot path.
With N replicas behind a balancer a client may get up to N times the rate; the compose layout's nginx
limits per client in front of them all.

A client also has at most ``per_client_concurrency`` predictions in the replica at a time; the rest
wait their turn in the event loop (queued, not refused; each waiting call took a token, so a client's
waiting calls are bounded by its burst and rate). Without that bound a flooding client's admitted
calls arrive in waves (its connections come back together) and fill whole batches, so an honest text
waits behind a forward of 64 of the flood's; with it, the flood's share of any batch is bounded. A
rate-limited client's own work still flows at its full rate (a few in flight suffice at a batch's
latency). Both are per-client limits, off together when ``predict_rate_limit`` is 0 (one trusted load
generator, or a gateway that limits clients itself).

A refusal is answered after half to all of ``refusal_delay_s`` (at most its Retry-After), not at once.
A flooding client is usually closed-loop (N connections, each sending again as soon as it is answered): refused at once,
it gets hundreds of refusals a second, and the parsing, the answers and its own client's work take the
cores the honest clients' predictions need (issue 31: honest p99 13 -> 421 ms on 2 cores). Held for a
second, each connection costs one refusal a second. At most ``MAX_DELAYED`` refusals wait at a time
(a waiting refusal is a parked coroutine, but an open-loop flood of new connections should still meet
a bound); past it they are answered at once.

:class:`FeedbackGate`: anonymous feedback from a client address that is over its budget for the
current one-second window (events or characters a second per address, counted in Redis by
``services.api.intake``) is refused here, before its body is read or parsed. Redis counts every call of
the window, refused ones too, so the rest of that window is refused there anyway: the gate only answers
it without the work. That work is what a burst of ~100 KB bodies costs the event loop (about 3 ms a
call to read, parse, validate and count one: honest predictions waited behind it, issue 31's long-texts
row at 2.01x and 2.94x). A call with the admin token or a feedback key is not anonymous (its budget is
its source's) and goes through; a wrong token or key is answered here (401/403, the route's answer)
rather than after its body is parsed, since the route would refuse it unread anyway, and no budget counts
such calls. The gate tells them apart as the route does (``credential_of``). Per replica: behind a
balancer each replica parses one call of an over-budget address before it refuses the rest.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from online.settings import Settings
from services.api.admin import credential_of


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                replay: list[Message] = [message]
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class PredictRateLimit:
    MAX_CLIENTS = 10_000  # tracked addresses; past it, idle buckets (full again) are forgotten
    MAX_DELAYED = 4096  # refusals waiting out their delay at once

    def __init__(
        self,
        app: ASGIApp,
        per_s: float,
        path: str = "/v1/predict",
        refusal_delay_s: float = 0.0,
        per_client_concurrency: int = 0,
    ) -> None:
        self.app = app
        self.rate = per_s
        self.refusal_delay_s = refusal_delay_s
        self.per_client_concurrency = per_client_concurrency  # 0: no bound
        self._delayed = 0
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}  # address -> (its slots, calls using them)
        self.burst = max(2.0 * per_s, 1.0)
        self.path = path
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def _take(self, address: str, now: float) -> float:
        """0 if the call may go ahead, else the seconds until it could."""
        tokens, at = self._buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_CLIENTS:
                self._prune(now)
            return 0.0
        self._buckets[address] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [a for a, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for a in full:
            del self._buckets[a]
        while len(self._buckets) > self.MAX_CLIENTS:  # all busy: the oldest go
            del self._buckets[next(iter(self._buckets))]

    async def _served(self, address: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The call, once one of its client's ``per_client_concurrency`` slots is free."""
        if self.per_client_concurrency <= 0:
            await self.app(scope, receive, send)
            return
        slots, users = self._slots.get(address) or (asyncio.Semaphore(self.per_client_concurrency), 0)
        self._slots[address] = (slots, users + 1)
        try:
            async with slots:
                await self.app(scope, receive, send)
        finally:
            slots, users = self._slots[address]
            if users <= 1:
                del self._slots[address]  # bounded by the clients with a call in the replica
            else:
                self._slots[address] = (slots, users - 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.rate <= 0 or scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else ""
        wait = self._take(address, time.monotonic())
        if wait <= 0:
            await self._served(address, scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        body = json.dumps(
            {"detail": f"over the predict rate limit ({self.rate:g}/s per client); retry in {retry} s"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry).encode()),
        ]
        if self.refusal_delay_s > 0 and self._delayed < self.MAX_DELAYED:
            self._delayed += 1
            try:
                # jittered, so a flood's connections do not all come back in the same millisecond
                await asyncio.sleep(min(self.refusal_delay_s, retry) * random.uniform(0.5, 1.0))
            finally:
                self._delayed -= 1
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class AnonymousRefusals:
    """Client addresses whose anonymous feedback is refused until the end of the window their budget ran
    out in. Set where the budget's refusal is answered (the app's handler for ``RateLimited``), read by
    :class:`FeedbackGate`; in process, so per replica like the predict limit. Kept on the monotonic clock
    (a wall-clock step must not stretch a refusal), in order of expiry, bounded."""

    MAX_ADDRESSES = 10_000

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # address -> monotonic end of its refusal; oldest end first

    def refuse(self, address: str, until: float, now: float | None = None) -> None:
        """``until``: the wall-clock end of the window (Redis's windows are wall-clock seconds)."""
        mono = time.monotonic() if now is None else now
        end = mono + min(max(until - time.time(), 0.0), 1.0)  # a window is one second at most
        end = max(end, self._until.pop(address, 0.0))
        self._until[address] = end  # re-inserted: the dict stays in order of (nearly) increasing end
        while self._until:
            first, first_end = next(iter(self._until.items()))
            if first_end > mono and len(self._until) <= self.MAX_ADDRESSES:
                break
            del self._until[first]  # expired, or over the bound: the refusal ending soonest goes

    def left(self, address: str, now: float | None = None) -> float:
        """Seconds this address stays refused (0: not refused)."""
        end = self._until.get(address)
        if end is None:
            return 0.0
        now = time.monotonic() if now is None else now
        if end <= now:
            del self._until[address]
            return 0.0
        return end - now


class FeedbackGate:
    """See the module doc: ``POST /v1/feedback`` answered from its headers alone when they settle it: a
    wrong token or key (401/403, as the route would), or an anonymous client address over budget (429)."""

    def __init__(
        self, app: ASGIApp, settings: Settings, refusals: AnonymousRefusals, path: str = "/v1/feedback"
    ) -> None:
        self.app = app
        self.settings = settings
        self.refusals = refusals
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else ""
        try:
            _, credential = credential_of(
                self.settings, _header(scope, b"authorization"), _header(scope, b"x-api-key"), address
            )
        except HTTPException as exc:  # the route's own answer, without reading a body it would not use
            await _answer(send, exc.status_code, str(exc.detail))
            return
        left = self.refusals.left(address) if not credential.level else 0.0
        if left <= 0:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(left))
        s = self.settings
        detail = (
            f"client address {address} is over its anonymous feedback rate limit ({s.feedback_client_rate_limit} "
            f"events or {s.feedback_chars_rate_limit:,} characters of text per second); retry in {retry} s"
        )
        await _answer(send, 429, detail, [(b"retry-after", str(retry).encode())])


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's ``request.headers.get`` (the route's view) reads it."""
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == name), None)


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
