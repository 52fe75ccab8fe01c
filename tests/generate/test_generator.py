"""The decode loop on a tiny random Llama: a batch answers what each prompt answers alone, rows end on
their own budget or client and are handed back then, adapters switch per batch, and a version's weights
file round-trips (a random adapter, then the bare base)."""

from __future__ import annotations

import pytest
import torch

from online.generative import AdapterHost, GenerativeLM
from online.generator import Generated, Generation, JoinQueue, generate
from online.versioned import load_model
from tests.generate.helpers import random_adapter


@pytest.fixture(scope="module")
def host(tiny_lm) -> AdapterHost:
    return AdapterHost(tiny_lm)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_batch_answers_what_each_prompt_answers_alone(host, tiny_lm):
    base = GenerativeLM(tiny_lm)
    prompts = ["hi", "What is the capital of France?", "Tell me about refunds and orders in detail please"]
    alone = [generate(host, base, [Generation(chat(p), 12)])[0] for p in prompts]
    budgets = [3, 12, 7]
    together = generate(host, base, [Generation(chat(p), n) for p, n in zip(prompts, budgets)])
    for a, t, n in zip(alone, together, budgets):
        assert t.token_ids == a.token_ids[:n], "packing rows together and rows leaving change nothing"
        assert t.completion_tokens <= n and t.prompt_tokens == a.prompt_tokens
    # the reference: transformers' own greedy decoding of the first prompt
    ids = torch.tensor([host.tokenizer(host.tokenizer.apply_chat_template(chat(prompts[1]), add_generation_prompt=True, tokenize=False))["input_ids"]])  # fmt: skip
    ref = host.model.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=sorted(host.eos_ids), pad_token_id=0
    )
    assert ref[0, ids.shape[1] :].tolist()[: len(alone[1].token_ids)] == alone[1].token_ids


def test_rows_end_on_their_own_and_are_handed_back_at_once(host, tiny_lm):
    base = GenerativeLM(tiny_lm)
    done: list[str] = []
    streamed: list[str] = []
    checks = {"n": 0}

    def gone() -> bool:  # the streaming client of "b" leaves after a few tokens
        checks["n"] += 1
        return checks["n"] > 3

    requests = [
        Generation(chat("a"), 2, on_done=lambda g: done.append("a")),
        Generation(chat("b"), 20, on_delta=streamed.append, on_done=lambda g: done.append("b"), cancelled=gone),
        Generation(chat("c"), 20, on_done=lambda g: done.append("c")),
    ]
    out = generate(host, base, requests)
    assert out[0].finish_reason == "length" and out[0].completion_tokens == 2
    assert out[1].finish_reason == "cancelled" and 1 <= out[1].completion_tokens <= 3
    assert done[:2] == ["a", "b"], "the short rows were answered before the long one ended"
    assert "".join(streamed) == out[1].text


def test_requests_arriving_mid_decode_join_it_and_answer_what_they_answer_alone(host, tiny_lm):
    """Continuous batching: two requests offered while a long row decodes (one a step in, one later, a
    different prompt length each) join between steps, are answered before the long row ends, and decode
    exactly what they decode alone; a request of another version is refused by the queue."""
    base, other = GenerativeLM(tiny_lm), random_adapter(tiny_lm, seed=11)
    prompts = ["hi", "Tell me about refunds and orders in detail please", "What is the capital of France?"]
    alone = [generate(host, base, [Generation(chat(p), n)])[0] for p, n in zip(prompts, (40, 6, 9))]
    queue = JoinQueue(capacity=4)
    order: list[str] = []
    late: dict[str, Generated] = {}
    tokens = {"n": 0}

    def arrivals(_delta: str) -> None:  # the long row's stream: new clients arrive as it decodes
        tokens["n"] += 1
        for at, name, prompt, n in ((1, "b", prompts[1], 6), (4, "c", prompts[2], 9)):
            if tokens["n"] == at:
                done = lambda g, name=name: (order.append(name), late.__setitem__(name, g))  # noqa: E731
                assert queue.offer(base, Generation(chat(prompt), n, on_done=done))
        assert not queue.offer(other, Generation(chat("x"), 2)), "another version waits for a batch of its own"

    queue.open(base)
    long = Generation(chat(prompts[0]), 40, on_delta=arrivals, on_done=lambda g: order.append("a"))
    out = generate(host, base, [long], joiner=queue, max_batch=4, join_window_s=60)
    assert out[0].token_ids == alone[0].token_ids, "rows joining change nothing for the running one"
    assert late["b"].token_ids == alone[1].token_ids and late["c"].token_ids == alone[2].token_ids
    assert order[-1] == "a" and set(order[:2]) == {"b", "c"}, "the joiners were answered while it decoded"
    assert queue.taken == [] and not queue.offer(base, Generation(chat("y"), 2)), "all answered; closed when it returned"


