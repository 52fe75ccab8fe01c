"""Operators review held feedback: list (admin, it shows texts), release, drop."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query

from online.contract import HeldOut, QuarantineAction, QuarantineResponse, QuarantineResult, SourceOut
from online.feedback import quarantine
from services.api.admin import require_admin
from services.api.deps import StoresDep

api = APIRouter(tags=["quarantine"], dependencies=[Depends(require_admin)])


@api.get("/v1/quarantine", response_model=QuarantineResponse)
async def held(stores: StoresDep, limit: int = Query(200, ge=1, le=5000)) -> QuarantineResponse:
    """Held samples (oldest first) and per-source statistics: volume, contradiction rate, quarantined."""
    items, stats = await asyncio.to_thread(lambda: (stores.buffer.held(limit), stores.sources.stats()))
    return QuarantineResponse(
        held=[HeldOut(**h.__dict__) for h in items],
        sources=[
            SourceOut(
                source=s,
                events=st["events"],
                judged=st["judged"],
                contradicted=st["contradicted"],
                contradiction_rate=st["contradicted"] / st["judged"] if st["judged"] else None,
                quarantined=bool(st["quarantined"]),
            )
            for s, st in stats.items()
        ],
    )


@api.post("/v1/quarantine/release", response_model=QuarantineResult)
async def release(body: QuarantineAction, stores: StoresDep) -> QuarantineResult:
    """Release held samples (the next round trains on them); with ``source``, trust it again and
    release everything it sent that is held."""
    changed = await asyncio.to_thread(quarantine.release, stores.buffer, stores.sources, body.sids, body.source)
    return QuarantineResult(changed=changed)


@api.post("/v1/quarantine/drop", response_model=QuarantineResult)
async def drop(body: QuarantineAction, stores: StoresDep) -> QuarantineResult:
    """Delete held samples for good (with ``source``: everything it sent that is held)."""
    return QuarantineResult(
        changed=await asyncio.to_thread(quarantine.drop, stores.buffer, stores.corrections, body.sids, body.source)
    )
