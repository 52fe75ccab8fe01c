"""`online.client`: typed calls against a running API process (sync and async), and retries that honour
Retry-After and resend the same event ids."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from online.client import ApiError, AsyncClient, Client
from online.contract import FeedbackAccepted, ModelsResponse, PredictResponse
from online.events import LabelEvent
from online.model import TextClassifier
from online.wiring.stores import Stores
from services.supervisor import api_process
from tests import helpers


def test_client_against_a_running_api(kafka_settings):
    s = kafka_settings.model_copy(update={"admin_token": "s3cret"})
    registry = Stores.from_settings(s).registry
    first = helpers.live_untrained(s, ("refund", "退款"))
    with api_process(s) as url:
        with Client(url, admin_token="s3cret") as api:
            one = api.predict("where is my money")
            assert isinstance(one, PredictResponse) and one.model_version == first
            many = api.predict(["a", "b", "c"], top_k=2)
            assert len(many.predictions) == 3 and all(len(p.top_k) == 2 for p in many.predictions)

            api.batch_size = 2
            events = [{"kind": "label", "text": f"text {i}", "label": "退款", "source": "sdk"} for i in range(3)]
            accepted = api.feedback(events)
            assert [a.accepted for a in accepted] == [2, 1] and all(isinstance(a, FeedbackAccepted) for a in accepted)
            pid = one.predictions[0].prediction_id
            assert api.thumbs(pid, "down", source="sdk", label="refund")[0].accepted == 1
            assert api.label("give it back", "refund", source="sdk", prediction_id=pid)[0].accepted == 1

            second = registry.publish(TextClassifier.from_base(s.base_model, ["refund"]), parent=first)
            registry.promote(second.version)
            models = api.models()
            assert isinstance(models, ModelsResponse) and models.live == second.version
            change = api.rollback(reason="sdk test")
            assert change.version == first and change.previous == second.version
            helpers.wait_for(lambda: api.predict("x").model_version == first, what="the replica back on v1")
            assert isinstance(api.drift().alerts, list) and api.review(limit=5).queued >= 0
            assert api.feedback_stats().held.total == 0
            with pytest.raises(ApiError) as err:
                api.predict("   ")  # a blank text is refused with the server's reason, not retried
            assert err.value.status == 422

        with Client(url) as anonymous, pytest.raises(ApiError) as err:
            anonymous.rollback()
        assert err.value.status == 401 and "admin token" in str(err.value)

        async def use_async() -> tuple[PredictResponse, list[FeedbackAccepted], ModelsResponse]:
            async with AsyncClient(url) as api:
                return (
                    await api.predict("async hello"),
                    await api.feedback([LabelEvent(kind="label", text="x", label="refund", source="sdk")]),
                    await api.models(),
                )

        pred, acc, models = asyncio.run(use_async())
        assert pred.model_version == first and acc[0].accepted == 1 and models.live == first


def test_retries_honour_retry_after_and_resend_the_same_event_ids():
    seen: list[list[str]] = []
    answers = iter([(503, {"Retry-After": "0"}), (429, {"Retry-After": "0.01"}), (202, {})])

    def handler(request: httpx.Request) -> httpx.Response:
        ids = [e["event_id"] for e in json.loads(request.content)["events"]]
        seen.append(ids)
        status, headers = next(answers)
        body = {"accepted": len(ids), "event_ids": ids} if status == 202 else {"detail": "busy"}
        return httpx.Response(status, json=body, headers=headers)

    events = [{"kind": "label", "text": "t", "label": "a", "source": "s"}, {"kind": "label", "text": "u", "label": "b", "source": "s"}]  # fmt: skip
    with Client("http://api", transport=httpx.MockTransport(handler)) as api:
        accepted = api.feedback(events)
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2] and len(set(seen[0])) == 2
    assert accepted[0].event_ids == seen[0]

    calls = []

    def refuses(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(422, json={"detail": "text: must not be blank"})

    with Client("http://api", transport=httpx.MockTransport(refuses)) as api, pytest.raises(ApiError) as err:
        api.predict("x")
    assert len(calls) == 1 and err.value.detail == "text: must not be blank"

    async def gives_up() -> None:
        transport = httpx.MockTransport(
            lambda r: httpx.Response(503, json={"detail": "down"}, headers={"Retry-After": "0"})
        )
        async with AsyncClient("http://api", transport=transport, retries=2) as api:
            await api.predict("x")

    with pytest.raises(ApiError) as err:
        asyncio.run(gives_up())
    assert err.value.status == 503


def test_an_admin_call_that_may_have_reached_the_server_is_not_sent_twice():
    calls = []

    def times_out(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("no answer", request=request)

    with Client("http://api", admin_token="t", transport=httpx.MockTransport(times_out)) as api:
        with pytest.raises(httpx.ReadTimeout):
            api.rollback()  # a resent rollback could go back two versions
        assert len(calls) == 1
        with pytest.raises(httpx.ReadTimeout):
            api.predict("x")  # safe to resend
        assert len(calls) == 1 + 1 + api.retries


def test_an_admin_call_behind_a_proxy_that_answered_502_is_not_sent_twice():
    calls = []

    def gateway(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(502, json={"detail": "bad gateway"})  # the upstream may have acted on it

    with Client("http://api", admin_token="t", transport=httpx.MockTransport(gateway), max_wait_s=0.01) as api:
        with pytest.raises(ApiError) as err:
            api.rollback()
        assert err.value.status == 502 and calls == ["/v1/models/rollback"]
        with pytest.raises(ApiError):
            api.models()  # a read is safe to resend
        assert calls.count("/v1/models") == 1 + api.retries
