from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

api = APIRouter(tags=["models"])


@api.get("/v1/shadow")
async def shadow(request: Request) -> dict:
    """The candidate running in shadow (if any): its share of traffic, agreement with live, and accuracy
    from feedback on the shadowed requests, next to live's on the same requests."""
    service = request.app.state.service

    def read() -> dict:
        slot = service.registry.shadow()
        if not slot:
            return {"shadow": None}
        st = service.shadow_ledger.stats(slot["version"])
        return {
            "shadow": slot,
            "loaded_by_this_replica": service.shadow is not None and service.shadow.version == slot["version"],
            "requests": st.requests,
            "agreement": st.agreement,
            "judged": st.judged,
            "shadow_accuracy": st.shadow_accuracy,
            "live_accuracy_same_requests": st.live_accuracy,
        }

    return await asyncio.to_thread(read)
