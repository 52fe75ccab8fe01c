from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from services.api.deps import StoresDep

api = APIRouter(tags=["review"])


@api.get("/v1/review")
async def review(stores: StoresDep, limit: int = Query(20, ge=1, le=200)) -> dict:
    """Predictions worth a human label: the least sure (small top-2 margin) or farthest from the training
    data, chosen diverse in embedding space. Answer one with an ordinary label event that names its
    ``prediction_id``; that takes it off the queue."""
    queue = stores.review
    items, size = await asyncio.to_thread(lambda: (queue.pick(limit), queue.size()))
    return {"queued": size, "items": [i.public() for i in items]}
