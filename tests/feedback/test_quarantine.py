"""Poisoning quarantine: a flipped label is held and not trained on, agreement from enough distinct
sources releases it, and a hostile source is quarantined as a whole."""

from __future__ import annotations

import random
import time

import pytest

from online.feedback.buffer import Incoming, ReplayBuffer
from online.feedback.quarantine import SOURCE_HELD
from online.learning.round import RoundRunner
from online.lifecycle.gate import Gate, GoldenSet
from online.wiring.stores import Stores
from tests import helpers

HONEST = ["alice", "bob", "carol"]


@pytest.fixture
def qsettings(settings, tmp_path):
    return helpers.keyword_round_settings(settings, tmp_path, holdout_min_new=1000, quarantine_source_min_events=10)


@pytest.fixture
def parts(qsettings):
    stores = Stores.from_settings(qsettings)
    registry, buffer = stores.registry, stores.buffer
    helpers.train_v1(qsettings, registry)
    runner = RoundRunner(
        stores,
        Gate(qsettings, GoldenSet.for_settings(qsettings)),
        seed_examples=helpers.examples(helpers.OLD, 40, seed=1),
    )
    return registry, buffer, runner, stores.sources


def send(buffer: ReplayBuffer, items: list[tuple[str, str, str]]) -> None:
    buffer.add(
        [
            Incoming(f"{src}-{time.monotonic_ns()}-{i}", t, lab, src, time.time())
            for i, (t, lab, src) in enumerate(items)
        ]
    )


def honest(n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(t, lab, rng.choice(HONEST)) for t, lab in helpers.examples(helpers.OLD, n, seed=seed)]


def test_a_flipped_label_is_held_and_released_when_enough_sources_agree(parts):
    registry, buffer, runner, ledger = parts
    flipped = ("please rain today", "bank", "mallory")  # the live model and every neighbour say weather
    send(buffer, honest(10, seed=21) + [flipped])

    report = runner.run()
    assert report.status == "promoted"
    (held,) = buffer.held()
    assert (held.text, held.label, held.source) == flipped[:3] and "weather" in held.reason
    assert registry.get(report.version).round.quarantined == 1
    assert flipped[0] not in {s.text for s in buffer.samples()}  # not trained, not rehearsed
    assert "mallory" not in ledger.quarantined()  # one contradiction is not a hostile source

    send(buffer, [(flipped[0], "bank", "dave")])  # a second source agrees: not enough yet
    runner.run()
    assert [h.text for h in buffer.held()] == [flipped[0]]
    send(buffer, [(flipped[0], "bank", "erin")])  # a third distinct source: released, trained next
    runner.run()
    assert buffer.held() == []
    assert flipped[0] in {s.text for s in buffer.samples()}


def test_a_hostile_source_is_quarantined_as_a_whole(parts):
    registry, buffer, runner, ledger = parts
    rng = random.Random(3)
    hostile = [
        (t, rng.choice([lab for lab in helpers.OLD if lab != true]), "mallory")
        for t, true in helpers.examples(helpers.OLD, 6, seed=31)
    ]
    send(buffer, honest(10, seed=22) + hostile)

    report = runner.run()
    assert "mallory" in ledger.quarantined()
    held = buffer.held()
    assert {h.source for h in held} == {"mallory"} and len(held) == len(hostile)
    assert sum(h.reason == SOURCE_HELD for h in held) >= 1  # some held only because of their source
    assert report.new == len({(t, lab) for t, lab, _ in honest(10, seed=22)})  # every honest sample trained on
    stats = ledger.stats()["mallory"]
    assert stats["quarantined"] == 1 and stats["contradicted"] / stats["judged"] > 0.5
    assert all(ledger.stats()[s]["quarantined"] == 0 for s in HONEST)

    send(buffer, [("some guitar song", "weather", "mallory")])  # later events of the source wait too
    runner.run()
    assert "some guitar song" in {h.text for h in buffer.held()}


