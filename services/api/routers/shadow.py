from __future__ import annotations

import asyncio

from fastapi import APIRouter

from online.contract import ShadowResponse
from services.api.deps import ServiceDep, StoresDep

api = APIRouter(tags=["models"])


@api.get("/v1/shadow", response_model=ShadowResponse)
async def shadow(stores: StoresDep, service: ServiceDep) -> ShadowResponse:
    """The candidate running in shadow (if any): its share of traffic, agreement with live, and accuracy
    from feedback on the shadowed requests, next to live's on the same requests."""

    def read() -> ShadowResponse:
        slot = stores.registry.shadow()
        if not slot:
            return ShadowResponse()
        st = stores.shadow.stats(slot.version)
        loaded = service.follower.shadow
        return ShadowResponse(
            shadow=slot,
            loaded_by_this_replica=loaded is not None and loaded.version == slot.version,
            requests=st.requests,
            agreement=st.agreement,
            judged=st.judged,
            shadow_accuracy=st.shadow_accuracy,
            live_accuracy_same_requests=st.live_accuracy,
        )

    return await asyncio.to_thread(read)
