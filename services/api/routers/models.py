from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query

from online.contract import LiveChangeOut, ModelDetail, ModelsResponse, PromoteRequest, RollbackRequest, RoundsResponse
from services.admin.backend import NotFound, Refused
from services.api.admin import require_admin
from services.api.deps import AdminDep, ServiceDep

api = APIRouter(tags=["models"])
_ADMIN = {401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}}


@api.get("/v1/rounds", response_model=RoundsResponse)
async def rounds(admin: AdminDep, limit: int = Query(100, ge=1, le=1000)) -> RoundsResponse:
    """The last continual rounds that made a version, oldest first: status, timings and what each
    trained on (new, held out, rehearsed, quarantined), for the dashboard and scripts."""
    return await asyncio.to_thread(admin.rounds, limit)


@api.get("/v1/models", response_model=ModelsResponse)
async def models(admin: AdminDep, service: ServiceDep) -> ModelsResponse:
    return await asyncio.to_thread(admin.models, service.version)


@api.get("/v1/models/{version}", response_model=ModelDetail, responses={404: {"description": "No such version"}})
async def model(version: int, admin: AdminDep) -> ModelDetail:
    """One version: its gate report check by check (with the int8 engine's check), round statistics,
    artifacts and live accuracy from feedback."""
    try:
        return await asyncio.to_thread(admin.model, version)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@api.post("/v1/models/rollback", response_model=LiveChangeOut, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def rollback(body: RollbackRequest, admin: AdminDep) -> LiveChangeOut:
    """Point the live alias back (default: the live version's parent); every replica swaps."""
    try:
        return await asyncio.to_thread(admin.rollback, body.to, body.reason)
    except Refused as exc:
        raise HTTPException(409, str(exc)) from exc


@api.post("/v1/models/promote", response_model=LiveChangeOut, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def promote(body: PromoteRequest, admin: AdminDep) -> LiveChangeOut:
    """Make a published version live (after checking its weights); every replica swaps to it."""
    try:
        return await asyncio.to_thread(admin.promote, body.version, body.reason or "manual promotion (API)")
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except Refused as exc:
        raise HTTPException(409, str(exc)) from exc