def test_operators_list_release_and_drop_held_samples(qsettings, parts):
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from services.api.app import create_app

    _, buffer, runner, _ = parts
    send(
        buffer,
        honest(10, seed=23) + [("the rain forecast", "music", "mallory"), ("a guitar concert", "bank", "mallory")],
    )
    runner.run()
    held = {h.text: h.sid for h in buffer.held()}
    assert set(held) == {"the rain forecast", "a guitar concert"}
    secured = qsettings.model_copy(update={"admin_token": SecretStr("s3cret")})
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(secured)) as client:
        assert client.get("/v1/quarantine").status_code == 401  # it shows texts: admin only
        listed = client.get("/v1/quarantine", headers=auth).json()
        assert {h["text"] for h in listed["held"]} == set(held)
        assert {s["source"] for s in listed["sources"]} >= {"mallory", *HONEST}
        resp = client.post("/v1/quarantine/drop", json={"sids": [held["a guitar concert"]]}, headers=auth)
        assert resp.json() == {"changed": 1}
        resp = client.post("/v1/quarantine/release", json={"sids": [held["the rain forecast"]]}, headers=auth)
        assert resp.json() == {"changed": 1}
    assert buffer.held() == [] and buffer.new_count() == 1  # released: trained by the next round
    assert "a guitar concert" not in {s.text for s in buffer.samples()}


def test_a_round_with_everything_held_publishes_nothing(parts):
    registry, buffer, runner, ledger = parts
    ledger.quarantine("mallory")
    send(buffer, [(t, lab, "mallory") for t, lab in helpers.examples(["travel"], 6, seed=60)])
    before = [m.version for m in registry.list()]

    report = runner.run()
    assert report.status == "idle" and report.quarantined == 6 and report.held_by_reason == {SOURCE_HELD: 6}
    assert [m.version for m in registry.list()] == before  # no idle version
    assert buffer.new_count() == 0  # and the held samples are not retried as new every poll


def test_a_release_sticks_and_a_drop_never_returns(parts):
    from online.feedback import quarantine

    registry, buffer, runner, ledger = parts
    flipped = [("please rain today", "bank", "mallory"), ("a guitar concert now", "weather", "mallory")]
    send(buffer, honest(10, seed=61) + flipped)
    runner.run()
    held = {h.text: h.sid for h in buffer.held()}
    assert set(held) == {t for t, _, _ in flipped}
    assert quarantine.release(buffer, ledger, [held["please rain today"]]) == 1
    assert quarantine.drop(buffer, runner.stores.corrections, [held["a guitar concert now"]]) == 1

    report = runner.run()  # the operator's word outranks the screen: not held again
    assert report.new == 1 and report.quarantined == 0 and buffer.held() == []
    send(buffer, [flipped[1]])  # the dropped (text, label) sent again, as a new event
    assert buffer.new_count() == 0 and buffer.held() == []
    assert "a guitar concert now" not in {s.text for s in buffer.samples()}


def test_one_source_cannot_flood_the_label_space(parts):
    registry, buffer, runner, ledger = parts
    rng = random.Random(62)
    invented = [(t, f"label-{i}", "mallory") for i, (t, _) in enumerate(helpers.examples(helpers.OLD, 10, seed=63))]
    flood = [(f"{rng.choice(helpers.FILLER)} {w} {rng.choice(helpers.FILLER)}", f"made-up-{w}", "mallory")
             for w in ("zebra", "quartz", "nebula", "walrus", "tundra") for _ in range(4)]  # fmt: skip
    send(buffer, honest(10, seed=64) + invented + flood)

    report = runner.run()
    live = set(registry.get(registry.live()).labels)
    assert not {f"label-{i}" for i in range(30)} & live  # one example each: none is a label yet
    assert len({lab for _, lab, _ in flood} & live) <= 3  # the hourly budget of one source
    summary = quarantine_summary(buffer, ledger)
    assert sum(summary.held.by_source["mallory"].values()) == report.quarantined
    assert not summary.held.by_source.keys() - {"mallory"}  # the honest sources' feedback all trained


def test_a_new_label_cannot_take_over_an_existing_intent_without_approval(parts):
    from online.feedback.quarantine import approve_label

    registry, buffer, runner, ledger = parts
    hijack = [(t, "acct_money", "mallory") for t, _ in helpers.examples(["bank"], 12, seed=65)]
    send(buffer, honest(10, seed=66) + hijack)
    runner.run()
    assert "acct_money" not in registry.get(registry.live()).labels
    pending = quarantine_summary(buffer, ledger).pending_labels
    assert [p.label for p in pending] == ["acct_money"] and "take over" in pending[0].reason

    new, released = approve_label(runner.stores.labels, buffer, "acct_money")  # the operator says yes
    assert new and released == pending[0].examples >= 3  # those held as contradicted stay held
    report = runner.run()
    assert "acct_money" in report.added_labels and report.quarantined == 0
    assert "acct_money" in runner.stores.labels.approved()  # remembered


