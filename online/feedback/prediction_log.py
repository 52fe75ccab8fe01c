"""Every served prediction, kept in Redis for a while so thumbs feedback can be resolved.

``prediction_id`` -> text (PII-masked), label, score and the version that served it. The consumer
turns a thumbs event into a labelled example and charges it to that version's live accuracy.
"""

from __future__ import annotations

import time

import redis
from pydantic import BaseModel, Field

from online.feedback.pii import mask_pii
from online.keys import Keys


class PredictionRecord(BaseModel):
    prediction_id: str
    text: str
    label: str
    score: float
    version: int
    at: float = Field(default_factory=time.time)
    shadow_version: int | None = None  # a shadow candidate's answer to the same text (never returned)
    shadow_label: str | None = None
    memory_sid: str | None = None  # answered from this correction-memory entry (online.memory)
    # A generation (TASK=generate): ``text`` is its chat (JSON), ``answer`` what it generated, ``label`` empty.
    answer: str | None = None

    @property
    def is_generation(self) -> bool:
        return self.answer is not None


# A batch's records in one command: a pipeline of one SET per record cost 3x the client CPU (redis-py
# builds and parses a command per record: 378 against 128 us for 32 records, measured).
_RECORD = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end
"""


class PredictionLog:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        self.r = client
        self._key = keys.prediction
        self.ttl_s = ttl_s
        self._record = client.register_script(_RECORD)

    def record_many(self, records: list[PredictionRecord], masked: bool = False) -> None:
        """Store a batch in one round trip (texts PII-masked here unless ``masked`` says they are)."""
        if not records:
            return
        if not masked:
            records = [
                rec.model_copy(
                    update={"text": mask_pii(rec.text)} | ({} if rec.answer is None else {"answer": mask_pii(rec.answer)})
                )
                for rec in records
            ]
        self._record(
            keys=[self._key(rec.prediction_id) for rec in records],
            args=[self.ttl_s, *(rec.model_dump_json() for rec in records)],
        )

    def get_many(self, prediction_ids: list[str]) -> list[PredictionRecord | None]:
        if not prediction_ids:
            return []
        raws = self.r.mget([self._key(pid) for pid in prediction_ids])
        return [PredictionRecord.model_validate_json(raw) if raw else None for raw in raws]

    def get(self, prediction_id: str) -> PredictionRecord | None:
        raw = self.r.get(self._key(prediction_id))
        return PredictionRecord.model_validate_json(raw) if raw else None
