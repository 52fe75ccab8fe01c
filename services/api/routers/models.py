from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from services.api.schemas import LiveChangeOut, ModelOut, ModelsResponse

api = APIRouter(tags=["models"])


@api.get("/v1/models", response_model=ModelsResponse)
async def models(request: Request) -> ModelsResponse:
    service = request.app.state.service
    registry = service.registry
    live, versions, history = await asyncio.to_thread(lambda: (registry.live(), registry.list(), registry.history()))
    return ModelsResponse(
        live=live,
        served_by_this_replica=service.version,
        versions=[
            ModelOut(
                version=m.version,
                parent=m.parent,
                status=m.status,
                live=m.version == live,
                created_at=m.created_at,
                labels=len(m.labels),
                metrics=m.metrics,
            )
            for m in versions
        ],
        history=[LiveChangeOut(**h.model_dump()) for h in history],
    )
