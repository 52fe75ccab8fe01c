from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from online.contract import DriftReport
from services.api.deps import AdminDep, ServiceDep

api = APIRouter(tags=["monitoring"])


@api.get("/v1/drift", response_model=DriftReport, response_model_exclude_unset=True)
async def drift(
    admin: AdminDep,
    service: ServiceDep,
    history: int = Query(0, ge=0, le=2000, description="Past windows to include."),
) -> DriftReport:
    """Drift signals with their thresholds and alerts: input drift (kNN distance rate, MMD test),
    out-of-scope rate, prediction shift (Jensen-Shannon), live accuracy per version from feedback, and
    feedback volume. ``replicas`` holds each replica's latest window; ``history`` past windows."""
    return await asyncio.to_thread(admin.drift, history, service.window)
