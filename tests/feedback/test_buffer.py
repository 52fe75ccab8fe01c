"""Replay buffer semantics on a real Redis."""

from __future__ import annotations

import pytest

from online.feedback.buffer import Incoming, ReplayBuffer
from online.wiring.stores import Stores


@pytest.fixture
def buffer(settings) -> ReplayBuffer:
    return Stores.from_settings(settings.model_copy(update={"buffer_capacity": 100})).buffer


def ev(i: int, text: str, label: str) -> Incoming:
    return Incoming(f"e{i}", text, label, "test", 0.0)


def test_idempotent_by_event_id_and_duplicates_counted(buffer):
    first = buffer.add([ev(1, "What is my balance", "balance"), ev(2, "what is my  BALANCE", "balance")])
    assert (first.added, first.duplicates, first.replayed) == (1, 1, 0)
    again = buffer.add([ev(1, "What is my balance", "balance"), ev(2, "what is my  BALANCE", "balance")])
    assert (again.added, again.duplicates, again.replayed) == (0, 0, 2)
    (sample,) = buffer.samples()
    assert sample.count == 2 and sample.text == "What is my balance"
    (stats,) = buffer.stats()
    assert (stats.label, stats.stored, stats.total, stats.duplicates, stats.new) == ("balance", 1, 2, 1, 1)


def test_same_text_other_label_is_another_sample(buffer):
    buffer.add([ev(1, "book it", "book_flight"), ev(2, "book it", "book_hotel")])
    assert {s.label for s in buffer.samples()} == {"book_flight", "book_hotel"}
    assert buffer.labels() == {"book_flight", "book_hotel"}  # new labels just appear (class-incremental)


def test_pii_is_masked_before_storage(buffer):
    buffer.add([ev(1, "card 4111 1111 1111 1111, mail a@b.io, call +44 20 7946 0958", "report_lost_card")])
    (sample,) = buffer.samples()
    assert "4111" not in sample.text and "a@b.io" not in sample.text and "7946" not in sample.text
    assert "<CARD>" in sample.text and "<EMAIL>" in sample.text and "<PHONE>" in sample.text


def test_cursor_marks_what_is_new(buffer):
    buffer.add([ev(i, f"text {i}", "a") for i in range(5)])
    new, upto = buffer.new_samples()
    assert len(new) == 5 and buffer.new_count() == 5
    buffer.advance_cursor(upto)
    assert buffer.new_count() == 0 and buffer.new_samples()[0] == []
    buffer.add([ev(10, "text 10", "b")])
    new, _ = buffer.new_samples()
    assert [s.text for s in new] == ["text 10"]
    assert buffer.advance_cursor(1) == upto  # never backwards


def test_eviction_is_class_balanced_and_spares_untrained(buffer):
    buffer.add([ev(i, f"big {i}", "big") for i in range(90)] + [ev(100 + i, f"small {i}", "small") for i in range(10)])
    _, upto = buffer.new_samples()
    buffer.advance_cursor(upto)
    buffer.add([ev(200 + i, f"fresh {i}", "fresh") for i in range(30)])
    assert buffer.size() == 100
    by_label = {s.label: s.stored for s in buffer.stats()}
    assert by_label == {"big": 60, "small": 10, "fresh": 30}
    buffer.add([ev(300 + i, f"more {i}", "more") for i in range(20)])
    assert {s.label: s.stored for s in buffer.stats()} == {"big": 40, "small": 10, "fresh": 30, "more": 20}


def test_untrained_samples_are_never_evicted(settings):
    buffer = Stores.from_settings(settings.model_copy(update={"buffer_capacity": 100})).buffer
    buffer.add([ev(i, f"text {i}", f"l{i % 3}") for i in range(120)])
    assert buffer.size() == 120 and buffer.new_count() == 120  # over capacity until trained on
    _, upto = buffer.new_samples()
    buffer.advance_cursor(upto)
    assert buffer.evict_over_capacity() == 20 and buffer.size() == 100


def test_dead_letters_are_counted_once_per_record(buffer):
    letters = [("t:0:5", None), ("t:1:7", "weather")]
    buffer.record_dead_letters(letters)
    buffer.record_dead_letters(letters)  # a redelivered batch
    stats = {s.label: s.dead_lettered for s in buffer.stats()}
    assert stats == {"weather": 1, "(none)": 1}


def test_held_counts_follow_samples_in_and_out_without_reading_texts(buffer):
    buffer.add([ev(i, f"text {i}", "x" if i < 3 else "newlab") for i in range(5)])
    sids = [s.sid for s in buffer.samples()]
    by_text = {s.text: s.sid for s in buffer.samples()}
    buffer.quarantine([(by_text["text 0"], "live says y (0.90); 9/10 neighbours say y"),
                       (by_text["text 1"], "source quarantined"),
                       (by_text["text 3"], "pending label: new label 'newlab' has 2 of 3 examples"),
                       (by_text["text 4"], "pending label: new label 'newlab' has 2 of 3 examples")])  # fmt: skip
    kinds, by_source, pending = buffer.held_counts()
    assert kinds == {"contradicted": 1, "source quarantined": 1, "pending label": 2}
    assert by_source == {"test": kinds}
    assert pending == [("newlab", 2, ["test"], "pending label: new label 'newlab' has 2 of 3 examples")]
    assert buffer.release([by_text["text 3"]]) == 1 and buffer.drop([by_text["text 0"]]) == 1
    kinds, _, pending = buffer.held_counts()
    assert kinds == {"source quarantined": 1, "pending label": 1} and pending[0][1] == 1
    assert len(sids) == 5


def test_a_trusted_event_vouches_for_a_held_sample_and_held_ones_are_capped(buffer):
    buffer.add([ev(1, "a poisoned looking text", "x")])
    (sample,) = buffer.samples()
    buffer.quarantine([(sample.sid, "live says y (0.90); 9/10 neighbours say y")])
    assert buffer.new_samples()[0] == []
    added = buffer.add([Incoming("e2", "a poisoned looking text", "x", "operator", 0.0, "admin", "admin")])
    assert added.sids == (sample.sid,) and buffer.held() == []
    (back,) = buffer.new_samples()[0]
    assert back.trusted == "admin" and back.origin == "test"  # the first sender's origin
    assert buffer.sources([sample.sid]) == [{"test", "admin"}]

    buffer.add([ev(10 + i, f"held text {i}", "x") for i in range(5)])
    held = [s.sid for s in buffer.samples() if s.text.startswith("held")]
    buffer.quarantine([(sid, "contradicted") for sid in held])
    assert buffer.trim_held(max_held=3, max_age_s=3600) == 2 and buffer.held_count() == 3
    assert buffer.trim_held(max_held=100, max_age_s=0.0, now=10**12) == 3 and buffer.held_count() == 0
    assert buffer.held_counts()[0] == {}


def test_samples_held_before_the_counters_existed_are_counted_once(buffer):
    buffer.add([ev(1, "old held text", "x"), ev(2, "another old one", "x")])
    sids = [s.sid for s in buffer.samples()]
    for sid in sids:  # held the way an older version held them: no counters
        buffer.r.zrem(f"{buffer.p}:log", sid)
        buffer.r.zrem(f"{buffer.p}:l:x", sid)
        buffer.r.hset(f"{buffer.p}:s:{sid}", mapping={"quarantined": "contradicted", "quarantined_at": 1.0})
        buffer.r.zadd(f"{buffer.p}:q", {sid: 1.0})
    assert buffer.held_counts()[0] == {"contradicted": 2}
    assert buffer.held_counts()[0] == {"contradicted": 2} and buffer.size() == 0 and buffer.held_count() == 2
