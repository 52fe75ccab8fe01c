"""Operators erase a source's or a text's data (`online forget` against a running API)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException

from online.contract import ForgetRequest, ForgetResult
from services.admin.backend import Refused
from services.api.admin import require_admin
from services.api.deps import AdminDep

api = APIRouter(tags=["privacy"], dependencies=[Depends(require_admin)])


@api.post("/v1/admin/forget", response_model=ForgetResult)
async def forget(body: ForgetRequest, admin: AdminDep) -> ForgetResult:
    """Erase everything stored of one source (or one text) from the replay buffer, the correction log and
    every replica's memory, and for a text the prediction log and the review queue; keep it out of future
    rounds. The answer says what the weights of published versions may still hold."""
    try:
        return await asyncio.to_thread(admin.forget, body.source, body.text)
    except Refused as exc:
        raise HTTPException(422, str(exc)) from exc