def test_a_row_that_outlives_the_ones_it_joined_decodes_what_it_decodes_alone(host, tiny_lm, monkeypatch):
    """The first row (a long prompt) ends early; the row that joined it goes on alone, the sequence cut to
    the columns still attended to: the answer is the same as alone, and so is a third joining after that."""
    import online.generator as generator

    monkeypatch.setattr(generator, "_CUT_DEAD", 0)  # cut as soon as dead columns are most of the sequence
    cuts: list[int] = []
    leave = generator._Packed.leave

    def spy(self, i: int) -> None:
        before = len(self.owner)
        leave(self, i)
        cuts.append(before - len(self.owner))

    monkeypatch.setattr(generator._Packed, "leave", spy)
    base = GenerativeLM(tiny_lm)
    long_prompt = "Tell me about refunds and orders in detail please, and about the weather in Lisbon"
    alone = {p: generate(host, base, [Generation(chat(p), 30)])[0].token_ids for p in ("hello", "a")}
    queue, got = JoinQueue(capacity=4), {}
    steps = {"n": 0}

    def arrivals(_delta: str) -> None:
        steps["n"] += 1
        if steps["n"] == 1:
            assert queue.offer(base, Generation(chat("hello"), 30, on_done=lambda g: got.__setitem__("hello", g)))

    def later(_delta: str) -> None:
        steps["n"] += 1
        if steps["n"] == 12:
            assert queue.offer(base, Generation(chat("a"), 30, on_done=lambda g: got.__setitem__("a", g)))

    queue.open(base)
    first = Generation(chat(long_prompt), 3, on_delta=arrivals)
    generate(host, base, [first], joiner=queue, max_batch=4, join_window_s=60)
    assert got["hello"].token_ids == alone["hello"]
    got.clear()
    steps["n"] = 0
    queue.open(base)
    generate(host, base, [Generation(chat(long_prompt), 3, on_delta=arrivals), Generation(chat("b"), 30, on_delta=later)],
             joiner=queue, max_batch=4, join_window_s=60)  # fmt: skip
    assert got["hello"].token_ids == alone["hello"] and got["a"].token_ids == alone["a"]
    assert any(cuts), "dead columns were cut while others decoded on"


def test_past_the_join_window_arrivals_wait_for_others_and_are_still_answered(host, tiny_lm):
    base = GenerativeLM(tiny_lm)
    queue = JoinQueue(capacity=4)
    answered: list[Generated] = []
    offered = {"n": 0}

    def arrive(_delta: str) -> None:
        if offered["n"] < 2 and queue.offer(base, Generation(chat("hello there"), 5, on_done=answered.append)):
            offered["n"] += 1

    queue.open(base)
    out = generate(host, base, [Generation(chat("hi"), 12, on_delta=arrive)], joiner=queue, join_window_s=0)
    assert out[0].completion_tokens > 0 and offered["n"] == 0, "past the window, others waiting: closed at once"
    queue.open(base)
    generate(host, base, [Generation(chat("hi"), 12, on_delta=arrive)], joiner=queue, join_window_s=0,
             others_waiting=lambda: False)  # fmt: skip
    assert offered["n"] == 2 and len(answered) == 2, "nobody else waits for the forward thread: joins go on"
    queue.open(base)
    waited: list[Generated] = []
    assert queue.offer(base, Generation(chat("hello there"), 5, on_done=waited.append))
    out = generate(host, base, [], joiner=queue, join_window_s=0)
    assert out == [] and len(waited) == 1 and waited[0].completion_tokens > 0, "accepted means answered"


def test_sampling_follows_temperature_per_row(host, tiny_lm):
    base = GenerativeLM(tiny_lm)
    torch.manual_seed(0)
    greedy = [generate(host, base, [Generation(chat("hi"), 8)])[0].token_ids for _ in range(2)]
    sampled = {tuple(generate(host, base, [Generation(chat("hi"), 8, temperature=1.5)])[0].token_ids) for _ in range(4)}
    assert greedy[0] == greedy[1] and len(sampled) > 1


