"""The feedback gate: an anonymous client address over its feedback budget is refused before its body is
read (a burst of ~100 KB bodies otherwise costs the event loop a parse and a validation each, issue 31),
and only anonymous calls are: the admin token and feedback keys have budgets of their own. A wrong token
or key is answered from the headers too (the route would refuse it unread; no budget counts it)."""

from __future__ import annotations

import asyncio
import time

from pydantic import SecretStr

from online.settings import Settings
from services.api.limits import AnonymousRefusals, FeedbackGate

SETTINGS = Settings(admin_token=SecretStr("ops-token"))


def _call(gate: FeedbackGate, address: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[str, int | None]:
    """('app', None) when the call went through to the app, else ('gate', status); the gate must not
    read the body of a call it answers."""
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
    return ("app", None) if reached else ("gate", sent[0]["status"])


def test_an_address_over_budget_is_refused_unread_and_only_while_its_window_lasts():
    refusals = AnonymousRefusals()
    gate = FeedbackGate(None, SETTINGS, refusals)
    assert _call(gate, "10.0.0.1") == ("app", None)
    refusals.refuse("10.0.0.1", time.time() + 1)
    assert _call(gate, "10.0.0.1") == ("gate", 429)
    assert _call(gate, "10.0.0.2") == ("app", None)  # another address
    now = time.monotonic()
    assert 0 < refusals.left("10.0.0.1", now) <= 1.0
    assert refusals.left("10.0.0.1", now + 1.01) == 0  # the window is over: counted in Redis again


def test_a_refusal_lasts_one_window_at_most_whatever_the_wall_clock_says():
    refusals = AnonymousRefusals()
    refusals.refuse("10.0.0.1", time.time() + 3600)  # a wall clock stepped back an hour since the window
    assert 0 < refusals.left("10.0.0.1") <= 1.0
    refusals.refuse("10.0.0.2", time.time() - 5)  # a window already over
    assert refusals.left("10.0.0.2") == 0


def test_credentialed_calls_pass_the_gate_and_wrong_ones_are_answered_unread():
    s = SETTINGS.model_copy(update={"feedback_api_keys": {"agents": SecretStr("agent-key")}})
    refusals = AnonymousRefusals()
    gate = FeedbackGate(None, s, refusals)
    refusals.refuse("10.0.0.1", time.time() + 1)
    assert _call(gate, "10.0.0.1", [(b"authorization", b"Bearer ops-token")]) == ("app", None)
    assert _call(gate, "10.0.0.1", [(b"x-api-key", b"agent-key")]) == ("app", None)
    # a wrong key or token: the route's answer, for any address, without the body
    assert _call(gate, "10.0.0.1", [(b"x-api-key", b"guess")]) == ("gate", 401)
    assert _call(gate, "10.0.0.9", [(b"authorization", b"Bearer guess")]) == ("gate", 403)
    assert _call(gate, "10.0.0.9") == ("gate", 401)  # keys configured: none given
    # duplicated headers: the first counts, as the route reads them
    two = [(b"authorization", b"Bearer ops-token"), (b"authorization", b"Bearer other")]
    assert _call(gate, "10.0.0.1", two) == ("app", None)
    # without keys configured an X-API-Key header is a client configured for another server: told so
    gate = FeedbackGate(None, SETTINGS.model_copy(update={"feedback_api_keys": {}}), refusals)
    assert _call(gate, "10.0.0.1", [(b"x-api-key", b"anything")]) == ("gate", 401)
    assert _call(gate, "10.0.0.1") == ("gate", 429)


def test_the_refusals_stay_bounded_and_the_soonest_ending_go_first():
    refusals = AnonymousRefusals()
    now = time.monotonic()
    for i in range(AnonymousRefusals.MAX_ADDRESSES + 50):
        refusals.refuse(f"a{i}", time.time() + 1, now=now)
    refusals.refuse("a0", time.time() + 1, now=now + 0.5)  # renewed: now the last to end
    assert len(refusals._until) == AnonymousRefusals.MAX_ADDRESSES
    assert refusals.left("a0", now + 0.6) > 0 and refusals.left("a1", now) == 0
