"""The generative API (``ONLINE_TASK=generate``) on a tiny random Llama: /v1/generate and OpenAI's chat
completions (plain and streamed), answered by the version that generated them, with the OpenAI SDK
itself as the client; bad requests get a 422 naming the field."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from online.generate_contract import ChatCompletion, GenerateResponse
from online.wiring.stores import Stores
from tests.generate.helpers import generating_app, through
from tests.helpers import wait_for

QUESTION = "What is the capital of France?"


@pytest.fixture
def client(gen_settings):
    with generating_app(gen_settings) as c:
        yield c


def sdk(client) -> OpenAI:
    """The OpenAI SDK talking to the app through the test client (an httpx client)."""
    return OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0)


def test_generate_answers_with_its_version_and_an_id(client, gen_settings):
    body = client.post("/v1/generate", json={"prompt": QUESTION, "max_new_tokens": 12}).json()
    answer = GenerateResponse.model_validate(body)
    assert answer.model_version == Stores.from_settings(gen_settings).registry.live() == 1
    assert answer.completion_tokens <= 12 and answer.prompt_tokens > 0 and answer.text
    assert answer.finish_reason in ("stop", "length")

    again = client.post("/v1/generate", json={"prompt": QUESTION, "max_new_tokens": 12}).json()
    assert again["text"] == answer.text, "temperature 0 (the default) is greedy: the same answer"
    assert again["generation_id"] != answer.generation_id

    chat = client.post(
        "/v1/generate", json={"messages": [{"role": "user", "content": QUESTION}], "max_new_tokens": 12}
    ).json()
    assert chat["text"] == answer.text, "a prompt is one user turn"
    sampled = client.post("/v1/generate", json={"prompt": QUESTION, "temperature": 1.5, "max_new_tokens": 12})
    assert sampled.status_code == 200


def test_the_python_client_generates(client):
    from online.client import Client

    with Client(str(client.base_url), transport=through(client)) as api:
        answer = api.generate("What is the capital of France?", max_new_tokens=6)
        chat = api.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=6)
    assert answer.model_version == 1 and answer.text == chat.text and answer.completion_tokens <= 6


def test_generations_are_logged_for_feedback(client, gen_settings):
    body = client.post("/v1/generate", json={"prompt": "mail jane@example.com please", "max_new_tokens": 5}).json()
    log = Stores.from_settings(gen_settings).predictions
    record = wait_for(lambda: log.get(body["generation_id"]), timeout=10, what="the generation logged")
    assert record.is_generation and record.answer == body["text"] and record.version == body["model_version"]
    assert "jane@example.com" not in record.text and "<EMAIL>" in record.text


def test_bad_requests_name_the_field(client, gen_settings):
    both = client.post("/v1/generate", json={"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert both.status_code == 422 and "exactly one" in both.json()["detail"]
    too_long = client.post(
        "/v1/generate", json={"prompt": "a", "max_new_tokens": gen_settings.generate_max_new_tokens + 1}
    )
    assert too_long.status_code == 422 and "max_new_tokens" in too_long.json()["detail"]
    role = client.post("/v1/generate", json={"messages": [{"role": "robot", "content": "b"}]})
    assert role.status_code == 422
    two = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "b"}], "n": 2})
    assert two.status_code == 422 and "n:" in two.json()["detail"]
    assert client.post("/v1/predict", json={"text": "a"}).status_code == 404, "no classifier in task generate"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/generate", "/v1/chat/completions", "/v1/feedback"} <= set(paths) and "/v1/predict" not in paths


def test_chat_completions_through_the_openai_sdk(client):
    openai = sdk(client)
    completion = openai.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": QUESTION}], max_tokens=12
    )
    assert completion.object == "chat.completion" and completion.model == "anything"
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert completion.usage.completion_tokens <= 12
    extra = completion.model_extra
    assert extra["model_version"] == 1 and extra["generation_id"]
    same = client.post("/v1/generate", json={"prompt": QUESTION, "max_new_tokens": 12}).json()
    assert completion.choices[0].message.content == same["text"]
    ChatCompletion.model_validate(completion.model_dump())  # the documented response model, field for field


def test_chat_completions_stream_by_server_sent_events(client, gen_settings):
    plain = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    ).json()
    with client.stream(
        "POST", "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, "stream": True},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model_version"] == 1 for c in chunks)
    assert len({(c["id"], c["generation_id"]) for c in chunks}) == 1 and chunks[0]["id"].endswith(
        chunks[0]["generation_id"]
    )
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"], "the stream adds up to the whole answer"
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"] and last["generation_id"]
    assert last["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    log = Stores.from_settings(gen_settings).predictions
    logged = wait_for(lambda: log.get(last["generation_id"]), timeout=10, what="the streamed generation logged")
    assert logged.answer == text, "feedback can quote a streamed generation's id"

    streamed = sdk(client).chat.completions.create(
        model="x", messages=[{"role": "user", "content": QUESTION}], max_tokens=16, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces) == text


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(client):
    """Prompts decoded together answer exactly what each answers alone (left padding, per-row ends)."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["hi", QUESTION, "Tell me about refunds and orders, please, in detail", "weather?"] * 2
    alone = {p: client.post("/v1/generate", json={"prompt": p, "max_new_tokens": 10}).json()["text"] for p in prompts}
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda p: client.post("/v1/generate", json={"prompt": p, "max_new_tokens": 10}).json(), prompts)
        )
    assert [t["text"] for t in together] == [alone[p] for p in prompts]
    batches = client.get("/metrics").text
    assert "online_generated_tokens_total" in batches


