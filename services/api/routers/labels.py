"""Feedback screening in numbers (open) and new-label approval (admin)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Path

from online.contract import BufferResponse, FeedbackStats, LabelApproved
from services.api.admin import require_admin
from services.api.deps import AdminDep

api = APIRouter(tags=["feedback"])
_ADMIN = {401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}}


@api.get("/v1/feedback/stats", response_model=FeedbackStats)
async def feedback_stats(admin: AdminDep) -> FeedbackStats:
    """Held feedback per kind of reason and per source, new labels waiting to go live, quarantined and
    trusted sources, approved labels."""
    return await asyncio.to_thread(admin.feedback_stats)


@api.get("/v1/buffer", response_model=BufferResponse)
async def buffer_stats(admin: AdminDep) -> BufferResponse:
    """The replay buffer per label: stored, new since the last round, duplicates, dead-lettered, evicted
    (rows only for labels stored; events refused under other names are only counted)."""
    return await asyncio.to_thread(admin.buffer)


@api.post(
    "/v1/labels/{label}/approve", response_model=LabelApproved, dependencies=[Depends(require_admin)], responses=_ADMIN
)
async def approve_label(admin: AdminDep, label: str = Path(min_length=1, max_length=200)) -> LabelApproved:
    """Let a new label go live: remembered for good; its pending examples are trained by the next round."""
    return await asyncio.to_thread(admin.approve_label, label)
