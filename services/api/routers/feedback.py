from fastapi import APIRouter, Depends, HTTPException, Path, Request

from online.contract import FeedbackAccepted, FeedbackBatch, FeedbackStatus
from online.credentials import Credential
from services.api.admin import feedback_credential
from services.api.deps import IntakeDep, ServiceDep, SettingsDep, StoresDep


def router(body_model: type) -> APIRouter:
    api = APIRouter(tags=["feedback"])

    @api.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={
            401: {"description": "API key missing or unknown, or sent to a server without keys"},
            403: {"description": "An event's source is not the key's source, or a wrong admin token"},
            429: {"description": "Rate limited"},
            503: {"description": "Broker unavailable"},
        },
    )
    async def feedback(
        request: Request,
        body: body_model,  # type: ignore[valid-type]
        intake: IntakeDep,
        who: tuple[str | None, Credential] = Depends(feedback_credential),
    ) -> FeedbackAccepted:
        """One feedback event or `{"events": [...]}`. 202 only once the broker acknowledged all of them.
        With the admin token (`Authorization: Bearer`) or a trusted feedback key it is trusted: the
        screen does not hold it. Each event's fate: `GET /v1/feedback/{event_id}` (`status_url`)."""
        source, credential = who
        events = list(body.events) if isinstance(body, FeedbackBatch) else [body]
        if source is not None:
            foreign = sorted({e.source for e in events if e.source != source})
            if foreign:
                raise HTTPException(403, f"this API key sends as source {source!r}, not {foreign[0]!r}")
        await intake.submit(events, credential)
        urls = [f"/v1/feedback/{e.event_id}" for e in events]
        return FeedbackAccepted(
            accepted=len(events), event_ids=[e.event_id for e in events], status_url=urls[0], status_urls=urls
        )

    return api


def status_router() -> APIRouter:
    """Registered after ``/v1/feedback/stats``, which the path parameter would otherwise swallow."""
    api = APIRouter(tags=["feedback"])

    @api.get(
        "/v1/feedback/{event_id}",
        response_model=FeedbackStatus,
        responses={
            401: {"description": "API key missing or unknown, or sent to a server without keys"},
            403: {"description": "The event is another source's"},
        },
    )
    async def feedback_status(
        stores: StoresDep,
        service: ServiceDep,
        settings: SettingsDep,
        event_id: str = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$"),
        who: tuple[str | None, Credential] = Depends(feedback_credential),
    ) -> FeedbackStatus:
        """What became of a feedback event: accepted, stored, held (why, and what would release it),
        dead-lettered (why), answered by the correction memory, trained in version N. With feedback keys,
        a key sees only its own source's events (the admin token sees all)."""
        import asyncio

        from online.feedback.status import compose

        source, _ = who

        def read():
            record = stores.status.get(event_id)
            sid = record.get("sid", "")
            sample = stores.buffer.sample(sid) if sid else {}
            seq = int(sample.get("seq", 0) or 0)
            return record, sample, stores.buffer.cursor(), stores.status.round_of(seq) if seq else None

        record, sample, cursor, trained = await asyncio.to_thread(read)
        if source is not None and record.get("source") not in (None, source):
            raise HTTPException(403, "this event is another source's")
        memory = await service.memory_state(record.get("sid", "")) if record.get("sid") else None
        return compose(event_id, record, sample, cursor, trained, memory, settings)

    return api