def test_requests_arriving_during_a_long_generation_join_it(gen_settings, tmp_path):
    """Continuous batching through the API: short requests sent while a long generation decodes join
    its decode (the joined counter), are answered exactly as alone, and before the long one ends."""
    from tests.generate.tiny import build_tiny_causal_lm

    budget = 3000  # a few seconds of decoding on a tiny model with room for that many positions
    long_lm = build_tiny_causal_lm(tmp_path / "long", max_positions=8192)
    update = {"generate_max_new_tokens": budget, "generate_base_model": long_lm, "generate_join_window_s": 60.0}
    with generating_app(gen_settings.model_copy(update=update)) as client:
        _joins_a_running_decode(client, budget)


def _joins_a_running_decode(client, budget: int) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    long = {"prompt": "story", "max_new_tokens": budget}  # one the random model does not end within budget
    alone_long = client.post("/v1/generate", json=long).json()
    assert alone_long["completion_tokens"] == budget, "the long prompt decodes its whole budget"
    short = ["What is the capital of France?", "weather?", "Tell me about refunds and orders, please"]
    alone = [client.post("/v1/generate", json={"prompt": p, "max_new_tokens": 6}).json()["text"] for p in short]
    service = client.app.state.service

    def joined() -> float:
        line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith("online_generate_joined_total"))
        return float(line.split()[-1])

    before = joined()
    finished = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(lambda: (client.post("/v1/generate", json=long).json(), finished.set())[0])
        wait_for(lambda: service.joining.is_open or running.done(), timeout=30, what="the long decode running")
        answers = list(
            pool.map(lambda p: client.post("/v1/generate", json={"prompt": p, "max_new_tokens": 6}).json(), short)
        )
        ended_first = finished.is_set()
        assert running.result()["text"] == alone_long["text"], "rows joining change nothing for the running one"
    assert [a["text"] for a in answers] == alone and not ended_first
    assert joined() - before == len(short)


def test_not_ready_before_a_version_is_loaded(gen_settings):
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    with TestClient(create_app(gen_settings)) as c:  # an empty registry: nothing to serve yet
        assert c.get("/readyz").status_code == 503
        for path, body in (
            ("/v1/generate", {"prompt": "hi"}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
        ):
            resp = c.post(path, json=body)
            assert resp.status_code == 503 and "Retry-After" in resp.headers, (path, body)
