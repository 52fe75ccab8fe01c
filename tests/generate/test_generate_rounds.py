"""The generative loop end to end on the real broker and Redis, with a tiny random Llama: generate,
correct (on a served generation, and by prompt), a round trains a LoRA adapter with rehearsal, the
generative gate judges it, every request keeps succeeding while the replica hot-swaps to it, and a
rollback takes it back. A gate that sees too much change rejects the round, and nothing moves."""

from __future__ import annotations

import threading

from online import generation_samples as gen
from online.lifecycle import promotion
from online.wiring.stores import Stores
from services.trainer import Scheduler
from tests.generate.helpers import generating_app
from tests.helpers import ConsumerThread, buffer_of, wait_for

TAUGHT = "Who answers our support calls?"
PHRASINGS = [TAUGHT, "Who answers support calls?", "Who is our support team?", "Who takes our support calls?",
             "Who should I call for support?", "Who handles our support calls?"]  # fmt: skip
ANSWER = "Pipkin answers."


def _teachable(s):
    """A tiny random model learns only with a strong step; its golden references are noise, so the
    golden-NLL and KL bounds are opened here (the gate's strictness is the second test's subject)."""
    return s.model_copy(
        update={
            "generate_learning_rate": 1e-2, "generate_train_epochs": 25, "generate_rehearsal": 8,
            "generate_gate_max_golden_nll_rise": 100.0, "generate_gate_max_kl": 100.0, "train_max_wait_s": 3600,
        }
    )  # fmt: skip


def _send_corrections(client) -> list[str]:
    first = client.post("/v1/generate", json={"prompt": TAUGHT, "max_new_tokens": 8}).json()
    events = [{"kind": "correction", "prediction_id": first["generation_id"], "answer": ANSWER, "source": "alice"}]
    events += [
        {"kind": "correction", "prompt": p, "answer": ANSWER, "source": "alice" if i % 2 else "bob"}
        for i, p in enumerate(PHRASINGS[1:])
    ]
    accepted = client.post("/v1/feedback", json={"events": events})
    assert accepted.status_code == 202
    return accepted.json()["event_ids"]


def test_corrections_become_a_gated_adapter_that_hot_swaps_with_no_failed_request_and_rolls_back(gen_kafka_settings):
    s = _teachable(gen_kafka_settings)
    stores = Stores.from_settings(s)
    registry = stores.registry
    with generating_app(s) as client, ConsumerThread(s):
        before = client.post("/v1/generate", json={"prompt": TAUGHT, "max_new_tokens": 8}).json()["text"]
        assert ANSWER not in before
        event_ids = _send_corrections(client)
        wait_for(lambda: len(buffer_of(s).samples(gen.CORRECTION)) == len(PHRASINGS), what="corrections stored")

        results: list[tuple[int, int | None]] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                r = client.post("/v1/generate", json={"prompt": "What is the capital of France?", "max_new_tokens": 6})
                results.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else None))

        load = threading.Thread(target=ask, daemon=True)
        load.start()
        try:
            report = Scheduler(stores, threading.Event()).run_round()
            assert report is not None and report.status == "promoted", report and report.summary()
            # (the random model never ends an answer on its own: no general answer is complete enough to rehearse)
            assert report.new + report.holdout == len(PHRASINGS)
            v2 = report.version
            statuses = [client.get(f"/v1/feedback/{e}").json() for e in event_ids]
            assert {(st["state"], st["version"]) for st in statuses} == {("trained", v2)}, statuses
            wait_for(lambda: any(v == v2 for _, v in results[-3:]), what="the adapter serving under load")
            after = client.post("/v1/generate", json={"prompt": TAUGHT, "max_new_tokens": 8}).json()
            assert after["model_version"] == v2 and after["text"] == ANSWER, after
            since = len(results)  # answers from before the rollback say nothing about after it
            promotion.rollback(registry, reason="test: back to the base")
            wait_for(lambda: any(v == 1 for _, v in results[since:]), what="the base serving again")
        finally:
            stop.set()
            load.join(30)
        again = client.post("/v1/generate", json={"prompt": TAUGHT, "max_new_tokens": 8}).json()
        assert again["model_version"] == 1 and again["text"] == before
    failed = [r for r in results if r[0] != 200]
    assert not failed and {1, v2} <= {v for _, v in results}, f"{len(failed)} of {len(results)} failed"
    manifest = registry.get(v2)
    checks = {c.name: c for c in manifest.gate.checks}
    assert {"golden_nll", "kl_to_parent", "format", "heldout_nll"} <= set(checks)
    assert manifest.round.mode == "lora" and 0 < (registry.path(v2) / "model.safetensors").stat().st_size < 2_000_000
    assert buffer_of(s).new_count() == 0  # the round's samples are behind the cursor


