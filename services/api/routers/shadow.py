from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from online.contract import ShadowResponse
from services.api.deps import AdminDep, ServiceDep, settled

api = APIRouter(tags=["models"])


@api.get("/v1/shadow", response_model=ShadowResponse, dependencies=[Depends(settled)])
async def shadow(admin: AdminDep, service: ServiceDep) -> ShadowResponse:
    """The candidate running in shadow (if any): its share of traffic, agreement with live, and accuracy
    from feedback on the shadowed requests, next to live's on the same requests."""
    loaded = service.follower.shadow
    return await asyncio.to_thread(admin.shadow, loaded.version if loaded is not None else None)
