"""FastAPI application factory: wiring only. Behaviour lives in the service layer."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from online import __version__
from online.connections import async_redis_client
from online.contract import (
    ValidationErrorOut,
    ValidationIssue,
    error_field,
    feedback_body_model,
    predict_request_model,
)
from online.generate_contract import chat_request_model, generate_request_model
from online.lifecycle.store import StoreUnavailable
from online.serving.batcher import Overloaded
from online.serving.generation import GenerationService
from online.serving.metrics import ApiMetrics, worker_stopped
from online.serving.service import ModelService, NotReady
from online.settings import Settings
from online.wiring.stores import Stores
from services.admin.local import LocalAdmin
from services.api import tracing
from services.api.access import AccessLog
from services.api.admin import client_address
from services.api.intake import FeedbackIntake, RateLimited, Unavailable
from services.api.limits import AnonymousRefusals, BodySizeLimit, FeedbackGate, PredictRateLimit
from services.api.routers import (
    canary,
    dashboard,
    drift,
    feedback,
    forget,
    generate,
    health,
    labels,
    models,
    predict,
    quarantine,
    review,
    shadow,
    training,
)

log = logging.getLogger("online.api")


def _issue(error: dict) -> ValidationIssue:
    """One validation error as the 422 names it: the field's dotted path, or ``body`` for a body that is
    not JSON at all (whose location is a character offset, not a field)."""
    if error.get("type") == "json_invalid":
        at = error["loc"][-1]
        why = (error.get("ctx") or {}).get("error", "")
        return ValidationIssue(field="body", reason=f"not valid JSON (at character {at}): {why}".rstrip(": "))
    return ValidationIssue(field=error_field(error["loc"], error.get("type", "")), reason=error["msg"])


WORKER_READY_S = 180.0  # the longest a worker waits for its first version before it takes connections


async def _until_serving(service: ModelService | GenerationService, stores: Stores, timeout_s: float) -> None:
    """Until the service serves the registry's live version (none yet, or Redis away: at once). A worker
    of `online serve --workers N` only accepts connections once its lifespan started, so a request is
    never handed to a worker still loading its model while another one serves (the port is shared)."""
    try:
        live = await asyncio.to_thread(stores.registry.live)
    except redis.RedisError:
        return
    deadline = time.monotonic() + timeout_s
    while live is not None and service.version is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def create_app(settings: Settings) -> FastAPI:
    metrics = ApiMetrics()
    generating = settings.task == "generate"  # a causal LM answering prompts, not the classifier

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stores = Stores.from_settings(settings, role="serving")
        async_client = async_redis_client(settings)
        service = (GenerationService if generating else ModelService)(stores, metrics, async_client)
        app.state.stores = stores
        app.state.admin = LocalAdmin(stores)
        app.state.service = service
        app.state.intake = FeedbackIntake(stores, service.redis_health, service.broker_health)
        await service.start()
        if settings.api_workers > 1:  # one of several on a shared port: it takes connections once it serves
            await _until_serving(service, stores, WORKER_READY_S)
        try:
            yield
        finally:
            await service.stop()
            worker_stopped()
            await asyncio.to_thread(app.state.intake.close)
            await async_client.aclose()
            stores.close()
            if provider := getattr(app.state, "tracer_provider", None):
                provider.shutdown()  # the last spans are exported, not dropped

    app = FastAPI(
        title="online",
        summary="A continual-learning text classifier with a feedback loop.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    request_model = predict_request_model(settings)
    if not generating:
        app.add_middleware(predict.PredictFastPath, request_model=request_model)  # innermost: after the checks
    app.add_middleware(
        PredictRateLimit,
        per_s=settings.predict_rate_limit,
        refusal_delay_s=settings.predict_refusal_delay_s,
        per_client_concurrency=settings.predict_client_concurrency,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    refusals = AnonymousRefusals()  # outside the body limit, which reads the body: the gate refuses unread
    app.add_middleware(FeedbackGate, settings=settings, refusals=refusals)
    tag = tracing.tag_request if settings.otel_traces else None
    app.add_middleware(  # outermost of ours: sees every answer
        AccessLog, enabled=settings.access_log, tag=tag, max_per_s=settings.access_log_max_per_s
    )
    if settings.otel_traces:
        tracing.instrument(app)
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )

    @app.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"feedback not accepted: {exc}; retry with the same event_ids"},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(StoreUnavailable)
    async def _store(_: Request, exc: StoreUnavailable) -> JSONResponse:
        # e.g. a promotion to a version this replica has not cached while the object store is down
        return JSONResponse(
            {"detail": f"model store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "10"}
        )

    @app.exception_handler(RateLimited)
    async def _rate(request: Request, exc: RateLimited) -> JSONResponse:
        if exc.until:  # its client address ran out of anonymous budget: the gate refuses the rest of the window
            refusals.refuse(client_address(request), exc.until)
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = [_issue(e) for e in exc.errors()]
        body = ValidationErrorOut(detail="; ".join(f"{i.field}: {i.reason}" for i in issues), errors=issues)
        return JSONResponse(body.model_dump(), status_code=422)

    def openapi() -> dict:
        """FastAPI's schema, with its 422 body replaced by the one the handler above sends."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            ours = ValidationErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(ours.pop("$defs", {}))
            components["HTTPValidationError"] = ours
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    if generating:
        app.include_router(generate.router(settings, generate_request_model(settings), chat_request_model(settings)))
    else:
        app.include_router(predict.router(request_model))
    app.include_router(feedback.router(feedback_body_model(settings)))
    app.include_router(models.api)
    app.include_router(training.api)
    # for generations: live accuracy per version (the share judged good), feedback signals and volume;
    # the input-drift window is the classifier's (prompt drift for generations: later)
    app.include_router(drift.api)
    app.include_router(quarantine.api)
    app.include_router(forget.api)
    app.include_router(labels.api)
    app.include_router(feedback.status_router())  # after /v1/feedback/stats, which its path would match
    app.include_router(review.api)
    app.include_router(shadow.api)
    app.include_router(canary.api)
    app.include_router(dashboard.api)
    app.include_router(health.api)
    return app
