from fastapi import APIRouter, Depends, HTTPException

from online.contract import FeedbackAccepted, FeedbackBatch
from services.api.admin import feedback_source
from services.api.deps import IntakeDep


def router(body_model: type) -> APIRouter:
    api = APIRouter(tags=["feedback"])

    @api.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={
            401: {"description": "API key missing or unknown (when keys are configured)"},
            403: {"description": "An event's source is not the key's source"},
            429: {"description": "Rate limited"},
            503: {"description": "Broker unavailable"},
        },
    )
    async def feedback(
        body: body_model,  # type: ignore[valid-type]
        intake: IntakeDep,
        source: str | None = Depends(feedback_source),
    ) -> FeedbackAccepted:
        """One feedback event or `{"events": [...]}`. 202 only once the broker acknowledged all of them."""
        events = list(body.events) if isinstance(body, FeedbackBatch) else [body]
        if source is not None:
            foreign = sorted({e.source for e in events if e.source != source})
            if foreign:
                raise HTTPException(403, f"this API key sends as source {source!r}, not {foreign[0]!r}")
        await intake.submit(events)
        return FeedbackAccepted(accepted=len(events), event_ids=[e.event_id for e in events])

    return api
