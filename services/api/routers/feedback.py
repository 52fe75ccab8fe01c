from fastapi import APIRouter, Request

from services.api.schemas import FeedbackAccepted, FeedbackBatch


def router(body_model: type) -> APIRouter:
    api = APIRouter(tags=["feedback"])

    @api.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={429: {"description": "Rate limited"}, 503: {"description": "Broker unavailable"}},
    )
    async def feedback(body: body_model, request: Request) -> FeedbackAccepted:  # type: ignore[valid-type]
        """One feedback event or `{"events": [...]}`. 202 only once the broker acknowledged all of them."""
        events = list(body.events) if isinstance(body, FeedbackBatch) else [body]
        await request.app.state.feedback.submit(events)
        return FeedbackAccepted(accepted=len(events), event_ids=[e.event_id for e in events])

    return api
