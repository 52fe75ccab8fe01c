"""Typed FastAPI dependencies: what a router may ask for, each built once in ``services.api.app``.

Routers declare ``stores: StoresDep`` or ``service: ServiceDep`` and never reach into ``app.state``
(the FastAPI full-stack template's ``deps.py`` pattern).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from online.serving.metrics import ApiMetrics
from online.serving.service import ModelService
from online.settings import Settings
from online.stores import Stores
from services.api.intake import FeedbackIntake


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_stores(request: Request) -> Stores:
    return request.app.state.stores


def get_service(request: Request) -> ModelService:
    return request.app.state.service


def get_intake(request: Request) -> FeedbackIntake:
    return request.app.state.intake


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoresDep = Annotated[Stores, Depends(get_stores)]
ServiceDep = Annotated[ModelService, Depends(get_service)]
IntakeDep = Annotated[FeedbackIntake, Depends(get_intake)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