def quarantine_summary(buffer, ledger):
    from online.feedback.quarantine import screening_summary

    return screening_summary(buffer, ledger, set())


def test_more_pending_examples_than_a_round_takes_do_not_keep_the_trainer_screening(qsettings):
    """Examples of a label awaiting an operator are held once and counted, not screened again each round:
    with more of them than a round takes, the trainer still goes idle; the approval releases them all."""
    s = qsettings.model_copy(update={"label_policy": "approval", "round_max_new": 5})
    stores = Stores.from_settings(s)
    helpers.train_v1(s, stores.registry)
    runner = RoundRunner(stores, Gate(s, GoldenSet.for_settings(s)), seed_examples=helpers.examples(helpers.OLD, 40, 1))
    send(stores.buffer, [(f"how do i bake bread number {i}", "cooking", "alice") for i in range(12)])
    reports = [runner.run() for _ in range(4)]
    assert [r.quarantined for r in reports] == [5, 5, 2, 0]
    assert reports[-1].status == "idle" and stores.buffer.new_count() == 0 and stores.buffer.held_count() == 12
    assert runner.run().quarantined == 0  # and stays idle

    from online.feedback.quarantine import approve_label

    assert approve_label(stores.labels, stores.buffer, "cooking") == (True, 12)
    assert stores.buffer.new_count() == 12


def test_held_pending_examples_count_toward_a_new_labels_minimum(parts):
    """Two held examples of a new label and one new one make the three the label rules ask for."""
    registry, buffer, runner, ledger = parts
    send(buffer, [("how do i bake bread", "cooking", "alice"), ("preheat the oven please", "cooking", "alice")])
    first = runner.run()
    assert first.quarantined == 2 and first.held_by_reason == {"pending label": 2}
    send(buffer, [("grill the fish tonight", "cooking", "alice")])
    second = runner.run()
    assert second.quarantined == 0 and second.new == 1  # allowed: 1 new + 2 held = 3 examples


@pytest.mark.parametrize(
    "origins, held",
    [
        (["addr:10.0.0.9"], True),  # one keyless client, however many names: one sender, held
        (["key:ops"], False),  # a sender with a feedback key moving a boundary on purpose
        (["addr:10.0.0.1", "addr:10.0.0.2", "addr:10.0.0.3"], False),  # three independent clients agree
    ],
)
def test_a_coherent_correction_moves_a_boundary_only_for_an_accountable_sender(parts, origins, held):
    """45 texts the live model answers `music`, all relabelled `weather`: a boundary moved on purpose when a
    feedback key or enough independent senders say so. From one anonymous client address the confident
    ones are held, as a single such correction is, and the sender's own 45 texts do not crowd every other
    neighbour out of the screen's search (found as a user: 30 names from one address relabelled 183 texts
    of a taught intent; 5 were held)."""
    registry, buffer, runner, ledger = parts
    moved = [(t, "weather") for t, _ in helpers.examples(["music"], 45, seed=60)]
    buffer.add(
        [
            Incoming(f"m{i}", t, lab, f"user{i % 5}", time.time(), origin=origins[i % len(origins)])
            for i, (t, lab) in enumerate(moved)
        ]
    )
    runner.run()
    held_texts = {h.text for h in buffer.held()}
    distinct = {t for t, _ in moved}
    if held:  # those the live model answers with confidence >= quarantine_confidence (0.8)
        assert held_texts <= distinct and len(held_texts) >= 5, len(held_texts)
    else:
        assert not held_texts & distinct
        assert distinct <= {s.text for s in buffer.samples() if s.label == "weather"}


