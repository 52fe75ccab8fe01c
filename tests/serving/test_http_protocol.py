"""`online serve`'s HTTP protocol (services.api.http_protocol): an answer sent in one turn of the event
loop reaches the socket as one write, a streamed answer's parts still leave as they are sent, and a
closed connection loses nothing it was given."""

from __future__ import annotations

import asyncio

from uvicorn.config import Config
from uvicorn.server import ServerState

from services.api.http_protocol import HttpProtocol

REQUEST = b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Socket:
    """What the event loop's transport would send: each write as the socket got it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _answer(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"7")]})
    await send({"type": "http.response.body", "body": b'{"a":1}'})


async def _stream(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await asyncio.sleep(0.05)  # a token generated later
    await send({"type": "http.response.body", "body": b"second"})


async def _serve(app, requests: bytes, until: int) -> Socket:
    protocol = HttpProtocol(Config(app=app, lifespan="off"), ServerState(), {}, _loop=asyncio.get_running_loop())
    socket = Socket()
    protocol.connection_made(socket)  # type: ignore[arg-type]
    protocol.data_received(requests)
    for _ in range(200):
        if sum(w.count(b"HTTP/1.1 200") for w in socket.writes) >= until and not protocol.server_state.tasks:
            break
        await asyncio.sleep(0.01)
    return socket


def test_an_answer_is_one_write_and_keep_alive_answers_each_request():
    socket = asyncio.run(_serve(_answer, REQUEST, 1))
    assert len(socket.writes) == 1  # status line, headers and body together (uvicorn alone: two)
    assert socket.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and socket.writes[0].endswith(b'\r\n\r\n{"a":1}')

    socket = asyncio.run(_serve(_answer, REQUEST + REQUEST, 2))  # pipelined on one connection
    assert len(socket.writes) == 2 and all(w.endswith(b'{"a":1}') for w in socket.writes)


def test_a_streamed_answer_leaves_as_it_is_sent():
    async def run() -> Socket:
        socket = await _serve(_stream, REQUEST, 1)
        await asyncio.sleep(0.2)
        return socket

    socket = asyncio.run(run())
    joined = b"".join(socket.writes)
    first = next(w for w in socket.writes if b"first" in w)
    assert b"second" not in first  # the first part left before the second was sent, not held for it
    assert joined.endswith(b"second\r\n0\r\n\r\n")


def test_what_is_held_is_written_before_the_connection_closes():
    async def run() -> Socket:
        protocol = HttpProtocol(
            Config(app=_answer, lifespan="off"), ServerState(), {}, _loop=asyncio.get_running_loop()
        )
        socket = Socket()
        protocol.connection_made(socket)  # type: ignore[arg-type]
        protocol.transport.write(b"held")
        protocol.transport.close()  # in the same turn: the close writes it first
        return socket

    socket = asyncio.run(run())
    assert socket.writes == [b"held"] and socket.closed


def test_an_answer_leaves_before_what_the_app_does_after_sending_it():
    seen: list[int] = []
    socket_box: list[Socket] = []

    async def app(scope, receive, send) -> None:
        await _answer(scope, receive, send)
        seen.append(len(socket_box[0].writes))  # e.g. the access log line, written after the answer

    async def run() -> Socket:
        protocol = HttpProtocol(Config(app=app, lifespan="off"), ServerState(), {}, _loop=asyncio.get_running_loop())
        socket_box.append(Socket())
        protocol.connection_made(socket_box[0])  # type: ignore[arg-type]
        protocol.data_received(REQUEST)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        return socket_box[0]

    socket = asyncio.run(run())
    assert seen == [1] and socket.writes[0].endswith(b'{"a":1}')


def test_a_half_closed_connection_and_a_fast_stream_get_what_is_held():
    async def run() -> tuple[Socket, Socket]:
        loop = asyncio.get_running_loop()
        half_closed = Socket()
        protocol = HttpProtocol(Config(app=_answer, lifespan="off"), ServerState(), {}, _loop=loop)
        protocol.connection_made(half_closed)  # type: ignore[arg-type]
        protocol.transport.write(b"part of a stream")
        protocol.eof_received()  # the loop closes the socket itself when this returns
        half_closed.close()

        fast = Socket()
        protocol = HttpProtocol(Config(app=_answer, lifespan="off"), ServerState(), {}, _loop=loop)
        protocol.connection_made(fast)  # type: ignore[arg-type]
        for _ in range(100):  # 100 KB in one turn: past the high-water mark, written at once
            protocol.transport.write(bytearray(b"x" * 1000))
        return half_closed, fast

    half_closed, fast = asyncio.run(run())
    assert half_closed.writes == [b"part of a stream"]
    assert fast.writes and len(fast.writes[0]) >= 64 * 1024 and all(isinstance(w, bytes) for w in fast.writes)


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer():
    async def run() -> tuple[Socket, bool | None]:
        protocol = HttpProtocol(
            Config(app=_stream, lifespan="off"), ServerState(), {}, _loop=asyncio.get_running_loop()
        )
        socket = Socket()
        protocol.connection_made(socket)  # type: ignore[arg-type]
        protocol.data_received(REQUEST)
        kept = protocol.eof_received()  # the answer takes 50 ms (uvicorn alone: the loop closes now)
        for _ in range(100):
            if socket.closed:
                break
            await asyncio.sleep(0.01)
        return socket, kept

    socket, kept = asyncio.run(run())
    assert kept is True
    assert b"".join(socket.writes).endswith(b"second\r\n0\r\n\r\n") and socket.closed  # answered, then closed
