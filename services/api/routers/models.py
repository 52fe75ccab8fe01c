from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Request

from online.registry import IntegrityError
from services.api.admin import require_admin
from services.api.schemas import LiveChangeOut, ModelOut, ModelsResponse, PromoteRequest, RollbackRequest

api = APIRouter(tags=["models"])


@api.get("/v1/models", response_model=ModelsResponse)
async def models(request: Request) -> ModelsResponse:
    service = request.app.state.service
    registry = service.registry
    live_accuracy = request.app.state.live_accuracy
    live, versions, history, accs = await asyncio.to_thread(
        lambda: (registry.live(), registry.list(), registry.history(), {a.version: a for a in live_accuracy.all()})
    )
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
                gate_passed=None if m.gate is None else bool(m.gate.get("passed")),
                live_accuracy=accs[m.version].accuracy if m.version in accs else None,
                judged=accs[m.version].n if m.version in accs else 0,
            )
            for m in versions
        ],
        history=[LiveChangeOut(**h.model_dump()) for h in history],
    )


@api.post(
    "/v1/models/rollback",
    response_model=LiveChangeOut,
    dependencies=[Depends(require_admin)],
    responses={401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}},
)
async def rollback(body: RollbackRequest, request: Request) -> LiveChangeOut:
    """Point the live alias back (default: the live version's parent); every replica swaps."""
    registry = request.app.state.service.registry
    try:
        change = await asyncio.to_thread(registry.rollback, body.to, body.reason)
    except (KeyError, ValueError, IntegrityError) as exc:
        raise HTTPException(409, str(exc).strip("'\"")) from exc
    return LiveChangeOut(**change.model_dump())


@api.post(
    "/v1/models/promote",
    response_model=LiveChangeOut,
    dependencies=[Depends(require_admin)],
    responses={401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}},
)
async def promote(body: PromoteRequest, request: Request) -> LiveChangeOut:
    """Make a published version live (after checking its weights); every replica swaps to it."""
    registry = request.app.state.service.registry

    def checked_promote():
        registry.verify(body.version)
        return registry.promote(body.version, reason=body.reason or "manual promotion (API)")

    try:
        change = await asyncio.to_thread(checked_promote)
    except KeyError as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from exc
    except (ValueError, IntegrityError) as exc:
        raise HTTPException(409, str(exc)) from exc
    return LiveChangeOut(**change.model_dump())