def test_one_keyless_address_is_quarantined_as_a_whole_whatever_names_it_uses(parts):
    """The flood that wore the confidence rule down over rounds (found as a user): one client address
    relabelling a learned intent under 30 names, a few examples per name. Counted per name no source
    reached the ledger's minimum; counted per origin the address is quarantined in the first round, its
    not-so-confident examples held with the rest, and what it sends next under a fresh name is held too.
    An operator releases or erases it by its origin."""
    from online.feedback.quarantine import release
    from online.lifecycle.erasure import forget

    registry, buffer, runner, ledger = parts
    address = "addr:10.0.0.66"
    flood = [(t, "weather") for t, _ in helpers.examples(["music"], 40, seed=61)]
    buffer.add(
        [Incoming(f"f{i}", t, lab, f"user{i % 30}", time.time(), origin=address) for i, (t, lab) in enumerate(flood)]
    )
    memory = runner.stores.corrections  # what it taught earlier the correction memory answers...
    memory.add([Incoming("e0", "play the blues", "weather", "user0", time.time(), origin=address)])
    assert [c.text for c in memory.snapshot()[1]] == ["play the blues"]
    first = runner.run()
    assert memory.snapshot()[1] == []  # ...until its origin is quarantined
    assert address in ledger.quarantined()
    assert not any(name.startswith("user") for name in ledger.quarantined())
    assert first.held_by_reason.get(SOURCE_HELD, 0) > 0, first
    held = buffer.held()
    assert {h.text for h in held} == {t for t, _ in flood}
    assert {h.reason for h in held} >= {SOURCE_HELD} and {h.origin for h in held} == {address}

    later = helpers.examples(["music"], 3, seed=62)
    buffer.add([Incoming(f"g{i}", t, "weather", "brand-new", time.time(), origin=address) for i, (t, _) in enumerate(later)])
    send(buffer, honest(4, seed=63))  # an honest sender beside it is trained
    second = runner.run()
    assert second.held_by_reason == {SOURCE_HELD: 3}
    assert {h.text for h in buffer.held() if h.source == "brand-new"} == {t for t, _ in later}

    # a name is free text: another client calling itself by this address rides on nothing
    buffer.add([Incoming("x0", "play some techno", "weather", address, time.time(), origin="addr:10.0.0.99")])
    runner.run()
    released = release(buffer, ledger, source=address)  # the operator's word: out of quarantine
    assert released == len(flood) + 3 and address not in ledger.quarantined()
    assert address not in ledger.trusted()  # an address has no key to trust: it is screened again
    assert {h.origin for h in buffer.held()} <= {"addr:10.0.0.99"}

    before = time.time()
    erased = forget(Stores.from_settings(runner.s), source=address)
    assert erased.buffer == len(flood) + 3
    # in flight when erased, under yet another name: kept out by the tombstone of the origin
    late = buffer.add([Incoming("h0", "play some jazz", "weather", "other-name", before, origin=address)])
    assert late.erased == 1 and late.added == 0
    assert not {(s.text, s.label) for s in buffer.samples()} & set(flood), [
        (s.text, s.label, s.source, s.origin) for s in buffer.samples() if (s.text, s.label) in set(flood)
    ]


def test_erasing_held_samples_says_none_was_trained_and_empties_the_held_counts(parts):
    """Found as a user: `online forget --source addr:...` on 300 held samples printed "300 already trained
    on" (their sequence was behind the cursor) and `online status` still showed 300 held."""
    from online.feedback.quarantine import screening_summary
    from online.lifecycle.erasure import forget

    registry, buffer, runner, ledger = parts
    address = "addr:10.0.0.67"
    flood = [(t, "weather") for t, _ in helpers.examples(["music"], 30, seed=64)]
    buffer.add([Incoming(f"q{i}", t, lab, f"u{i % 7}", time.time(), origin=address) for i, (t, lab) in enumerate(flood)])
    runner.run()
    held = buffer.held_count()
    assert held == len(set(flood)) and screening_summary(buffer, ledger, set()).held.total == held
    erased = forget(Stores.from_settings(runner.s), source=address)
    assert (erased.buffer, erased.trained) == (held, 0)
    summary = screening_summary(buffer, ledger, set())
    assert summary.held.total == 0 and summary.held.by_source == {}


def test_a_keyless_client_cannot_buy_label_budget_with_invented_names(parts):
    """The hourly label-creation budget counts a keyless client by its address: five invented labels under
    five names from one address create at most the budget's 3 (counted per name, all five went live)."""
    registry, buffer, runner, ledger = parts
    words = ("zebra", "quartz", "nebula", "walrus", "tundra")
    flood = [(f"{w} {w} {w} number {k}", f"made-up-{w}", f"name-{w}") for w in words for k in range(4)]
    buffer.add(
        [Incoming(f"n{i}", t, lab, src, time.time(), origin="addr:10.0.0.68") for i, (t, lab, src) in enumerate(flood)]
    )
    runner.run()
    live = set(registry.get(registry.live()).labels)
    assert len({f"made-up-{w}" for w in words} & live) == 3
    assert {h.reason for h in buffer.held()} == {
        f"pending label: source 'addr:10.0.0.68' created 3 new labels this hour (`online labels approve {lab}`)"
        for lab in {f"made-up-{w}" for w in words} - live
    }