def test_versions_switch_adapters_and_their_weights_round_trip(host, tiny_lm, tmp_path):
    base, adapted = GenerativeLM(tiny_lm), random_adapter(tiny_lm, seed=3)
    sha = adapted.save(tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors", adapted.spec())
    assert isinstance(loaded, GenerativeLM) and loaded.adapter_name == adapted.adapter_name and len(sha) == 64
    assert loaded.lora_config == adapted.lora_config
    GenerativeLM(tiny_lm).save(tmp_path / "b.safetensors")
    assert load_model(tmp_path / "b.safetensors", base.spec()).adapter is None, "version 1: no adapter"

    before = generate(host, base, [Generation(chat("hi"), 8)])[0].token_ids
    host.load(loaded)
    assert generate(host, base, [Generation(chat("hi"), 8)])[0].token_ids == before, "loading does not activate"
    with_adapter = generate(host, loaded, [Generation(chat("hi"), 8)])[0].token_ids
    assert with_adapter != before
    assert generate(host, base, [Generation(chat("hi"), 8)])[0].token_ids == before, "the bare base again"

    for seed in (4, 5, 6):  # more versions than the host keeps: the oldest adapter is dropped...
        host.load(random_adapter(tiny_lm, seed=seed))
    assert loaded.adapter_name not in host.loaded() and len(host.loaded()) == host.keep
    assert generate(host, loaded, [Generation(chat("hi"), 8)])[0].token_ids == with_adapter, "...and loaded again"


def test_an_adapter_for_another_base_is_refused_and_the_host_serves_on(tiny_lm, tmp_path):
    from tests.generate.tiny import build_tiny_causal_lm

    host = AdapterHost(tiny_lm)
    base = GenerativeLM(tiny_lm)
    before = generate(host, base, [Generation(chat("hi"), 6)])[0].token_ids
    other = build_tiny_causal_lm(tmp_path / "other", hidden_size=64)
    for first in (True, False):  # the first adapter (peft wraps the base for it), then beside a loaded one
        if not first:
            host.load(random_adapter(tiny_lm, seed=7))
        with pytest.raises(ValueError, match="does not fit"):
            host.load(random_adapter(other, seed=1))
        assert generate(host, base, [Generation(chat("hi"), 6)])[0].token_ids == before
    good = random_adapter(tiny_lm, seed=8)
    host.load(good)
    assert generate(host, good, [Generation(chat("hi"), 6)])[0].token_ids != before


def test_a_converted_base_is_kept_once_and_reads_back_the_same(tiny_lm, tmp_path):
    """What a replica keeps of a de-quantised GGUF (here a plain model stands in for one) loads as the
    same model and tokenizer; a second replica's copy changes nothing; a changed file gets a new copy."""
    from online.generative import _converted, _keep_converted, load_base

    model, tokenizer = load_base(tiny_lm)
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"one")
    target = _converted(str(gguf), tmp_path / "cache")
    _keep_converted(model, tokenizer, target)
    _keep_converted(model, tokenizer, target)  # another replica converting at the same time: the first stays
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [target.name], "no temporary copies left"
    copy, copy_tokenizer = load_base(str(target))
    ids = torch.tensor([tokenizer("What is the capital of France?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, model(ids).logits)
    assert copy_tokenizer.chat_template == tokenizer.chat_template
    assert copy_tokenizer("a b c")["input_ids"] == tokenizer("a b c")["input_ids"]
    gguf.write_bytes(b"changed")
    assert _converted(str(gguf), tmp_path / "cache") != target


def test_the_shared_opening_is_computed_once_per_adapter_and_changes_no_answer(tiny_lm):
    """The chat template's opening (the system prompt every request starts with) is prefilled once per
    adapter and reused: answers, a prompt with its own system turn beside them and a request that joins
    mid-decode included, are token for token those of whole-prompt prefills; an adapter's entry goes
    when the host drops the adapter. (The adapter here is first loaded by a decode, under inference mode:
    the host still loads more beside it.)"""
    cached, whole = AdapterHost(tiny_lm), AdapterHost(tiny_lm)
    whole.template_opening = ()  # nothing shared: every prompt prefilled whole
    base, adapted = GenerativeLM(tiny_lm), random_adapter(tiny_lm, seed=21)
    own_system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]
    chats = [chat("What is the capital of France?"), own_system, chat("Tell me about refunds")]

    def answers(host: AdapterHost, version: GenerativeLM) -> list[list[int]]:
        queue = JoinQueue(capacity=2)
        queue.open(version)
        late: list[Generated] = []
        joiner = Generation(chat("and orders?"), 7, on_done=late.append)
        offered: list[bool] = []

        def arrive(_delta: str) -> None:  # one request arrives once the first row has a token
            if not offered:
                offered.append(queue.offer(version, joiner))

        first = Generation(chats[0], 12, on_delta=arrive)
        out = generate(host, version, [first, *(Generation(c, 10) for c in chats[1:])], joiner=queue)
        assert offered == [True] and len(late) == 1, "it joined the running decode, once"
        return [o.token_ids for o in out] + [late[0].token_ids]

    for version in (base, adapted):
        assert answers(cached, version) == answers(whole, version)
    opening = cached.template_opening
    assert opening and len(opening) >= 8 and not whole.prefix_kv
    assert set(cached.prefix_kv) == {(None, opening), (adapted.adapter_name, opening)}, "one entry an adapter"
    for seed in (22, 23, 24):  # more adapters than the host keeps: the oldest goes, its opening too
        cached.load(random_adapter(tiny_lm, seed=seed))
    assert adapted.adapter_name not in cached.loaded()
    assert (adapted.adapter_name, opening) not in cached.prefix_kv and (None, opening) in cached.prefix_kv
