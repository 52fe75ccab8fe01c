"""The feedback gate: an anonymous client address over its feedback budget is refused before its body is
read (a burst of ~100 KB bodies otherwise costs the event loop a parse and a validation each, issue 31),
and only anonymous calls are: the admin token and feedback keys have budgets of their own."""

from __future__ import annotations

import asyncio
import time

from pydantic import SecretStr

from services.api.limits import AnonymousRefusals, FeedbackGate


def _call(gate: FeedbackGate, address: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[str, int | None]:
    """('app', None) when the call went through to the app, else ('gate', status); the gate must not
    read the body of a call it refuses."""
    sent: list[dict] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/feedback",
        "client": (address, 5000),
        "headers": list(headers),
    }

    async def receive():
        raise AssertionError("the gate read the body of a call")

    async def send(message):
        sent.append(message)

    reached = []

    async def app(scope, receive, send):
        reached.append(True)

    gate.app = app
    asyncio.run(gate(scope, receive, send))
    if reached:
        return "app", None
    return "gate", sent[0]["status"]


def test_an_address_over_budget_is_refused_unread_and_only_while_its_window_lasts(settings):
    refusals = AnonymousRefusals()
    gate = FeedbackGate(lambda *a: None, settings, refusals)
    assert _call(gate, "10.0.0.1") == ("app", None)
    refusals.refuse("10.0.0.1", time.time() + 0.3)
    assert _call(gate, "10.0.0.1") == ("gate", 429)
    assert _call(gate, "10.0.0.2") == ("app", None)  # another address
    time.sleep(0.35)  # the window is over: the next call is counted again (in Redis, by the route)
    assert _call(gate, "10.0.0.1") == ("app", None)


def test_credentialed_calls_pass_the_gate_and_wrong_ones_meet_the_route(settings):
    s = settings.model_copy(
        update={"admin_token": SecretStr("ops-token"), "feedback_api_keys": {"agents": SecretStr("agent-key")}}
    )
    refusals = AnonymousRefusals()
    gate = FeedbackGate(lambda *a: None, s, refusals)
    refusals.refuse("10.0.0.1", time.time() + 60)
    assert _call(gate, "10.0.0.1", [(b"authorization", b"Bearer ops-token")]) == ("app", None)
    assert _call(gate, "10.0.0.1", [(b"x-api-key", b"agent-key")]) == ("app", None)
    # a wrong key or token is the route's to refuse (401/403), as for any address
    assert _call(gate, "10.0.0.1", [(b"x-api-key", b"guess")]) == ("app", None)
    open_ = settings.model_copy(update={"feedback_api_keys": {}})
    gate = FeedbackGate(lambda *a: None, open_, refusals)
    # without keys configured an X-API-Key header makes nobody less anonymous
    assert _call(gate, "10.0.0.1", [(b"x-api-key", b"anything")]) == ("gate", 429)


def test_the_refusals_stay_bounded():
    refusals = AnonymousRefusals()
    now = time.time()
    for i in range(AnonymousRefusals.MAX_ADDRESSES + 50):
        refusals.refuse(f"a{i}", now + 60)
    assert len(refusals._until) == AnonymousRefusals.MAX_ADDRESSES
    assert refusals.left(f"a{AnonymousRefusals.MAX_ADDRESSES + 49}", now) > 0
