"""Typed FastAPI dependencies: what a router may ask for, each built once in ``services.api.app``.

Routers declare ``admin: AdminDep`` (the stores turned into response models, ``services.admin.local``),
``stores: StoresDep`` or ``service: ServiceDep`` and never reach into ``app.state``
(the FastAPI full-stack template's ``deps.py`` pattern). They are ``async``: FastAPI runs a plain
``def`` dependency on its thread pool, a thread hop per request for a field read (measured in
``online bench serve``: the API's event loop spent its time handing requests to worker threads).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from online.serving.metrics import ApiMetrics
from online.serving.service import ModelService
from online.settings import Settings
from online.wiring.stores import Stores
from services.admin.local import LocalAdmin
from services.api.intake import FeedbackIntake


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_stores(request: Request) -> Stores:
    return request.app.state.stores


async def get_admin(request: Request) -> LocalAdmin:
    return request.app.state.admin


async def get_service(request: Request) -> ModelService:
    return request.app.state.service


async def get_intake(request: Request) -> FeedbackIntake:
    return request.app.state.intake


async def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


async def settled(request: Request) -> None:
    """For a route that reads this replica's own side effects (the review queue, the shadow's counts):
    wait until the Redis writes of the predictions answered so far are made (they are written just
    after each answer, off the forward thread: ``online.serving.forward.SideEffectWriter``)."""
    service = getattr(request.app.state, "service", None)
    if service is not None:
        await service.settled()


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoresDep = Annotated[Stores, Depends(get_stores)]
AdminDep = Annotated[LocalAdmin, Depends(get_admin)]
ServiceDep = Annotated[ModelService, Depends(get_service)]
IntakeDep = Annotated[FeedbackIntake, Depends(get_intake)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
