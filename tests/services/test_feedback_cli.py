"""`online feedback send` pieces and `online buffer stats`, end to end through the API and consumer."""

from __future__ import annotations

import json

import httpx
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from online.client import Client
from services.api.app import create_app
from services.cli import app as cli
from services.commands.feedback import read_jsonl, send
from tests.helpers import ConsumerThread, buffer_of, settings_env, total_events, wait_for


def through(app: TestClient):
    """The client's requests, answered by the app in this process."""

    def handle(request: httpx.Request) -> httpx.Response:
        got = app.request(request.method, request.url.path, content=request.content, headers=request.headers)
        return httpx.Response(got.status_code, headers={"content-type": "application/json"}, content=got.content)

    return httpx.MockTransport(handle)


def test_jsonl_file_through_api_and_buffer_stats(kafka_settings, tmp_path, monkeypatch):
    lines = [json.dumps({"kind": "label", "text": f"play song {i}", "label": "play_music"}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"kind": "label", "text": "", "label": "x"}))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines))
    events, errors = read_jsonl(path, default_source="cli-test")
    assert len(events) == 5 and [e.split(":")[0] for e in errors] == ["line 3", "line 5"]
    assert all(e.source == "cli-test" for e in events)

    with TestClient(create_app(kafka_settings)) as http, Client("http://api", transport=through(http)) as api:
        send(api, events, batch=2)
        send(api, events, batch=5)  # a retry of the same ids is harmless
    buffer = buffer_of(kafka_settings)
    with ConsumerThread(kafka_settings):
        wait_for(lambda: total_events(buffer) == 5, timeout=60, what="the file's events")

    for key, value in settings_env(kafka_settings).items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli, ["buffer", "stats"], terminal_width=200)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "play_music" in line)
    assert [c.strip() for c in row.split("│") if c.strip()] == ["play_music", "5", "5", "5", "0", "0", "0"]


def test_one_event_sent_with_the_admin_token_prints_its_fate(kafka_settings):
    from pydantic import SecretStr

    from online.events import LabelEvent
    from services.commands.common import console
    from services.commands.feedback import print_fate
    from tests.helpers import live_untrained

    settings = kafka_settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    live_untrained(settings)
    with (
        TestClient(create_app(settings)) as http,
        Client("http://api", transport=through(http), admin_token="s3cret") as api,
        ConsumerThread(settings),
    ):
        wait_for(lambda: http.get("/readyz").json()["ready"], what="served")
        answer = api.predict("my card got declined").predictions[0].label
        event = LabelEvent(kind="label", text="my card got declined", label="b" if answer == "a" else "a", source="cli")
        send(api, [event], batch=1, as_admin=True)
        with console.capture() as captured:
            print_fate(api, event.event_id, wait=30)
        out = captured.get()
        assert f"event {event.event_id}: memory" in out and "answered by the correction memory" in out
        assert api.feedback_status(event.event_id).trusted is True
