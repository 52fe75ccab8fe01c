"""Operators review held feedback: list (admin, it shows texts), release, drop."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query

from online.contract import QuarantineAction, QuarantineResponse, QuarantineResult
from services.api.admin import require_admin
from services.api.deps import AdminDep

api = APIRouter(tags=["quarantine"], dependencies=[Depends(require_admin)])


@api.get("/v1/quarantine", response_model=QuarantineResponse)
async def held(admin: AdminDep, limit: int = Query(200, ge=1, le=5000)) -> QuarantineResponse:
    """Held samples (oldest first) and per-source statistics: volume, contradiction rate, quarantined."""
    return await asyncio.to_thread(admin.quarantine, limit)


@api.post("/v1/quarantine/release", response_model=QuarantineResult)
async def release(body: QuarantineAction, admin: AdminDep) -> QuarantineResult:
    """Release held samples (the next round trains on them); with ``source``, release everything it
    sent that is held and trust its feedback key from now on (its name alone earns nothing)."""
    return await asyncio.to_thread(admin.release, body.sids, body.source)


@api.post("/v1/quarantine/drop", response_model=QuarantineResult)
async def drop(body: QuarantineAction, admin: AdminDep) -> QuarantineResult:
    """Delete held samples for good (with ``source``: everything it sent that is held)."""
    return await asyncio.to_thread(admin.drop, body.sids, body.source)
