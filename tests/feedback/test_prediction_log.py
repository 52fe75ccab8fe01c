"""The prediction log: a batch stored in one call, masked, each record with the log's TTL."""

from __future__ import annotations

from online.feedback.prediction_log import PredictionRecord
from online.wiring.stores import Stores


def test_a_batch_is_stored_masked_with_its_ttl(settings):
    stores = Stores.from_settings(settings.model_copy(update={"prediction_ttl_s": 300}))
    log = stores.predictions
    records = [
        PredictionRecord(prediction_id=f"p{i}", text=f"mail me at user{i}@example.com", label="a", score=0.5, version=1)
        for i in range(40)
    ]
    log.record_many(records)
    got = log.get_many([f"p{i}" for i in range(40)] + ["missing"])
    assert got[-1] is None
    assert [r.prediction_id for r in got[:-1]] == [f"p{i}" for i in range(40)]
    assert all("@example.com" not in r.text for r in got[:-1])  # masked before it is stored
    ttls = [stores.redis.ttl(stores.keys.prediction(f"p{i}")) for i in (0, 39)]
    assert all(0 < t <= 300 for t in ttls), ttls
    log.record_many([])  # nothing to do, no error
