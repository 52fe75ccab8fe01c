"""``/v1/canary``: the canary in progress and an operator's moves on it (``online.lifecycle.canary``)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException

from online.contract import CanaryRequest, CanaryResponse, LiveChangeOut
from services.admin.backend import NotFound, Refused
from services.api.admin import require_admin
from services.api.deps import AdminDep, ServiceDep

api = APIRouter(tags=["models"])
_ADMIN = {401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}}


@api.get("/v1/canary", response_model=CanaryResponse)
async def canary(admin: AdminDep, service: ServiceDep) -> CanaryResponse:
    """The canary in progress (if any): its share and steps, its judged accuracy, sources, error rate and
    p95 latency against live's over the same window, the decision the analysis calls for now and why,
    and both accuracies per minute."""
    loaded = service.follower.canary
    return await asyncio.to_thread(admin.canary, loaded.version if loaded is not None else None)


@api.post("/v1/canary", response_model=LiveChangeOut, dependencies=[Depends(require_admin)], responses=_ADMIN)
async def canary_action(body: CanaryRequest, admin: AdminDep) -> LiveChangeOut:
    """start a published version on a share of traffic, pause or resume its steps, promote it now, or
    abort it; the move lands in the alias history with its reason."""
    try:
        return await asyncio.to_thread(admin.canary_action, body)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except Refused as exc:
        raise HTTPException(409, str(exc)) from exc
