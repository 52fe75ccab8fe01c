"""The feedback event contract (schema version 1), shared by the API, the consumer and any Kafka client.

A record on ``online.feedback`` is one UTF-8 JSON object:

- ``kind: "label"``: ``text`` and its correct ``label`` (optionally the ``prediction_id`` it corrects);
- ``kind: "thumbs"``: ``prediction_id`` and ``vote`` ``up``/``down``, optionally the correct ``label``;
- ``kind: "correction"`` (a generative deployment): the ``answer`` a generation should have given, for the
  ``prediction_id`` (its ``generation_id``) or for a ``prompt``.

Every event has ``event_id`` (idempotency key; assigned when absent), ``source`` (client id),
``timestamp`` (epoch seconds; assigned when absent) and ``schema_version``.

Every field is bounded, so an event is bounded (``MAX_EVENT_BYTES``) and its fields are safe to store, copy
and re-encode: ids and sources of at most 128 ASCII characters, labels of at most 100, a text of at most
10,000 characters without control characters (tab, newline and carriage return allowed), a finite
timestamp between 2000-01-01 and a day ahead of the reader's clock. What validates here re-encodes
(:func:`encode_event`) into a record that validates again.

Event ids are the client's, so deduplication keys them by source (:func:`dedup_id`): a client that
guesses another's id scheme cannot make the other's events look like duplicates of its own.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
# A letter or digit of any script first (labels may be Chinese: 退款), then letters, digits, _ . : / - space.
LABEL_PATTERN = r"^[^\W_][\w.:/ -]{0,99}$"

Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
_LABEL: TypeAdapter[str] = TypeAdapter(Label)
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
MAX_TEXT_CHARS = 10_000
# The largest valid record: two texts (a correction's prompt and answer) of astral characters written as
# JSON escapes (12 bytes each, as ``json.dumps`` does by default) and every other field at its bound, with room.
MAX_EVENT_BYTES = 2 * 12 * MAX_TEXT_CHARS + 8_192
EARLIEST_TIMESTAMP = 946_684_800.0  # 2000-01-01T00:00:00Z
FUTURE_SKEW_S = 86_400.0  # a client's clock may run this far ahead of the reader's
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _no_control(text: str) -> str:
    found = _CONTROL.search(text)
    if found:
        raise ValueError(
            f"control character {found.group()!r} at {found.start()}: only tab, newline and carriage return are allowed"
        )
    return text


Text = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S"), AfterValidator(_no_control)
]


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id = Field(default_factory=lambda: uuid.uuid4().hex, description="Idempotency key.")
    source: Id = Field(description="Who sends it (client id); rate limits and statistics are per source.")
    timestamp: float = Field(
        default_factory=time.time,
        ge=EARLIEST_TIMESTAMP,
        allow_inf_nan=False,
        description="Epoch seconds: finite, from 2000-01-01 to a day ahead of the server's clock.",
    )

    @field_validator("timestamp")
    @classmethod
    def _not_ahead(cls, value: float) -> float:
        if not math.isfinite(value) or value > time.time() + FUTURE_SKEW_S:
            raise ValueError("timestamp is more than a day ahead of the server's clock (epoch seconds expected)")
        return value


class LabelEvent(_EventBase):
    kind: Literal["label"]
    text: Text
    label: Label
    prediction_id: Id | None = Field(None, description="The prediction this label corrects, if any.")


class ThumbsEvent(_EventBase):
    kind: Literal["thumbs"]
    prediction_id: Id
    vote: Literal["up", "down"]
    label: Label | None = Field(None, description="The correct label, for a thumbs down.")


class CorrectionEvent(_EventBase):
    kind: Literal["correction"]
    prediction_id: Id | None = Field(None, description="The generation (its generation_id) this corrects.")
    prompt: Text | None = Field(None, description="Or the prompt it answers, without a generation.")
    answer: Text = Field(description="What the model should have answered.")

    @model_validator(mode="after")
    def _one_of(self) -> "CorrectionEvent":
        if (self.prediction_id is None) == (self.prompt is None):
            raise ValueError("give exactly one of `prediction_id` (a generation) or `prompt`")
        return self


AnyEvent = LabelEvent | ThumbsEvent | CorrectionEvent
FeedbackEvent = Annotated[Union[LabelEvent, ThumbsEvent, CorrectionEvent], Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(FeedbackEvent)


def parse_event(raw: bytes) -> AnyEvent:
    """Validate one Kafka record value; raises ``pydantic.ValidationError`` (or ValueError) if bad."""
    return EVENT_ADAPTER.validate_json(raw)


def encode_event(event: AnyEvent) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def dedup_id(source: str, event_id: str) -> str:
    """The key an event is deduplicated (and its fate looked up) by: the event id within its source, as
    a digest of fixed shape (so no id, however shaped, collides with another key family). SHA-1, so a
    Redis script computes the same (``redis.sha1hex(source .. "\31" .. event_id)``)."""
    return hashlib.sha1(f"{source}\x1f{event_id}".encode()).hexdigest()


def event_json_schema() -> dict:
    return EVENT_ADAPTER.json_schema()


def label_ok(label: str) -> bool:
    """Whether an event can carry ``label`` (pydantic's check, not Python ``re``: the two disagree on
    combining marks, so a label from a user's file or model is judged exactly as the API judges it)."""
    try:
        _LABEL.validate_python(label)
    except ValidationError:
        return False
    return True
