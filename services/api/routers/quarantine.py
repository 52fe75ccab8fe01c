"""Operators review held feedback: list (admin, it shows texts), release, drop."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request

from online.buffer import ReplayBuffer
from online.quarantine import SourceLedger
from services.api.admin import require_admin
from services.api.schemas import HeldOut, QuarantineAction, QuarantineResponse, QuarantineResult, SourceOut

api = APIRouter(tags=["quarantine"], dependencies=[Depends(require_admin)])


def _parts(request: Request) -> tuple[ReplayBuffer, SourceLedger]:
    s = request.app.state.settings
    client = request.app.state.service.registry.r
    return ReplayBuffer(client, s.key_prefix, s.buffer_capacity, s.dedup_ttl_s), SourceLedger(client, s.key_prefix)


@api.get("/v1/quarantine", response_model=QuarantineResponse)
async def held(request: Request, limit: int = Query(200, ge=1, le=5000)) -> QuarantineResponse:
    """Held samples (oldest first) and per-source statistics: volume, contradiction rate, quarantined."""
    buffer, ledger = _parts(request)
    items, stats = await asyncio.to_thread(lambda: (buffer.held(limit), ledger.stats()))
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
async def release(body: QuarantineAction, request: Request) -> QuarantineResult:
    """Release held samples (the next round trains on them); with ``source``, trust it again and
    release everything it sent that is held."""
    buffer, ledger = _parts(request)

    def run() -> int:
        sids = list(body.sids)
        if body.source:
            ledger.release(body.source)
            sids += [h.sid for h in buffer.held() if h.source == body.source]
        return buffer.release(sids)

    return QuarantineResult(changed=await asyncio.to_thread(run))


@api.post("/v1/quarantine/drop", response_model=QuarantineResult)
async def drop(body: QuarantineAction, request: Request) -> QuarantineResult:
    """Delete held samples for good (with ``source``: everything it sent that is held)."""
    buffer, _ = _parts(request)

    def run() -> int:
        sids = list(body.sids) + ([h.sid for h in buffer.held() if h.source == body.source] if body.source else [])
        return buffer.drop(sids)

    return QuarantineResult(changed=await asyncio.to_thread(run))
