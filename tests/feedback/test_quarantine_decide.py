"""Unit tests of the quarantine's pure decisions: :func:`decide` and :func:`batch_counts`.

No Redis, no model: the per-source ledger is the plain dict ``decide`` folds each batch into."""

from __future__ import annotations

import pytest

from online.feedback.quarantine import SOURCE_HELD, Candidate, Judged, ScreenConfig, batch_counts, decide
from online.settings import Settings

CONTRA = Judged(True, False, "")  # contradicted by neighbours, but live not confident: not held alone
CLEAN = Judged(False, False, "")  # neighbours agree
UNKNOWN = Judged(None, False, "")  # nothing can confirm or deny: never counted


def cfg(max_rate: float = 0.5, min_events: int = 4) -> ScreenConfig:
    return ScreenConfig(
        confidence=0.8,
        neighbours=10,
        majority=0.6,
        source_max_rate=max_rate,
        source_min_events=min_events,
        release_sources=3,
    )


def batch(source: str, judgements: list[Judged]) -> tuple[list[Candidate], list[Judged]]:
    items = [Candidate(f"{source} text {i}", "lab", source) for i in range(len(judgements))]
    return items, list(judgements)


# --- batch_counts ---------------------------------------------------------------------------------


def test_batch_counts_per_source_judged_and_contradicted():
    items = [
        Candidate("a1", "x", "alice"),
        Candidate("a2", "x", "alice"),
        Candidate("a3", "x", "alice"),
        Candidate("b1", "y", "bob"),
        Candidate("b2", "y", "bob"),
    ]
    judged = [CONTRA, CLEAN, Judged(True, True, "why"), CLEAN, CLEAN]
    assert batch_counts(items, judged) == {"alice": (3, 2), "bob": (2, 0)}


def test_batch_counts_skips_unjudgeable_items():
    items = [Candidate("a1", "x", "alice"), Candidate("a2", "x", "alice"), Candidate("c1", "new", "carol")]
    judged = [UNKNOWN, CONTRA, UNKNOWN]
    counts = batch_counts(items, judged)
    assert counts == {"alice": (1, 1)}
    assert "carol" not in counts  # a source with only unjudgeable items is not counted at all


def test_batch_counts_empty():
    assert batch_counts([], []) == {}


# --- decide: source quarantine --------------------------------------------------------------------


def test_source_past_max_rate_after_min_events_is_newly_quarantined_and_all_its_items_held():
    items, judged = batch("mallory", [CONTRA, CONTRA, CONTRA, CLEAN])  # 3/4 = 0.75 > 0.5, 4 >= 4 events
    honest_items, honest_judged = batch("alice", [CLEAN, CLEAN])
    stats: dict[str, list[int]] = {}
    reasons, newly = decide(items + honest_items, judged + honest_judged, stats, set(), cfg())
    assert newly == {"mallory"}
    # Every item of the quarantined source is held, including the one its neighbours agreed with.
    assert reasons == [SOURCE_HELD] * 4 + [None, None]


def test_below_min_events_no_quarantine_however_bad():
    items, judged = batch("mallory", [CONTRA, CONTRA, CONTRA])  # 100% contradicted but only 3 < 4 judged
    stats: dict[str, list[int]] = {}
    reasons, newly = decide(items, judged, stats, set(), cfg(min_events=4))
    assert newly == set()
    assert reasons == [None, None, None]
    assert stats == {"mallory": [3, 3]}


def test_exactly_min_events_is_enough():
    items, judged = batch("mallory", [CONTRA] * 4)
    _, newly = decide(items, judged, {}, set(), cfg(min_events=4))
    assert newly == {"mallory"}


def test_rate_must_exceed_max_rate_strictly():
    items, judged = batch("borderline", [CONTRA, CONTRA, CLEAN, CLEAN])  # exactly 0.5
    reasons, newly = decide(items, judged, {}, set(), cfg(max_rate=0.5, min_events=4))
    assert newly == set()
    assert reasons == [None] * 4


def test_unjudgeable_items_do_not_count_towards_min_events():
    # 3 contradicted + 5 unknown: only 3 judged, below min_events=4, so no quarantine.
    items, judged = batch("newintent", [CONTRA, CONTRA, CONTRA] + [UNKNOWN] * 5)
    stats: dict[str, list[int]] = {}
    reasons, newly = decide(items, judged, stats, set(), cfg(min_events=4))
    assert newly == set()
    assert all(r is None for r in reasons)
    assert stats == {"newintent": [3, 3]}


def test_already_quarantined_source_is_held_but_not_newly_quarantined():
    items, judged = batch("mallory", [CONTRA, CONTRA, CONTRA, CONTRA])
    stats = {"mallory": [10, 9]}
    reasons, newly = decide(items, judged, stats, {"mallory"}, cfg())
    assert newly == set()
    assert reasons == [SOURCE_HELD] * 4
    assert stats == {"mallory": [14, 13]}  # still counted


def test_quarantined_source_items_held_even_when_clean():
    items, judged = batch("mallory", [CLEAN, UNKNOWN])
    reasons, newly = decide(items, judged, {}, {"mallory"}, cfg())
    assert reasons == [SOURCE_HELD, SOURCE_HELD]
    assert newly == set()


