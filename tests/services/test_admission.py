"""Admission and the fate of feedback, on a real stack (Tansu, Redis, the consumer, the API).

- ``/v1/predict`` is rate limited per client (429 with Retry-After) and its queue is bounded (503 with
  Retry-After), so one flooding client neither grows a replica's memory nor stalls everyone;
- ``GET /v1/feedback/{event_id}`` tells what became of an event: accepted, answered by the correction
  memory, held (why, and what would release it), recorded, dead-lettered (why), unknown.
"""

from __future__ import annotations

import threading
import time
import uuid

from online.wiring.stores import Stores
from tests.helpers import ConsumerThread, live_untrained, served_app, wait_for


def test_predict_answers_429_past_a_clients_rate(settings):
    live_untrained(settings)
    update = {"predict_rate_limit": 2.0, "predict_refusal_delay_s": 0.3}
    with served_app(settings.model_copy(update=update)) as client:
        answers = [client.post("/v1/predict", json={"text": "hello there"}) for _ in range(8)]
        codes = [a.status_code for a in answers]
        assert codes[:4] == [200] * 4 and 429 in codes  # a burst of twice the rate, then refused
        refused = answers[codes.index(429)]
        assert int(refused.headers["retry-after"]) >= 1 and "rate limit" in refused.json()["detail"]
        # held before it is answered: a closed-loop flood gets a refusal a connection per delay, not
        # hundreds a second (issue 31's predict flood)
        assert refused.elapsed.total_seconds() >= 0.15
        assert client.get("/healthz").status_code == 200  # other routes are not limited


def test_predict_answers_503_when_its_queue_is_full(settings):
    live_untrained(settings)
    with served_app(settings.model_copy(update={"predict_queue_max": 1, "predict_rate_limit": 0})) as client:
        batcher = client.app.state.service.batcher
        gate = threading.Event()
        batcher._pool.submit(gate.wait, 30)  # the forward thread is busy
        results: list[int] = []

        def call() -> None:
            results.append(client.post("/v1/predict", json={"text": "hello"}).status_code)

        first = threading.Thread(target=call)
        first.start()  # taken off the queue, waiting for the forward thread
        # one batch of one request taken (the batcher keeps each model's last batch size)
        wait_for(
            lambda: list(batcher._last_requests.values()) == [1] and batcher._queue.qsize() == 0,
            what="the first one taken",
        )
        second = threading.Thread(target=call)
        second.start()
        wait_for(lambda: batcher._queue.qsize() + len(batcher._carry) == 1, what="the second waiting in the queue")
        refused = client.post("/v1/predict", json={"text": "hello"})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        gate.set()
        first.join(30)
        second.join(30)
        assert sorted(results) == [200, 200]  # what was admitted is answered


def feedback(client, event: dict) -> str:
    event = {"event_id": uuid.uuid4().hex, "source": "someone"} | event
    resp = client.post("/v1/feedback", json=event)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status_url"] == f"/v1/feedback/{event['event_id']}"
    return event["event_id"]


