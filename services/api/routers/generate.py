"""``POST /v1/generate`` and the OpenAI-compatible ``POST /v1/chat/completions`` (``ONLINE_TASK=generate``).

Both go through the replica's :class:`~online.serving.generation.GenerationService`: the same micro-batched
forward thread, the same version follower, every answer naming the version that generated it and a
``generation_id`` to quote in feedback. Chat completions stream by server-sent events (``stream: true``)
in OpenAI's ``chat.completion.chunk`` shape, ending with ``data: [DONE]``, so existing clients and SDKs
work unchanged.
"""

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from online.generate_contract import (
    ChatChoice,
    ChatCompletion,
    ChatMessageOut,
    ChatRequestBase,
    GenerateRequestBase,
    GenerateResponse,
    Usage,
)
from online.serving.generation import GenerationService, GenerationStream, ServedGeneration
from online.settings import Settings

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _service(request: Request) -> GenerationService:
    return request.app.state.service


def router(
    settings: Settings, generate_model: type[GenerateRequestBase], chat_model: type[ChatRequestBase]
) -> APIRouter:
    api = APIRouter(tags=["generate"])
    default_tokens = min(128, settings.generate_max_new_tokens)

    @api.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses={503: {"description": "No model loaded yet"}},
    )
    async def generate(body: generate_model, request: Request) -> GenerateResponse:  # type: ignore[valid-type]
        """Answer a prompt (one user turn) or a chat with the live version."""
        g = await _service(request).generate(body.chat(), body.max_new_tokens, body.temperature, body.top_p)
        return GenerateResponse(
            generation_id=g.generation_id,
            text=g.text,
            model_version=g.model_version,
            finish_reason=g.finish_reason,  # type: ignore[arg-type]
            prompt_tokens=g.prompt_tokens,
            completion_tokens=g.completion_tokens,
            source=g.source,  # type: ignore[arg-type]
            memory_event_id=g.memory_event_id,
        )

    @api.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "With `stream: true`: chunks, then [DONE]."},
            503: {"description": "No model loaded yet"},
        },
    )
    async def chat_completions(body: chat_model, request: Request):  # type: ignore[valid-type]
        """OpenAI's chat completions: the live version answers whatever `model` names."""
        service = _service(request)
        model = body.model or "online"
        tokens = body.new_tokens(default_tokens)
        if not body.stream:
            g = await service.generate(body.chat(), tokens, body.temperature, body.top_p)
            return JSONResponse(_completion(g, model).model_dump())
        stream = service.stream(body.chat(), tokens, body.temperature, body.top_p)  # NotReady: 503 here
        return StreamingResponse(
            _chunks(stream, model),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return api


def _completion(g: ServedGeneration, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{g.generation_id}",
        created=int(time.time()),
        model=model,
        choices=[ChatChoice(message=ChatMessageOut(content=g.text), finish_reason=g.finish_reason)],  # type: ignore[arg-type]
        usage=Usage(
            prompt_tokens=g.prompt_tokens,
            completion_tokens=g.completion_tokens,
            total_tokens=g.prompt_tokens + g.completion_tokens,
        ),
        model_version=g.model_version,
        generation_id=g.generation_id,
        source=g.source,  # type: ignore[arg-type]
    )


async def _chunks(stream: GenerationStream, model: str) -> AsyncIterator[bytes]:
    """OpenAI's stream: a first chunk with the role, one per text delta, a last one with the finish
    reason and usage, then ``[DONE]``. Every chunk names the version and the ``generation_id`` (its ``id``
    is the one a non-streamed answer would have)."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
        body = {
            "id": f"chatcmpl-{stream.generation_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "model_version": stream.version,
            "generation_id": stream.generation_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + _dumps(body).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for item in stream:
            if isinstance(item, ServedGeneration):
                usage = {
                    "prompt_tokens": item.prompt_tokens,
                    "completion_tokens": item.completion_tokens,
                    "total_tokens": item.prompt_tokens + item.completion_tokens,
                }
                yield chunk({}, item.finish_reason, usage=usage)
            else:
                yield chunk({"content": item})
    finally:
        await stream.aclose()  # a client gone: its row leaves the batch
    yield b"data: [DONE]\n\n"
