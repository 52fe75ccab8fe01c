"""The correction log in Redis (idempotent, forgetful on purpose, bounded) and one version's memory
(exact and near answers, the known-data comparison, states, the blended top-k)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from online.feedback.buffer import Incoming
from online.feedback.labels import LabelRules
from online.keys import Keys
from online.memory.index import ABSORBED, ACTIVE, HELD, PENDING, CorrectionMemory, Hit, Policy, blend
from online.memory.log import Correction, CorrectionLog, parse_change
from online.reference import Reference


@pytest.fixture
def log(settings) -> CorrectionLog:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return CorrectionLog(client, Keys(settings.key_prefix), capacity=3, max_age_s=3600, gone_ttl_s=60)


def changes(log: CorrectionLog) -> list:
    return [parse_change(sid, fields) for sid, fields in log.r.xrange(log.stream)]


def test_the_log_is_idempotent_masks_pii_and_forgets_on_purpose(log):
    now = __import__("time").time()
    ev = Incoming("e1", "call me on 415 555 0132 about my card", "card_declined", "agent", now)
    assert log.add([ev]) == 1 and log.add([ev]) == 1  # redelivery rewrites the same entry
    assert [c.entry is not None for c in changes(log)] == [True]  # ...and its add replaces the older one
    _, entries = log.snapshot()
    assert len(entries) == 1 and "<PHONE>" in entries[0].text and "0132" not in entries[0].text
    sid = entries[0].sid
    assert log.forget([sid], "thumbs down") == 1
    assert log.add([ev]) == 0 and log.size() == 0  # a forgotten correction is not brought back by redelivery
    # the stream keeps the forgetting, not the text: the entry's add left it
    assert [(c.entry is not None, c.reason) for c in changes(log)] == [(False, "thumbs down")]
    assert "call me" not in str(log.r.xrange(log.stream))


def test_an_untrusted_vote_does_not_undo_a_trusted_correction(log):
    now = __import__("time").time()
    trusted = Incoming("t1", "my card got declined", "card_declined", "operator", now, "admin", "admin")
    anonymous = Incoming("a1", "what is my balance", "balance", "someone", now, "addr:10.0.0.1")
    log.add([trusted, anonymous])
    sids = {e.event_id: e.sid for e in log.snapshot()[1]}
    assert log.snapshot()[1][0].trusted in ("admin", "")
    assert log.forget(list(sids.values()), "thumbs down", keep_trusted=True) == 1  # only the anonymous one
    assert [e.event_id for e in log.snapshot()[1]] == ["t1"]
    assert log.forget([sids["t1"]], "thumbs down") == 1  # a trusted vote does


def test_the_log_keeps_the_newest_within_capacity_and_age(log):
    now = __import__("time").time()
    items = [Incoming(f"e{i}", f"text number {i}", "x", "agent", now + i) for i in range(1, 6)]
    for item in items:  # stored one after another: the stored time orders them, not the client's
        log.add([item])
    position, entries = log.snapshot()
    assert [e.text for e in entries] == ["text number 3", "text number 4", "text number 5"]
    assert sum(c.reason == "capacity" for c in changes(log)) == 2 and position == changes(log)[-1].stream_id
    aged = CorrectionLog(log.r, Keys(log.p.rsplit(":", 1)[0]), capacity=3, max_age_s=0.0, gone_ttl_s=60)
    assert aged.trim() == 3 and aged.size() == 0  # the trainer's housekeeping ages them out


def _entry(i: int, label: str, source: str = "agent", text: str | None = None) -> Correction:
    return Correction(f"s{i}", f"e{i}", text or f"text {i}", label, source, float(i))


def _unit(*rows) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _probs(labels: list[str], answer: str) -> np.ndarray:
    p = np.full(len(labels), 0.1 / (len(labels) - 1), dtype=np.float32)
    p[labels.index(answer)] = 0.9
    return p


LABELS = ["a", "b", "c"]
RULES = LabelRules(policy="limited", min_examples=2, budget_per_hour=3, corroborating_sources=3)


def test_states_exact_and_near_answers_and_the_blend():
    memory = CorrectionMemory(LABELS, 0.9, RULES, None, None)
    entries = [
        _entry(1, "b", text="Where is  my parcel"),  # the model says a: active
        _entry(2, "a"),  # the model already says a: absorbed
        _entry(3, "b", source="troll"),  # quarantined source: held
        _entry(4, "new"),  # a new label with 1 of 2 examples: pending
    ]
    vectors = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0])
    memory.learn(entries, np.stack([_probs(LABELS, "a")] * 4), vectors)
    memory.refresh(Policy(quarantined_sources=frozenset({"troll"})))
    assert memory.states() == {"s1": ACTIVE, "s2": ABSORBED, "s3": HELD, "s4": PENDING}

    texts = ["where is my parcel", "something close", "something else", "text 3"]
    hits = memory.lookup(texts, _unit([0, 0, 1], [1, 0.2, 0], [0.5, 0.5, 0.7], [0, 0, 1]))
    assert hits[0] == Hit("s1", "e1", "b", 1.0, True)  # the exact text, whatever its embedding
    assert hits[1] is not None and hits[1].label == "b" and not hits[1].exact and 0.9 <= hits[1].similarity < 1
    assert hits[2] is None and hits[3] is None  # too far; the held entry's own text

    top, mixed = blend(hits[1], _probs(LABELS, "a"), LABELS, 3)
    assert top[0][0] == "b" and abs(sum(p for _, p in top) - 1) < 1e-5 and abs(mixed.sum() - 1) < 1e-5

    memory.learn([_entry(5, "new", source="other")], _probs(LABELS, "a")[None], _unit([1, 1, 0.1]))
    memory.refresh()
    retaught = Correction("s1", "e9", "Where is  my parcel", "b", "agent-2", 9.0)
    assert memory.missing({"s1": retaught, "s5": _entry(5, "new", source="other")}) == [retaught]
    assert memory.states()["s4"] == ACTIVE  # the label has its 2 examples now
    top, _ = blend(memory.lookup(["text 4"], _unit([1, 1, 0]))[0], _probs(LABELS, "a"), LABELS, 2)
    assert top == [("new", 1.0), ("a", 0.0)]


def test_a_correction_must_be_nearer_than_known_data_of_another_label():
    known = _unit([1, 0, 0], [0, 1, 0])
    reference = Reference(
        train=known, mmd_ref=known, pred_dist=np.ones(3) / 3, nn_q95=0.1, nn_q99=0.2, gamma=1.0, kyy_mean=0.5,
        mmd_null=np.zeros(3), js_null=np.zeros(3), window=20, train_labels=["a", "b"],
    )  # fmt: skip
    memory = CorrectionMemory(LABELS, 0.8, RULES, None, reference)
    memory.learn([_entry(1, "c")], _probs(LABELS, "a")[None], _unit([1, 0.3, 0]))
    memory.refresh()
    near_correction, near_known_a = _unit([1, 0.35, 0]), _unit([1, 0.05, 0])
    assert memory.lookup(["x"], near_correction)[0].label == "c"
    assert memory.lookup(["y"], near_known_a) == [None]  # cosine 0.97 to the correction, but a's example is nearer


def test_lookups_mask_only_when_an_entry_holds_a_placeholder():
    """Masking is once per batch, and only when it can matter: a query matches an entry only through
    its placeholders (``<email>``...), so a memory without any never masks on the forward thread."""
    memory = CorrectionMemory(LABELS, 0.9, RULES, None, None)
    memory.learn([_entry(1, "b", text="where is my parcel")], _probs(LABELS, "a")[None], _unit([1, 0, 0]))
    memory.refresh()
    calls: list[int] = []

    def masked(texts):
        calls.append(len(texts))
        return [t.replace("jane@example.com", "<EMAIL>") for t in texts]

    texts = ["Where is my parcel", "mail jane@example.com about my parcel"]
    assert memory.lookup(texts, _unit([0, 1, 0], [0, 0, 1]), masked=lambda: masked(texts))[0].exact
    assert calls == []  # nothing to match through a placeholder: nothing masked
    memory.learn([_entry(2, "c", text="mail <EMAIL> about my parcel")], _probs(LABELS, "a")[None], _unit([0, 1, 1]))
    memory.refresh()
    hits = memory.lookup(texts, _unit([0, 1, 0], [0, 0, 1]), masked=lambda: masked(texts))
    assert calls == [2] and hits[1] is not None and hits[1].exact and hits[1].label == "c"


def test_learning_does_not_mask_the_logs_texts_again(monkeypatch):
    """The log's texts are masked when stored: building a memory (on the forward thread) masks nothing."""
    import online.memory.index as index

    monkeypatch.setattr(index, "mask_pii", lambda text: (_ for _ in ()).throw(AssertionError("masked again")))
    memory = CorrectionMemory(LABELS, 0.9, RULES, None, None)
    entries = [_entry(i, "b", text=f"call <PHONE> about order {i}") for i in range(1, 65)]
    memory.learn(entries, np.stack([_probs(LABELS, "a")] * 64), np.eye(64, 3, dtype=np.float32) + 0.01)
    memory.refresh()
    assert set(memory.states().values()) == {ACTIVE}


