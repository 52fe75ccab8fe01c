from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from online.serving.metrics import exposition
from services.api.deps import MetricsDep, ServiceDep

api = APIRouter(tags=["health"])


@api.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@api.get("/readyz")
async def readyz(service: ServiceDep) -> JSONResponse:
    """Ready once a model is loaded: predictions need nothing else, so a Redis or broker outage never
    makes a replica unready (a load balancer keeps routing predictions). ``dependencies`` tells their
    health apart; the detail also names any version that failed to load."""
    body = {
        "ready": service.version is not None,
        "dependencies": service.dependencies(),
        "model_version": service.version,
        "engine": service.follower.current.engine_name if service.follower.current else None,
        "last_load_error": service.follower.last_load_error,
        "failed_loads": [
            {"slot": slot, "version": f.version, "tries": f.failures, "given_up": f.given_up, "error": f.error}
            for slot, f in service.follower.failures.items()
        ],
    }
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@api.get("/metrics", include_in_schema=False)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(exposition(metrics.registry), media_type=CONTENT_TYPE_LATEST)
