from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query

from online.contract import (
    LiveChangeOut,
    ModelDetail,
    ModelOut,
    ModelsResponse,
    PromoteRequest,
    RollbackRequest,
    RoundOut,
    RoundsResponse,
)
from online.lifecycle import promotion
from online.lifecycle.registry import IntegrityError, LiveMoved, Manifest
from online.monitoring.live_accuracy import VersionAccuracy
from services.api.admin import require_admin
from services.api.deps import ServiceDep, StoresDep

api = APIRouter(tags=["models"])


def _summary(m: Manifest, live: int | None, acc: VersionAccuracy | None) -> dict:
    """The fields of :class:`ModelOut` (and of :class:`ModelDetail`, which adds to them)."""
    return {
        "version": m.version,
        "parent": m.parent,
        "status": m.status,
        "live": m.version == live,
        "created_at": m.created_at,
        "labels": len(m.labels),
        "metrics": m.metrics,
        "gate_passed": None if m.gate is None else bool(m.gate.get("passed")),
        "live_accuracy": acc.accuracy if acc else None,
        "judged": acc.n if acc else 0,
    }


def _round(m: Manifest) -> RoundOut:
    r, gate = m.round, m.gate or {}
    return RoundOut(
        version=m.version,
        parent=m.parent,
        status=m.status,
        gate_passed=gate.get("passed"),
        failed_checks=[c["name"] for c in gate.get("checks", []) if not c["passed"]],
        created_at=m.created_at,
        started_at=r.get("started_at"),
        duration_s=r.get("duration_s", 0.0),
        train_s=r.get("train_s", 0.0),
        new=r.get("new", 0),
        holdout=r.get("holdout", 0),
        rehearsed=r.get("rehearsed", 0),
        quarantined=r.get("quarantined", 0),
        added_labels=len(r.get("added_labels", [])),
        golden_accuracy=m.metrics.get("golden_accuracy"),
    )


@api.get("/v1/rounds", response_model=RoundsResponse)
async def rounds(stores: StoresDep, limit: int = Query(100, ge=1, le=1000)) -> RoundsResponse:
    """The last continual rounds that made a version, oldest first: status, timings and what each
    trained on (new, held out, rehearsed, quarantined), for the dashboard and scripts."""
    manifests = await asyncio.to_thread(stores.registry.list)
    return RoundsResponse(rounds=[_round(m) for m in manifests if m.round.get("kind") == "continual"][-limit:])


@api.get("/v1/models", response_model=ModelsResponse)
async def models(stores: StoresDep, service: ServiceDep) -> ModelsResponse:
    registry = stores.registry
    live_accuracy = stores.live_accuracy
    live, versions, history, accs = await asyncio.to_thread(
        lambda: (registry.live(), registry.list(), registry.history(), {a.version: a for a in live_accuracy.all()})
    )
    return ModelsResponse(
        live=live,
        served_by_this_replica=service.version,
        versions=[ModelOut(**_summary(m, live, accs.get(m.version))) for m in versions],
        history=[LiveChangeOut(**h.model_dump()) for h in history],
    )


@api.get("/v1/models/{version}", response_model=ModelDetail, responses={404: {"description": "No such version"}})
async def model(version: int, stores: StoresDep) -> ModelDetail:
    """One version: its gate report check by check (with the int8 engine's check), round statistics,
    artifacts and live accuracy from feedback."""
    registry = stores.registry
    try:
        m, live, acc = await asyncio.to_thread(
            lambda: (registry.get(version), registry.live(), stores.live_accuracy.get(version))
        )
    except KeyError as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from exc
    return ModelDetail(
        **_summary(m, live, acc),
        label_names=m.labels,
        base_model=m.base_model,
        sha256=m.sha256,
        artifacts=m.artifacts,
        gate=m.gate,
        round=m.round,
    )


@api.post(
    "/v1/models/rollback",
    response_model=LiveChangeOut,
    dependencies=[Depends(require_admin)],
    responses={401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}},
)
async def rollback(body: RollbackRequest, stores: StoresDep) -> LiveChangeOut:
    """Point the live alias back (default: the live version's parent); every replica swaps."""
    try:
        change = await asyncio.to_thread(promotion.rollback, stores.registry, body.to, body.reason)
    except (KeyError, ValueError, IntegrityError, LiveMoved) as exc:
        raise HTTPException(409, str(exc).strip("'\"")) from exc
    return LiveChangeOut(**change.model_dump())


@api.post(
    "/v1/models/promote",
    response_model=LiveChangeOut,
    dependencies=[Depends(require_admin)],
    responses={401: {"description": "No token"}, 403: {"description": "Wrong token or admin disabled"}},
)
async def promote(body: PromoteRequest, stores: StoresDep) -> LiveChangeOut:
    """Make a published version live (after checking its weights); every replica swaps to it."""
    reason = body.reason or "manual promotion (API)"
    try:
        change = await asyncio.to_thread(promotion.promote, stores.registry, body.version, reason)
    except KeyError as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from exc
    except (ValueError, IntegrityError, LiveMoved) as exc:
        raise HTTPException(409, str(exc)) from exc
    return LiveChangeOut(**change.model_dump())