def test_a_trusted_word_on_a_text_outranks_a_newer_untrusted_one():
    from dataclasses import replace

    memory = CorrectionMemory(LABELS, 0.9, RULES, None, None)
    trusted = replace(_entry(1, "b", text="my card got declined"), trusted="admin")
    later = _entry(2, "a", text="my card got declined")  # newer, anonymous, back to the model's answer
    memory.learn([trusted, later], np.stack([_probs(LABELS, "a")] * 2), _unit([1, 0, 0], [1, 0, 0]))
    memory.refresh(Policy())
    (hit,) = memory.lookup(["my card got declined"], _unit([1, 0, 0]))
    assert hit is not None and hit.label == "b" and hit.event_id == "e1"


def test_an_entry_of_a_quarantined_keyless_address_is_held_whatever_name_it_came_under():
    """The source ledger quarantines a keyless client by its address; a correction it sends after that, under
    a name never seen before, is held by every replica's memory at once (not only at the next round); another
    address's correction under the same name is not."""
    memory = CorrectionMemory(LABELS, 0.9, RULES, None, None)
    entries = [
        Correction("s1", "e1", "text 1", "b", "fresh-name", 1.0, origin="addr:10.0.0.66"),
        Correction("s2", "e2", "text 2", "b", "fresh-name", 2.0, origin="addr:10.0.0.2"),
    ]
    memory.learn(entries, np.stack([_probs(LABELS, "a")] * 2), _unit([1, 0, 0], [0, 1, 0]))
    memory.refresh(Policy(quarantined_sources=frozenset({"addr:10.0.0.66"})))
    assert memory.states() == {"s1": HELD, "s2": ACTIVE}
    assert memory.explain("s1") == (HELD, "source 'addr:10.0.0.66' is quarantined")
