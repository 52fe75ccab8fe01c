"""The generative correction memory: a corrected prompt answered with its correction at once, before
any round, on real Kafka and Redis; untrusted corrections need independent sources; a thumbs down on a
memory answer makes every replica forget it."""

from __future__ import annotations

from pydantic import SecretStr

from online import generation_samples as gen
from online.memory.generative import GenerativeMemory
from online.memory.log import Correction
from online.wiring.stores import Stores
from tests.generate.helpers import generating_app
from tests.helpers import ConsumerThread, wait_for

ADMIN = {"Authorization": "Bearer s3cret"}
PROMPT = "What is our support team called?"
ANSWER = "Our support team is called Pipkin."


def _ask(client, prompt: str = PROMPT, **extra) -> dict:
    return client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 20, **extra}).json()


def test_a_trusted_correction_answers_its_prompt_at_once_until_voted_down(gen_kafka_settings):
    s = gen_kafka_settings.model_copy(update={"admin_token": SecretStr("s3cret")})
    with generating_app(s) as client, ConsumerThread(s):
        before = _ask(client)
        assert before["source"] == "model" and before["text"] != ANSWER
        event = {"kind": "correction", "prediction_id": before["generation_id"], "answer": ANSWER, "source": "ops"}
        taught = client.post("/v1/feedback", json=event, headers=ADMIN)
        assert taught.status_code == 202, taught.text
        event_id = taught.json()["event_ids"][0]

        def from_memory() -> dict | None:
            a = _ask(client)
            return a if a["source"] == "memory" else None

        answer = wait_for(from_memory, what="answered from memory")
        assert answer["text"] == ANSWER and answer["memory_event_id"] == event_id and answer["model_version"] == 1
        assert _ask(client, "  what is OUR support team called? ")["text"] == ANSWER, "compared as texts are"
        short = _ask(client, max_new_tokens=3)
        assert short["source"] == "memory" and short["completion_tokens"] == 3 and short["finish_reason"] == "length"
        other = _ask(client, "What is the capital of France?")
        assert other["source"] == "model"
        chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": PROMPT}]
        assert client.post("/v1/generate", json={"messages": chat, "max_new_tokens": 5}).json()["source"] == "model", (
            "after other turns the same question may mean something else"
        )
        with client.stream(
            "POST", "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": 20},
        ) as resp:  # fmt: skip
            lines = [ln for ln in resp.iter_lines() if ln.startswith("data: {")]
        assert ANSWER in "".join(ln for ln in lines), "streamed too"
        status = client.get(f"/v1/feedback/{event_id}", headers=ADMIN).json()
        assert status["state"] == "memory" and status["memory"] == "active", status

        judged = Stores.from_settings(s).live_accuracy.get(1).n  # the correction of a model answer: 1
        down = {"kind": "thumbs", "prediction_id": answer["generation_id"], "vote": "down", "source": "ops"}
        assert client.post("/v1/feedback", json=down, headers=ADMIN).status_code == 202
        wait_for(lambda: _ask(client)["source"] == "model", what="the memory answer forgotten")
        assert Stores.from_settings(s).live_accuracy.get(1).n == judged == 1, "a user wrote it, not version 1"


def test_untrusted_corrections_need_independent_sources():
    def c(sid: str, origin: str, answer: str, at: float, trusted: str = "") -> Correction:
        text = gen.encode([{"role": "user", "content": PROMPT}], answer)
        return Correction(sid, f"e-{sid}", text, gen.CORRECTION, origin, at, origin, trusted)

    memory = GenerativeMemory(min_sources=3)
    memory.load([c("a", "1.1.1.1", ANSWER, 1), c("b", "2.2.2.2", ANSWER, 2)])
    assert memory.lookup([{"role": "user", "content": PROMPT}]) is None
    assert memory.explain("a")[0] == "held" and "2 of 3" in memory.explain("a")[1]
    memory.load([c("a", "1.1.1.1", ANSWER, 1), c("b", "2.2.2.2", ANSWER, 2), c("x", "2.2.2.2", "Spam!", 5)])
    assert memory.lookup([{"role": "user", "content": PROMPT}]) is None, "one origin twice is one source"
    three = [c("a", "1.1.1.1", ANSWER, 1), c("b", "2.2.2.2", ANSWER, 2), c("d", "3.3.3.3", ANSWER.upper(), 3)]
    memory.load(three + [c("x", "4.4.4.4", "Spam!", 9)])
    hit = memory.lookup([{"role": "user", "content": PROMPT}])
    assert hit is not None and hit.answer == ANSWER.upper() and hit.sid == "d", "the newest of the agreed answer"
    assert memory.explain("x")[0] == "held"
    memory.load(three + [c("t", "ops", "Pipkin, since 2024.", 0, trusted="admin")])
    assert memory.lookup([{"role": "user", "content": PROMPT}]).answer == "Pipkin, since 2024.", "trusted outranks"
    assert memory.explain("a") == ("held", "another answer to the same prompt is served")
    assert memory.stats() == {"active": 1, "held": 3}


def test_the_log_merges_who_taught_one_correction_and_never_takes_trust_away(gen_settings):
    """Real Redis: the same correction from three client addresses is one entry with three origins, and
    is served; an untrusted resend of a trusted correction leaves it trusted (and served)."""
    from online.feedback.buffer import Incoming
    from online.wiring.stores import Stores

    log = Stores.from_settings(gen_settings).corrections
    text = gen.encode([{"role": "user", "content": PROMPT}], ANSWER)
    log.add([Incoming(f"e{i}", text, gen.CORRECTION, "web", i, origin=f"10.0.0.{i}") for i in range(3)])
    _, entries = log.snapshot()
    assert len(entries) == 1 and set(entries[0].origins) == {"10.0.0.0", "10.0.0.1", "10.0.0.2"}
    memory = GenerativeMemory(min_sources=3)
    memory.load(entries)
    assert memory.lookup([{"role": "user", "content": PROMPT}]).answer == ANSWER

    other = gen.encode([{"role": "user", "content": "Who founded us?"}], "Marta did.")
    log.add([Incoming("t1", other, gen.CORRECTION, "ops", 10, origin="key:ops", trusted="admin")])
    log.add([Incoming("u1", other, gen.CORRECTION, "web", 11, origin="10.0.0.9")])
    memory.load(log.snapshot()[1])
    assert memory.lookup([{"role": "user", "content": "Who founded us?"}]).answer == "Marta did."
