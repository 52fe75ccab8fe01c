from fastapi import APIRouter

from online.contract import LabelScore, PredictionOut, PredictRequestBase, PredictResponse
from services.api.deps import ServiceDep


def router(request_model: type[PredictRequestBase]) -> APIRouter:
    api = APIRouter(tags=["predict"])

    @api.post("/v1/predict", response_model=PredictResponse, responses={503: {"description": "No model loaded yet"}})
    async def predict(body: request_model, service: ServiceDep) -> PredictResponse:  # type: ignore[valid-type]
        served = await service.predict(body.all_texts(), body.top_k)
        return PredictResponse(
            model_version=served[0].model_version,
            predictions=[
                PredictionOut(
                    prediction_id=s.prediction_id,
                    label=s.label,
                    score=s.score,
                    top_k=[LabelScore(label=lab, score=sc) for lab, sc in s.top_k],
                    model_version=s.model_version,
                    source=s.source,
                    memory_event_id=s.memory_event_id,
                )
                for s in served
            ],
        )

    return api
