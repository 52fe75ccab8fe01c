"""The generative API's bodies: ``POST /v1/generate`` and the OpenAI-compatible ``POST /v1/chat/completions``.

Limits come from Settings (the request models are built per deployment, like predict's), so the OpenAPI
schema states them. The chat-completions shapes are OpenAI's, field for field where a client reads them
(``choices[0].message.content``, ``usage``, the ``chat.completion.chunk`` stream); each answer also names
its ``model_version`` and ``generation_id`` (quote it in feedback), extra fields an SDK keeps as extras.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator

from online.settings import Settings

Role = Literal["system", "user", "assistant"]


class MessageBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class GenerateRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_of(self) -> "GenerateRequestBase":
        if (self.prompt is None) == (self.messages is None):  # type: ignore[attr-defined]
            raise ValueError("give exactly one of `prompt` (one string) or `messages` (a chat)")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The request as chat turns: a bare prompt is one user turn."""
        if self.prompt is not None:  # type: ignore[attr-defined]
            return [{"role": "user", "content": self.prompt}]  # type: ignore[attr-defined]
        return [{"role": m.role, "content": m.content} for m in self.messages]  # type: ignore[attr-defined]


def _sampling_fields(settings: Settings, tokens_field: str) -> dict:
    default_tokens = min(128, settings.generate_max_new_tokens)
    return {
        tokens_field: (
            int,
            Field(default_tokens, ge=1, le=settings.generate_max_new_tokens, description="Most tokens to generate."),
        ),
        "temperature": (
            float,
            Field(settings.generate_temperature, ge=0, le=2, description="0: greedy (deterministic)."),
        ),
        "top_p": (float, Field(1.0, gt=0, le=1, description="Nucleus sampling: the smallest set of this mass.")),
    }


def generate_request_model(settings: Settings) -> type[GenerateRequestBase]:
    """The /v1/generate body with this deployment's limits baked into its schema."""
    Content = Annotated[str, StringConstraints(min_length=1, max_length=settings.generate_max_prompt_chars)]
    message = create_model("Message", __base__=MessageBase, content=(Content, ...))
    return create_model(
        "GenerateRequest",
        __base__=GenerateRequestBase,
        prompt=(Content | None, Field(None, description="One user turn (the model's chat template applies).")),
        messages=(
            list[message] | None,  # type: ignore[valid-type]
            Field(None, min_length=1, max_length=settings.generate_max_messages, description="A chat."),
        ),
        **_sampling_fields(settings, "max_new_tokens"),
    )


FinishReason = Literal["stop", "length"]


class GenerateResponse(BaseModel):
    generation_id: str = Field(description="Quote it in feedback (thumbs or a correction) as `prediction_id`.")
    text: str
    model_version: int = Field(description="The version that generated it.")
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    source: Literal["model", "memory"] = Field(
        "model", description="memory: a correction taught through feedback answered it, before any round trained on it."
    )
    memory_event_id: str | None = Field(None, description="With source memory: the feedback event that taught it.")


# --- OpenAI-compatible chat completions ----------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatRequestBase(BaseModel):
    """OpenAI's request; fields an SDK sends that change nothing here (``user``, ``stream_options``, ...)
    are ignored, fields that would change the answer and are not supported are refused by name."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="after")
    def _supported(self) -> "ChatRequestBase":
        if self.n != 1:  # type: ignore[attr-defined]
            raise ValueError("n: only one choice per request is supported")
        if self.stop:  # type: ignore[attr-defined]
            raise ValueError("stop: stop sequences are not supported yet")
        return self

    def chat(self) -> list[dict[str, str]]:
        turns = []
        for m in self.messages:  # type: ignore[attr-defined]
            content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            turns.append({"role": "system" if m.role == "developer" else m.role, "content": content})
        return turns

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default  # type: ignore[attr-defined]


def chat_request_model(settings: Settings) -> type[ChatRequestBase]:
    """The /v1/chat/completions body (OpenAI's), with this deployment's limits."""
    Content = Annotated[str, StringConstraints(max_length=settings.generate_max_prompt_chars)]
    message = create_model(
        "ChatMessage",
        __config__=ConfigDict(extra="ignore"),
        role=(Literal["system", "developer", "user", "assistant"], ...),
        content=(Content | list[TextPart], ...),
    )
    bound = settings.generate_max_new_tokens
    sampling = _sampling_fields(settings, "max_tokens")
    return create_model(
        "ChatCompletionRequest",
        __base__=ChatRequestBase,
        model=(str | None, Field(None, description="Accepted and echoed: the live version answers.")),
        messages=(list[message], Field(min_length=1, max_length=settings.generate_max_messages)),  # type: ignore[valid-type]
        max_tokens=(int | None, Field(None, ge=1, le=bound, description="Most tokens to generate.")),
        max_completion_tokens=(int | None, Field(None, ge=1, le=bound, description="Most tokens to generate.")),
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        stream=(bool, Field(False, description="Server-sent events, OpenAI's chat.completion.chunk stream.")),
        n=(int, Field(1, ge=1)),
        stop=(str | list[str] | None, None),
    )


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    model_version: int = Field(description="The version that generated it.")
    generation_id: str = Field(description="Quote it in feedback as `prediction_id`.")
    source: Literal["model", "memory"] = Field("model", description="memory: answered by a taught correction.")
