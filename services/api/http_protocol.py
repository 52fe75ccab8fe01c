"""uvicorn's httptools protocol, with an answer's writes coalesced into one send.

uvicorn writes a response's status line and headers as soon as the app sends ``http.response.start``,
then its body at ``http.response.body``: two ``send`` calls on the socket, two TCP segments, two reads
for the client, for a 300-byte answer. :class:`CoalescingTransport` holds what is written during one turn
of the event loop and writes it at the end of that turn (``loop.call_soon``), so an app that sends
start and body without waiting in between (every JSON answer, the predict fast path) costs one send.
Nothing waits longer than the turn it was written in: a streamed answer's headers and chunks still
leave as they are sent, a whole answer leaves as soon as its last part is sent (before the app's access
log line), and more than uvicorn's high-water mark held in one turn is written at once, so the
socket's flow control still pauses a fast stream. Measured on `online serve --workers 2` at 32 clients (issue 34,
docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes of one event-loop turn reach the socket as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0  # bytes held

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data if isinstance(data, bytes) else bytes(data))  # a buffer the app may reuse
        self._size += len(data)
        if self._size >= HIGH_WATER_LIMIT:  # a stream written without a pause: the socket's flow control
            self.flush()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is held (at the end of the turn, or before the connection is closed)."""
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            self._size = 0
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._size = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def __getattr__(self, name: str) -> Any:  # everything else is the socket transport's
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`CoalescingTransport` (``Config(http=HttpProtocol)``)."""

    transport: CoalescingTransport  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        """A whole answer leaves now, not after what the app does once it sent it (the access log line)."""
        self.transport.flush()
        super().on_response_complete()

    def eof_received(self) -> bool | None:
        """The client half-closed its side (``shutdown(SHUT_WR)`` after its request, as ``nc -N`` does).
        uvicorn lets the loop close the socket at once, so an answer still being computed was never
        sent: here a request in flight is answered, then the connection closed. What is held goes first."""
        self.transport.flush()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the answer's last part closes the connection
            return True  # keep the socket open for it
        return super().eof_received()
