from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from online.contract import DriftReport
from services.admin.drift import drift_report
from services.api.deps import ServiceDep, StoresDep

api = APIRouter(tags=["monitoring"])


@api.get("/v1/drift", response_model=DriftReport, response_model_exclude_unset=True)
async def drift(
    stores: StoresDep,
    service: ServiceDep,
    history: int = Query(0, ge=0, le=2000, description="Past windows to include."),
) -> DriftReport:
    """Drift signals with their thresholds and alerts: input drift (kNN distance rate, MMD test),
    out-of-scope rate, prediction shift (Jensen-Shannon), live accuracy per version from feedback, and
    feedback volume. ``replicas`` holds each replica's latest window; ``history`` past windows."""
    report = await asyncio.to_thread(drift_report, stores, service.window, history)
    return DriftReport.model_validate(report)