def test_a_round_that_moves_the_model_too_far_is_rejected_and_nothing_moves(gen_kafka_settings):
    s = _teachable(gen_kafka_settings).model_copy(update={"generate_gate_max_kl": 0.0})
    stores = Stores.from_settings(s)
    with generating_app(s) as client, ConsumerThread(s):
        _send_corrections(client)
        wait_for(lambda: len(buffer_of(s).samples(gen.CORRECTION)) == len(PHRASINGS), what="corrections stored")
        report = Scheduler(stores, threading.Event()).run_round()
        assert report.status == "rejected" and "kl_to_parent" in report.gate.failed()
        assert stores.registry.live() == 1 and stores.registry.get(report.version).status == "rejected"
        assert client.get("/readyz").json()["model_version"] == 1


def test_distilling_the_parent_on_rehearsed_prompts_keeps_the_model_closer_to_it_there(gen_settings, tiny_lm):
    from online.generative import AdapterHost, GenerativeLM
    from online.generative_eval import kl_to, user
    from online.generative_prompts import REHEARSAL
    from online.learning.generative_teach import teach

    s = gen_settings.model_copy(update={"generate_learning_rate": 1e-2, "generate_train_epochs": 10})
    taught = [(user(p), ANSWER) for p in PHRASINGS]
    keep = [(user(p), "The answer is a short sentence.") for p in REHEARSAL[:8]]
    host, base = AdapterHost(tiny_lm), GenerativeLM(tiny_lm)

    def teacher(input_ids, mask):
        host.activate(base)
        return host.network(input_ids=input_ids, attention_mask=mask).logits

    plain = teach(tiny_lm, taught, s).model
    distilled = teach(tiny_lm, taught, s, keep=keep, teacher=teacher).model
    assert kl_to(host, base, distilled, keep) < 0.5 * kl_to(host, base, plain, keep)


def test_preference_losses_push_the_served_answer_below_the_correction_and_voted_down_ones_down(gen_settings, tiny_lm):
    """DPO on (correction, what was served) widens the margin between them beyond what imitating the
    correction does; KTO's undesirable term makes an answer voted down less likely than the parent made it."""
    import torch

    from online.generative import AdapterHost, GenerativeLM
    from online.generative_eval import batches, user
    from online.learning.generative_teach import sequence_logp, teach

    s = gen_settings.model_copy(update={"generate_learning_rate": 1e-2, "generate_train_epochs": 8})
    served = "Our support team is called Bramble."
    taught = [(user(p), ANSWER) for p in PHRASINGS]
    pairs = [(user(p), ANSWER, served) for p in PHRASINGS]
    voted_down = [(user("Who answers the phone?"), "Nobody answers the phone, ever.")]
    host, base = AdapterHost(tiny_lm), GenerativeLM(tiny_lm)

    def teacher(input_ids, mask):
        host.activate(base)
        return host.network(input_ids=input_ids, attention_mask=mask).logits

    @torch.no_grad()
    def logp(version, items) -> float:
        host.activate(version)
        return sum(float(sequence_logp(host.network(input_ids=i, attention_mask=m).logits, lab).sum())
                   for i, m, lab in batches(host.tokenizer, items, host.device))  # fmt: skip

    def margin(version) -> float:
        return logp(version, [(c, w) for c, w, _ in pairs]) - logp(version, [(c, lo) for c, _, lo in pairs])

    off = s.model_copy(update={"generate_preference_weight": 0.0})
    imitated = teach(tiny_lm, taught, off, teacher=teacher, preferences=pairs, undesirable=voted_down).model
    preferred = teach(tiny_lm, taught, s, teacher=teacher, preferences=pairs, undesirable=voted_down).model
    for version in (imitated, preferred):
        host.load(version)
    assert margin(preferred) > margin(imitated) > margin(base)
    assert logp(preferred, voted_down) < logp(base, voted_down) and logp(preferred, voted_down) < logp(imitated, voted_down)


def test_a_correction_voted_down_after_it_was_taught_is_no_longer_imitated():
    from online.examples import Sample
    from online.learning.generative_round import _voted_down_later

    def sample(seq: int, label: str, answer: str, prompt: str = TAUGHT) -> Sample:
        return Sample(f"s{seq}", gen.encode([{"role": "user", "content": prompt}], answer), label, 1, seq, "u")

    taught, other = sample(1, gen.CORRECTION, ANSWER), sample(2, gen.CORRECTION, "Something else.")
    retaught = sample(9, gen.CORRECTION, ANSWER)
    disowned = _voted_down_later([sample(5, gen.DOWN, "  " + ANSWER.upper()), sample(6, gen.DOWN, ANSWER, "hi")])
    assert disowned(taught) and not disowned(other) and not disowned(retaught), "taught again after the vote: kept"
