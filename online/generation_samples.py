"""Feedback on generations as replay-buffer samples (no torch here: the consumer imports it).

The buffer stores (text, label) samples; a generative one is a chat, an answer and, for a correction of a
served generation, the answer it replaces (a preference pair for later rounds), JSON-encoded as the text
under one of three reserved labels. The buffer's guarantees hold unchanged: idempotent by event id, exact
duplicates counted once with every source that sent them, PII-masked before storage, a training cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

CORRECTION = "gen:correction"  # the answer it should have given (supervised; with `rejected`: a pair)
UP = "gen:up"  # a generation a user marked good
DOWN = "gen:down"  # a generation a user marked bad
LABELS = (CORRECTION, UP, DOWN)


@dataclass(frozen=True)
class GenerationSample:
    messages: list[dict[str, str]]
    answer: str
    rejected: str | None = None  # a correction's replaced generation

    @property
    def prompt(self) -> str:
        return last_user_turn(self.messages)


def last_user_turn(messages: list[dict[str, str]]) -> str:
    """The last user turn of a chat: what the question was."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def encode(messages: list[dict[str, str]], answer: str, rejected: str | None = None) -> str:
    body: dict = {"messages": messages, "answer": answer}
    if rejected is not None:
        body["rejected"] = rejected
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def decode(text: str) -> GenerationSample:
    body = json.loads(text)
    return GenerationSample(body["messages"], body["answer"], body.get("rejected"))


def encode_chat(messages: list[dict[str, str]]) -> str:
    """A served generation's chat as the prediction log keeps it."""
    return json.dumps(messages, ensure_ascii=False)


def decode_chat(text: str) -> list[dict[str, str]]:
    return json.loads(text)