def state(client, event_id: str) -> dict:
    resp = client.get(f"/v1/feedback/{event_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def reaches(client, event_id: str, wanted: str) -> dict:
    return wait_for(lambda: (st := state(client, event_id))["state"] == wanted and st, what=wanted)


def test_the_fate_of_each_event_is_told(kafka_settings):
    settings = kafka_settings
    live_untrained(settings)
    with served_app(settings) as client:
        pred = client.post("/v1/predict", json={"text": "my card got declined"}).json()["predictions"][0]
        other = "b" if pred["label"] == "a" else "a"
        correction = feedback(client, {"kind": "label", "text": "my card got declined", "label": other})
        assert reaches(client, correction, "accepted")["detail"].startswith("accepted by the broker")
        assert state(client, "never-sent")["state"] == "unknown"

        with ConsumerThread(settings):
            answered = reaches(client, correction, "memory")
            assert answered["label"] == other and answered["sid"] and answered["trusted"] is False

            new_label = feedback(client, {"kind": "label", "text": "payment bounced", "label": "card_declined"})
            pending = reaches(client, new_label, "held")
            assert (
                pending["reason"].startswith("pending label")
                and "online labels approve card_declined" in pending["release"]
            )

            down = feedback(client, {"kind": "thumbs", "prediction_id": pred["prediction_id"], "vote": "down"})
            assert reaches(client, down, "recorded")["detail"].startswith("counted as a judgement")

            dead = feedback(client, {"kind": "thumbs", "prediction_id": "no-such-prediction", "vote": "up"})
            assert "unknown prediction_id" in reaches(client, dead, "dead_lettered")["reason"]

        stats = client.get("/v1/feedback/stats").json()  # not swallowed by /v1/feedback/{event_id}
        assert stats["held"]["total"] == 0 and "review_queued" in stats
        keys = Stores.from_settings(settings).keys
        ttl = Stores.from_settings(settings).redis.ttl(f"{keys.feedback_status}:e:{correction}")
        assert 0 < ttl <= settings.feedback_status_ttl_s  # every status record expires


def test_feedback_waits_when_the_untrained_backlog_is_full(settings):
    """The buffer never evicts untrained samples: past ``feedback_max_backlog`` (training paused or
    behind) feedback is refused with 503 and Retry-After rather than growing Redis without bound."""
    from fastapi.testclient import TestClient

    from online.feedback.buffer import Incoming
    from services.api.app import create_app

    s = settings.model_copy(update={"feedback_max_backlog": 3})
    Stores.from_settings(s).buffer.add([Incoming(f"e{i}", f"text {i}", "a", "x", 0.0) for i in range(3)])
    with TestClient(create_app(s)) as client:
        resp = client.post("/v1/feedback", json={"kind": "label", "text": "one more", "label": "a", "source": "x"})
        assert resp.status_code == 503 and resp.headers["retry-after"] == "30"
        assert "wait for training" in resp.json()["detail"]


def test_anonymous_feedback_is_rate_limited_per_client_not_per_invented_name(kafka_settings):
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    s = kafka_settings.model_copy(update={"feedback_client_rate_limit": 5})
    with TestClient(create_app(s)) as client:

        def call(names: list[str]):
            events = [{"kind": "label", "text": f"text {n}", "label": "a", "source": n} for n in names]
            return client.post("/v1/feedback", json={"events": events})

        assert call(["n1", "n2", "n3"]).status_code == 202
        refused = call(["n4", "n5", "n6"])  # six events this second from one client, under six names
        if refused.status_code == 202:  # the second ticked over between the calls: once more
            refused = call([f"m{i}" for i in range(6)])
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"


def test_feedback_is_budgeted_in_characters_as_well_as_events(kafka_settings):
    """Long texts cost every stage by their length: a source within its event rate but over its
    characters per second is refused with a 429 that says which budget it crossed."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    s = kafka_settings.model_copy(update={"feedback_chars_rate_limit": 5_000})
    with TestClient(create_app(s)) as client:

        def call(n: int, chars: int):
            events = [{"kind": "label", "text": "x" * chars, "label": "a", "source": "long"} for _ in range(n)]
            return client.post("/v1/feedback", json={"events": events})

        assert call(3, 1_000).status_code == 202  # 3,000 characters: within the budget
        refused = call(3, 1_000)  # 6,000 in this second
        if refused.status_code == 202:  # the second ticked over between the calls: once more
            refused = call(6, 1_000)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "characters" in refused.json()["detail"]


def test_one_client_has_a_bounded_number_of_predictions_in_the_replica_and_the_rest_wait():
    """A flood's admitted calls arrive in waves and would fill whole batches: each client address gets
    ``per_client_concurrency`` slots; its other calls wait (not refused) while another client is served."""
    import asyncio

    from services.api.limits import PredictRateLimit

    async def scenario() -> tuple[int, int, list[int]]:
        gate = asyncio.Event()
        running: dict[str, int] = {}
        peak: dict[str, int] = {}
        statuses: list[int] = []

        async def inner(scope, receive, send) -> None:
            who = scope["client"][0]
            running[who] = running.get(who, 0) + 1
            peak[who] = max(peak.get(who, 0), running[who])
            await gate.wait()
            running[who] -= 1
            await send({"type": "http.response.start", "status": 200, "headers": []})

        limiter = PredictRateLimit(inner, per_s=1000.0, per_client_concurrency=2)

        async def call(who: str) -> None:
            scope = {"type": "http", "path": "/v1/predict", "method": "POST", "client": (who, 1)}

            async def send(message) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await limiter(scope, None, send)

        flood = [asyncio.create_task(call("10.0.0.66")) for _ in range(6)]
        honest = asyncio.create_task(call("10.0.0.2"))

        async def honest_inside() -> None:
            while running.get("10.0.0.2", 0) < 1:  # the honest call gets in beside the flood's two
                await asyncio.sleep(0)

        await asyncio.wait_for(honest_inside(), 10)
        in_flood = running["10.0.0.66"]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*flood, honest), 10)
        assert limiter._slots == {}  # nobody left holding or waiting: the per-address table is empty
        return in_flood, peak["10.0.0.66"], statuses

    in_flood, peak, statuses = asyncio.run(scenario())
    assert in_flood == 2 and peak == 2
    assert statuses == [200] * 7  # the waiting ones were served, none refused


def test_an_anonymous_address_over_its_budget_is_refused_before_its_body_is_parsed(kafka_settings):
    """Once a client address is over its characters a second, the rest of that second's calls from it
    are answered 429 without reading their bodies (not even a body that is not JSON is looked at); a
    call with the admin token from the same address still goes through, one with a wrong token is
    answered 403 unread."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from services.api.app import create_app

    s = kafka_settings.model_copy(update={"feedback_chars_rate_limit": 5_000, "admin_token": SecretStr("ops-token")})
    not_json = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    unread = admin = None
    with TestClient(create_app(s)) as client:
        over = {"events": [{"kind": "label", "text": "x" * 3_000, "label": "a", "source": "long"} for _ in range(2)]}
        for _ in range(3):  # a second that ticks over between two calls: once more
            if client.post("/v1/feedback", json=over).status_code != 429:
                continue
            unread = client.post("/v1/feedback", **not_json)
            admin = client.post(
                "/v1/feedback", content=b"{not json",
                headers={"content-type": "application/json", "authorization": "Bearer ops-token"},
            )  # fmt: skip
            if unread.status_code == 429:
                break
        assert unread is not None and unread.status_code == 429 and unread.headers["retry-after"] == "1"
        assert "client address" in unread.json()["detail"] and "5,000 characters" in unread.json()["detail"]
        assert admin.status_code == 422  # parsed, and refused for what it is
        wrong = client.post("/v1/feedback", content=b"{not json",
                            headers={"content-type": "application/json", "authorization": "Bearer guess"})  # fmt: skip
        assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong admin token"


def test_only_an_anonymous_address_over_its_own_budget_is_gated(kafka_settings):
    """A source name over its budget (anyone may write a name) or a keyed caller over its source's
    budget is refused for this call only: the gate must not refuse an honest address for either."""
    from fastapi.testclient import TestClient

    from online.credentials import Credential
    from online.events import LabelEvent
    from services.api.app import create_app
    from services.api.intake import RateLimited

    s = kafka_settings.model_copy(update={"feedback_chars_rate_limit": 5_000})
    with TestClient(create_app(s)) as client:
        intake = client.app.state.intake

        def until(events: list, credential: Credential) -> float | None:
            try:
                intake._check_rate(events, credential)
            except RateLimited as exc:
                return exc.until
            return None

        def named(name: str, chars: int) -> list:
            return [LabelEvent(kind="label", text="y" * chars, label="a", source=name)]

        for attempt in range(3):  # all four calls within one second of the Redis window: else once more,
            # under fresh names and addresses (an attempt that crossed a second left counts in the next)
            started = int(time.time())
            first = until(named(f"shared{attempt}", 3_000), Credential("", f"10.0.{attempt}.1"))
            name_over = until(
                named(f"shared{attempt}", 3_000), Credential("", f"10.0.{attempt}.2")
            )  # the name's 6,000; the address's 3,000
            keyed_over = until(named(f"agents{attempt}", 6_000), Credential("key", f"10.0.{attempt}.3"))
            address_over = until(named(f"fresh{attempt}", 6_000), Credential("", f"10.0.{attempt}.4"))
            if int(time.time()) == started:
                break
        assert first is None
        assert name_over == 0.0 and keyed_over == 0.0
        assert address_over and address_over > time.time() - 1
