from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query

from online.contract import ReviewItemOut, ReviewResponse
from services.api.admin import require_reviewer
from services.api.deps import StoresDep, settled

api = APIRouter(tags=["review"])


@api.get(
    "/v1/review",
    response_model=ReviewResponse,
    dependencies=[Depends(require_reviewer), Depends(settled)],
    responses={401: {"description": "No token"}, 403: {"description": "Wrong token or review disabled"}},
)
async def review(stores: StoresDep, limit: int = Query(20, ge=1, le=200)) -> ReviewResponse:
    """Predictions worth a human label: the least sure (small top-2 margin) or farthest from the training
    data, chosen diverse in embedding space. Answer one with an ordinary label event that names its
    ``prediction_id``; that takes it off the queue. Needs the admin or the reviewer token: it shows
    user texts."""
    queue = stores.review
    items, size = await asyncio.to_thread(lambda: (queue.pick(limit), queue.size()))
    return ReviewResponse(queued=size, items=[ReviewItemOut(**i.public()) for i in items])
