"""Request ids and the access log: one line per request, with its status and duration.

A pure ASGI middleware (outermost, so a 413 or a 422 is logged too). The id comes from the caller's
``X-Request-ID`` when it is a sane token (a proxy or client that traces its calls), else a new one; it
is returned in the response's ``X-Request-ID`` and attached to every log line written while the request
is served (``online.logs.request_id``). Uvicorn's own access log stays off: this one carries the id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from online.logs import request_id

log = logging.getLogger("online.access")

HEADER = b"x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")


def incoming_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's id when it is a sane token, else a fresh one (never echo arbitrary bytes into logs)."""
    given = dict(headers).get(HEADER, b"").decode("latin-1")
    return given if _SANE.match(given) else uuid.uuid4().hex


class AccessLog:
    def __init__(self, app: ASGIApp, enabled: bool = True, tag: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.enabled = enabled  # request ids are always given; the line per request is optional
        self.tag = tag  # e.g. put the id on the request's trace span (services.api.tracing)

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
            if self.enabled:
                self._log(scope, status, time.perf_counter() - started, rid)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, rid: str) -> None:
        client = scope.get("client")
        log.info(
                "%s %s %d %.1f ms",
            scope["method"], scope["path"], status, 1000 * seconds,
            extra={
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(1000 * seconds, 2),
                "client": f"{client[0]}:{client[1]}" if client else None,
            },
        )  # fmt: skip
