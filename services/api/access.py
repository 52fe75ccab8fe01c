"""Request ids and the access log: one line per request, with its status and duration.

A pure ASGI middleware (outermost, so a 413 or a 422 is logged too). The id comes from the caller's
``X-Request-ID`` when it is a sane token (a proxy or client that traces its calls), else a new one; it
is returned in the response's ``X-Request-ID`` and attached to every log line written while the request
is served (``online.logs.request_id``). Uvicorn's own access log stays off: this one carries the id.

At high rates the line costs a fair share of a request's CPU on the event loop (a JSON log record is
tens of microseconds; measured ~50 us of ~170 us at 800 req/s): above ``max_per_s`` successful requests
a second, 1 in k of them is logged, k from the previous second's rate so that about ``max_per_s`` lines
a second are written, each with ``sample_1_in: k`` (what it stands for: counts stay reconstructible).
Load refusals (429 over a rate limit, 503 a full queue) are sampled the same way, on a budget of their
own: a flooding client is refused hundreds of times a second, and a line for each would make the
refusal cost what it refuses. Every other error (status >= 400) is always logged; ``max_per_s=0`` logs
every line.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from online.logs import request_id
from online.sampling import RateSampler

log = logging.getLogger("online.access")

HEADER = b"x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")


def incoming_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's id when it is a sane token, else a fresh one (never echo arbitrary bytes into logs)."""
    given = dict(headers).get(HEADER, b"").decode("latin-1")
    return given if _SANE.match(given) else uuid.uuid4().hex


REFUSALS = (429, 503)  # load shedding: sampled like successes, on a budget of their own


class AccessLog:
    def __init__(
        self,
        app: ASGIApp,
        enabled: bool = True,
        tag: Callable[[str], None] | None = None,
        max_per_s: float = 0.0,
    ) -> None:
        self.app = app
        self.enabled = enabled  # request ids are always given; the line per request is optional
        self.tag = tag  # e.g. put the id on the request's trace span (services.api.tracing)
        self.max_per_s = max_per_s  # 0: every line
        self._ok = RateSampler(max_per_s)
        self._refused = RateSampler(max_per_s)

    def _sample(self, status: int) -> int | None:
        """1 for a line to write in full, k for one that stands for k requests, None for none."""
        if not self.max_per_s:
            return 1
        if status in REFUSALS:
            return self._refused.take()
        return 1 if status >= 400 else self._ok.take()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_id(scope.get("headers", []))
        token = request_id.set(rid)
        if self.tag:
            self.tag(rid)
        started = time.perf_counter()
        status = 500  # what a request that raised before answering is logged with

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            if self.enabled and (every := self._sample(status)) is not None:
                self._log(scope, status, time.perf_counter() - started, rid, every)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, rid: str, every: int = 1) -> None:
        client = scope.get("client")
        extra = {
            "request_id": rid,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(1000 * seconds, 2),
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        if every > 1:
            extra["sample_1_in"] = every
        log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, 1000 * seconds, extra=extra)
