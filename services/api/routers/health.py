from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

api = APIRouter(tags=["health"])


@api.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@api.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready once a model is loaded; the detail names the version and any version that failed to load."""
    service = request.app.state.service
    body = {
        "ready": service.version is not None,
        "model_version": service.version,
        "last_load_error": service.last_load_error,
    }
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@api.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
