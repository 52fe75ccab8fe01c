"""``POST /v1/predict``: the hot path.

The answer is built as JSON bytes (:func:`predict_body`), not through the response model: FastAPI would
validate and serialise the ``PredictResponse`` it documents again on every call.

:class:`PredictFastPath` answers a well-formed call before FastAPI's routing, dependency resolution and
body handling (most of a request's CPU on the event loop besides the HTTP server's own): the body is
validated against the same request model, the service called, the same bytes sent. Anything else (a
body that does not validate, another content type, no model loaded yet) is handed on untouched to the
route below, which answers it as it always did (the 422 naming the field, the 503 with Retry-After),
so the route stays the one definition of the endpoint and of its OpenAPI document.
"""

import json
from collections.abc import Sequence

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from online.contract import PredictRequestBase, PredictResponse
from online.serving.batcher import Overloaded
from online.serving.forward import ServedPrediction
from online.serving.service import NotReady
from services.api.deps import ServiceDep

PATH = "/v1/predict"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def predict_body(served: Sequence[ServedPrediction]) -> bytes:
    """The ``PredictResponse`` of ``served`` as JSON bytes (the same document, field for field)."""
    return _dumps(
        {
            "model_version": served[0].model_version,
            "predictions": [
                {
                    "prediction_id": s.prediction_id,
                    "label": s.label,
                    "score": s.score,
                    "top_k": [{"label": lab, "score": sc} for lab, sc in s.top_k],
                    "model_version": s.model_version,
                    "source": s.source,
                    "memory_event_id": s.memory_event_id,
                }
                for s in served
            ],
        }
    ).encode()


def router(request_model: type[PredictRequestBase]) -> APIRouter:
    api = APIRouter(tags=["predict"])

    @api.post(
        "/v1/predict",
        response_model=PredictResponse,  # the documented answer; the bytes are built by predict_body
        responses={
            429: {"description": "This client is over its rate limit (Retry-After)"},
            503: {"description": "No model loaded yet, or too many requests waiting (Retry-After)"},
        },
    )
    async def predict(body: request_model, service: ServiceDep) -> Response:  # type: ignore[valid-type]
        served = await service.predict(body.all_texts(), body.top_k, body.user)
        return Response(predict_body(served), media_type="application/json")

    return api


class PredictFastPath:
    """Pure ASGI middleware (innermost of the app's own, so the access log, the body limit, CORS and
    tracing still see every call) that serves a valid ``POST /v1/predict`` itself; see the module doc."""

    def __init__(self, app: ASGIApp, request_model: type[PredictRequestBase]) -> None:
        self.app = app
        self.request_model = request_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"application/json")
        if not content_type.startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the route see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = self.request_model.model_validate_json(body)
            served = await scope["app"].state.service.predict(request.all_texts(), request.top_k, request.user)  # type: ignore[attr-defined]
        except (ValidationError, NotReady, Overloaded):  # the route answers these, as documented
            replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
            await self.app(scope, _replay(replay, receive), send)
            return
        payload = predict_body(served)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed
