"""Operator switches for the trainer: pause and resume (admin), state (open)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from online.contract import PauseRequest, TrainingState
from services.api.admin import require_admin
from services.api.deps import AdminDep

api = APIRouter(tags=["training"])
_ADMIN = {401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}}


@api.get("/v1/training", response_model=TrainingState)
async def training_state(admin: AdminDep) -> TrainingState:
    return await asyncio.to_thread(admin.training)


@api.post("/v1/training/pause", response_model=TrainingState, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def pause(admin: AdminDep, body: PauseRequest | None = None) -> TrainingState:
    """No new round starts until resumed (a round already running finishes and is gated as usual). The
    body (a reason) is optional: `curl -X POST .../v1/training/pause` pauses."""
    return await asyncio.to_thread(admin.pause, (body.reason if body else "") or "paused (API)")


@api.post("/v1/training/resume", response_model=TrainingState, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def resume(admin: AdminDep) -> TrainingState:
    return await asyncio.to_thread(admin.resume)
