"""How an event's fate is told (``online.feedback.status.compose``), most decisive first, and the rounds'
sequence ranges that say which version trained a sample."""

from __future__ import annotations

from online.feedback.status import RoundRange, compose
from online.settings import Settings

S = Settings(_env_file=None)
STORED = {"state": "stored", "sid": "s1", "label": "bank", "source": "ann"}


def fate(record=STORED, sample=None, cursor=0, trained=None, memory=None):
    return compose(
        "e1", record, {"seq": "5", "label": "bank"} if sample is None else sample, cursor, trained, memory, S
    )


def test_each_state_and_its_precedence():
    assert fate(record={}).state == "unknown"
    assert fate(record={"accepted_at": "1"}).state == "accepted"
    assert fate(record={"state": "recorded"}).state == "recorded"
    dead = fate(record={"state": "dead", "reason": "unknown prediction_id 'x'"})
    assert (dead.state, dead.reason) == ("dead_lettered", "unknown prediction_id 'x'")
    assert fate().state == "stored" and fate(memory=("absorbed", "")).state == "stored"
    assert fate(memory=("active", "")).state == "memory"
    held = fate(sample={"seq": "5", "quarantined": "live says weather (0.91); 9/10 neighbours say weather"})
    assert held.state == "held" and "online quarantine release s1" in held.release and "admin token" in held.release
    assert fate(memory=("held", "live says weather (0.91)")).reason == "live says weather (0.91)"
    pending = fate(memory=("pending", ""))
    assert pending.state == "held" and "online labels approve bank" in pending.release
    source = fate(sample={"seq": "5", "quarantined": "source quarantined"})
    assert "--source" in source.release
    trained = fate(cursor=9, trained=RoundRange(3, 9, 4, "promoted"), memory=("active", ""))
    assert (trained.state, trained.version, trained.round_status) == ("trained", 4, "promoted")
    assert "answered by the correction memory" in trained.detail  # version 4 is not the one serving (rolled back)
    absorbed = fate(cursor=9, trained=RoundRange(3, 9, 4, "promoted"), memory=("absorbed", ""))
    assert absorbed.detail == "trained in version 4 (promoted)"
    assert fate(cursor=9, trained=RoundRange(3, 9, None, "idle")).version is None


def test_rounds_are_found_by_sequence(settings):
    from online.wiring.stores import Stores

    status = Stores.from_settings(settings).status
    status.round_done(0, 10, 2, "promoted")
    status.round_done(10, 10, None, "idle")  # nothing consumed: not recorded
    status.round_done(10, 25, 3, "rejected")
    assert status.round_of(1) == RoundRange(0, 10, 2, "promoted")
    assert status.round_of(10).version == 2 and status.round_of(11).version == 3
    assert status.round_of(26) is None
