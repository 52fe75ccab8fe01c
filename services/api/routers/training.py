"""Operator switches for the trainer: pause and resume (admin), state (open)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from online.contract import PauseRequest, TrainingState
from services.api.admin import require_admin
from services.api.deps import StoresDep

api = APIRouter(tags=["training"])
_ADMIN = {401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}}


@api.get("/v1/training", response_model=TrainingState)
async def training_state(stores: StoresDep) -> TrainingState:
    return await asyncio.to_thread(stores.control.state)


@api.post("/v1/training/pause", response_model=TrainingState, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def pause(body: PauseRequest, stores: StoresDep) -> TrainingState:
    """No new round starts until resumed (a round already running finishes and is gated as usual)."""
    control = stores.control
    await asyncio.to_thread(control.pause, body.reason or "paused (API)")
    return await asyncio.to_thread(control.state)


@api.post("/v1/training/resume", response_model=TrainingState, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def resume(stores: StoresDep) -> TrainingState:
    control = stores.control
    await asyncio.to_thread(control.resume)
    return await asyncio.to_thread(control.state)
