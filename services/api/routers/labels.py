"""Feedback screening in numbers (open) and new-label approval (admin)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from fastapi import APIRouter, Depends, Path

from online.contract import BufferLabelOut, BufferResponse, FeedbackStats, LabelApproved
from online.feedback import quarantine
from services.api.admin import require_admin
from services.api.deps import StoresDep

api = APIRouter(tags=["feedback"])
_ADMIN = {401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}}


@api.get("/v1/feedback/stats", response_model=FeedbackStats)
async def feedback_stats(stores: StoresDep) -> FeedbackStats:
    """Held feedback per kind of reason and per source, new labels waiting to go live, quarantined and
    trusted sources, approved labels."""
    summary, queued = await asyncio.to_thread(
        lambda: (
            quarantine.screening_summary(stores.buffer, stores.sources, stores.labels.approved()),
            stores.review.size(),
        )
    )
    return FeedbackStats.model_validate(summary | {"review_queued": queued})


@api.get("/v1/buffer", response_model=BufferResponse)
async def buffer_stats(stores: StoresDep) -> BufferResponse:
    """The replay buffer per label: stored, new since the last round, duplicates, dead-lettered, evicted."""
    buffer = stores.buffer

    def read() -> BufferResponse:
        # Open to every caller: per-label rows only for labels stored, not for any string a sender
        # tried (refused labels are dead-lettered under their name and only counted here).
        stored, stats = buffer.labels(), buffer.stats()
        return BufferResponse(
            capacity=buffer.capacity,
            samples=buffer.size(),
            new=buffer.new_count(),
            held=buffer.held_count(),
            labels=[BufferLabelOut(**asdict(st)) for st in stats if st.label in stored],
            dead_lettered_other=sum(st.dead_lettered for st in stats if st.label not in stored),
        )

    return await asyncio.to_thread(read)


@api.post(
    "/v1/labels/{label}/approve", response_model=LabelApproved, dependencies=[Depends(require_admin)], responses=_ADMIN
)
async def approve_label(stores: StoresDep, label: str = Path(min_length=1, max_length=200)) -> LabelApproved:
    """Let a new label go live: remembered for good; its pending examples are trained by the next round."""
    new, released = await asyncio.to_thread(quarantine.approve_label, stores.labels, stores.buffer, label)
    return LabelApproved(label=label, newly_approved=new, released=released)
