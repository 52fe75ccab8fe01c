"""FastAPI application factory: wiring only. Behaviour lives in the service layer."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import redis.asyncio as aredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from online.connections import redis_client, redis_url
from online.control import TrainingControl
from online.live_accuracy import LiveAccuracy
from online.prediction_log import PredictionLog
from online.registry import ModelRegistry
from online.review import ReviewQueue
from online.settings import Settings
from services.api.drift import DriftMonitor
from services.api.feedback import BrokerUnavailable, FeedbackIntake, RateLimited
from services.api.limits import BodySizeLimit
from services.api.metrics import ApiMetrics
from services.api.routers import (
    dashboard,
    drift,
    feedback,
    health,
    models,
    predict,
    quarantine,
    review,
    shadow,
    training,
)
from services.api.schemas import feedback_body_model, predict_request_model
from services.api.service import ModelService, NotReady

log = logging.getLogger("online.api")


def create_app(settings: Settings) -> FastAPI:
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = redis_client(settings)
        async_client = aredis.Redis.from_url(redis_url(settings), decode_responses=True)
        registry = ModelRegistry(client, settings.models_dir, settings.key_prefix)
        service = ModelService(
            settings,
            registry,
            PredictionLog(client, settings.key_prefix, settings.prediction_ttl_s),
            async_client,
            metrics,
            DriftMonitor(settings, client, registry, metrics),
            ReviewQueue(client, settings.key_prefix, settings.review_capacity, settings.prediction_ttl_s),
        )
        app.state.service = service
        app.state.feedback = FeedbackIntake(settings, client)
        app.state.training = TrainingControl(client, settings.key_prefix)
        app.state.live_accuracy = LiveAccuracy(client, settings.key_prefix, settings.dedup_ttl_s)
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            await asyncio.to_thread(app.state.feedback.close)
            await async_client.aclose()
            client.close()

    app = FastAPI(
        title="online",
        summary="A continual-learning text classifier with a feedback loop.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
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

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"feedback not accepted: the broker did not acknowledge ({exc}); retry with the same event_ids"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RateLimited)
    async def _rate(_: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "reason": e["msg"]}
            for e in exc.errors()
        ]
        reason = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return JSONResponse({"detail": reason, "errors": errors}, status_code=422)

    app.include_router(predict.router(predict_request_model(settings)))
    app.include_router(feedback.router(feedback_body_model(settings)))
    app.include_router(models.api)
    app.include_router(training.api)
    app.include_router(drift.api)
    app.include_router(quarantine.api)
    app.include_router(review.api)
    app.include_router(shadow.api)
    app.include_router(dashboard.api)
    app.include_router(health.api)
    return app
