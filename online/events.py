"""The feedback event contract (schema version 1), shared by the API, the consumer and any Kafka client.

A record on ``online.feedback`` is one UTF-8 JSON object:

- ``kind: "label"``: ``text`` and its correct ``label`` (optionally the ``prediction_id`` it corrects);
- ``kind: "thumbs"``: ``prediction_id`` and ``vote`` ``up``/``down``, optionally the correct ``label``;
- ``kind: "correction"`` (a generative deployment): the ``answer`` a generation should have given, for the
  ``prediction_id`` (its ``generation_id``) or for a ``prompt``.

Every event has ``event_id`` (idempotency key; assigned when absent), ``source`` (client id),
``timestamp`` (epoch seconds; assigned when absent) and ``schema_version``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator

SCHEMA_VERSION = 1
# A letter or digit of any script first (labels may be Chinese: 退款), then letters, digits, _ . : / - space.
LABEL_PATTERN = r"^[^\W_][\w.:/ -]{0,99}$"

Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
_LABEL: TypeAdapter[str] = TypeAdapter(Label)
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=10_000, pattern=r"\S")]


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id = Field(default_factory=lambda: uuid.uuid4().hex, description="Idempotency key.")
    source: Id = Field(description="Who sends it (client id); rate limits and statistics are per source.")
    timestamp: float = Field(default_factory=time.time, ge=0, description="Epoch seconds.")


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