def test_history_accumulates_across_batches():
    stats: dict[str, list[int]] = {}
    first, fj = batch("mallory", [CONTRA, CONTRA])
    reasons, newly = decide(first, fj, stats, set(), cfg(min_events=4))
    assert newly == set() and reasons == [None, None]
    assert stats == {"mallory": [2, 2]}
    second, sj = batch("mallory", [CONTRA, CLEAN])  # together 3/4 = 0.75
    reasons, newly = decide(second, sj, stats, set(), cfg(min_events=4))
    assert newly == {"mallory"}
    assert reasons == [SOURCE_HELD, SOURCE_HELD]
    assert stats == {"mallory": [4, 3]}


def test_good_history_dilutes_a_bad_batch():
    stats = {"alice": [96, 0]}
    items, judged = batch("alice", [CONTRA] * 4)  # 4/100 contradicted overall
    reasons, newly = decide(items, judged, stats, set(), cfg(max_rate=0.5, min_events=4))
    assert newly == set()
    assert reasons == [None] * 4
    assert stats == {"alice": [100, 4]}


def test_stats_updated_in_place_and_other_sources_untouched():
    stats = {"alice": [5, 1], "bob": [7, 0]}
    same = stats
    items = [Candidate("t1", "x", "alice"), Candidate("t2", "x", "carol"), Candidate("t3", "x", "dave")]
    judged = [CONTRA, CLEAN, UNKNOWN]
    decide(items, judged, stats, set(), cfg(min_events=100))
    assert stats is same
    assert stats == {"alice": [6, 2], "bob": [7, 0], "carol": [1, 0]}  # dave: nothing judged, no entry


def test_an_anonymous_sender_is_one_ledger_entry_whatever_names_it_invents():
    # the flood found as a user: one keyless address, 30 names, a few contradicted examples each. Per
    # name none reaches min_events; per origin the address is quarantined and all of it held.
    items = [Candidate(f"t{n}", "balance", f"user{n % 30}", "addr:10.0.0.9") for n in range(60)]
    keyed = [Candidate(f"k{n}", "balance", f"agent{n}", f"key:agent{n}") for n in range(3)]
    judged = [CONTRA] * 60 + [CONTRA] * 3
    stats: dict[str, list[int]] = {}
    reasons, newly = decide(items + keyed, judged, stats, set(), cfg(min_events=4))
    assert newly == {"addr:10.0.0.9"}
    assert reasons[:60] == [SOURCE_HELD] * 60
    # a keyed source stays its own (named) entry: an operator can release its key
    assert stats["addr:10.0.0.9"] == [60, 60] and stats["agent0"] == [1, 1]
    assert not any(k.startswith("user") for k in stats)
    assert reasons[60:] == [None] * 3  # 1 judged each: under min_events


def test_a_quarantined_origin_holds_its_later_events_under_any_name():
    items = [Candidate("a", "x", "brand-new-name", "addr:10.0.0.9"), Candidate("b", "x", "alice", "key:alice")]
    reasons, _ = decide(items, [CLEAN, CLEAN], {}, {"addr:10.0.0.9"}, cfg(min_events=100))
    assert reasons == [SOURCE_HELD, None]


# --- decide: event-level holds --------------------------------------------------------------------


def test_items_judged_hold_get_their_own_reason():
    items = [Candidate("a", "x", "alice"), Candidate("b", "x", "alice"), Candidate("c", "x", "alice")]
    judged = [Judged(True, True, "live says y (0.95); 8/10 neighbours say y"), CLEAN, UNKNOWN]
    reasons, newly = decide(items, judged, {}, set(), cfg(min_events=100))
    assert newly == set()
    assert reasons == ["live says y (0.95); 8/10 neighbours say y", None, None]


def test_contradicted_but_not_hold_is_trained_on():
    items, judged = batch("alice", [Judged(True, False, "ignored")])
    reasons, _ = decide(items, judged, {}, set(), cfg(min_events=100))
    assert reasons == [None]


def test_source_quarantine_overrides_event_reason():
    items, judged = batch("mallory", [Judged(True, True, "event reason")] * 4)
    reasons, newly = decide(items, judged, {}, set(), cfg())
    assert newly == {"mallory"}
    assert reasons == [SOURCE_HELD] * 4


def test_reasons_align_with_items():
    items = [Candidate("m", "x", "mallory"), Candidate("a", "x", "alice"), Candidate("m2", "x", "mallory")]
    judged = [CLEAN, Judged(True, True, "r"), CLEAN]
    reasons, _ = decide(items, judged, {}, {"mallory"}, cfg(min_events=100))
    assert reasons == [SOURCE_HELD, "r", SOURCE_HELD]


# --- ScreenConfig ---------------------------------------------------------------------------------


def test_screen_config_from_settings_maps_every_field():
    s = Settings(
        _env_file=None,
        quarantine_confidence=0.7,
        quarantine_neighbours=7,
        quarantine_majority=0.65,
        quarantine_source_max_rate=0.3,
        quarantine_source_min_events=11,
        quarantine_release_sources=4,
    )
    assert ScreenConfig.from_settings(s) == ScreenConfig(
        confidence=0.7, neighbours=7, majority=0.65, source_max_rate=0.3, source_min_events=11, release_sources=4
    )


def test_screen_config_is_frozen():
    c = cfg()
    with pytest.raises(AttributeError):
        c.source_max_rate = 0.9  # type: ignore[misc]
