"""Python client of the HTTP API, sync (:class:`Client`) and async (:class:`AsyncClient`).

Responses are the API's own pydantic models (``online.contract``). Feedback events get their
``event_id`` here, before the first attempt, so a retry after a timeout, a 429 or a 503 resends the same
ids and the consumer stores each event once. Retries honour ``Retry-After``.

    from online.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as api:
        pred = api.predict("how do I reset my router").predictions[0]
        api.label("how do I reset my router", "router_reset", source="helpdesk", prediction_id=pred.prediction_id)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

from online.contract import (
    BufferResponse,
    DriftReport,
    FeedbackAccepted,
    FeedbackStats,
    FeedbackStatus,
    ForgetResult,
    LabelApproved,
    LiveChangeOut,
    ModelDetail,
    ModelsResponse,
    PredictResponse,
    QuarantineResponse,
    QuarantineResult,
    ReviewResponse,
    RoundsResponse,
    ShadowResponse,
    CanaryRequest,
    CanaryResponse,
    TrainingState,
)
from online.events import EVENT_ADAPTER, CorrectionEvent, LabelEvent, ThumbsEvent
from online.generate_contract import GenerateResponse

T = TypeVar("T")
Event = LabelEvent | ThumbsEvent | CorrectionEvent
RETRY_STATUS = (429, 502, 503, 504)


class ApiError(RuntimeError):
    """The API answered an error (after retries for 429/503): ``status`` and the server's ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call, described once and run by either client."""

    method: str
    path: str
    parse: TypeAdapter[T]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    admin: bool = False
    reviewer: bool = False  # the admin token or the reviewer token
    as_admin: bool = False  # feedback sent with the admin token: trusted (the screen does not hold it)


def _events(events: Iterable[Event | dict]) -> list[Event]:
    """Validated events, each with its id from now on (a dict without ``event_id`` gets one here)."""
    return [
        e if isinstance(e, (LabelEvent, ThumbsEvent, CorrectionEvent)) else EVENT_ADAPTER.validate_python(e)
        for e in events
    ]


def _batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    for start in range(0, len(events), size):
        yield list(events[start : start + size])


class _Calls:
    """The API's surface; each method returns what the concrete client's ``_run`` returns for it."""

    batch_size = 500

    def _run(self, call: _Call) -> Any:  # pragma: no cover - defined by the clients
        raise NotImplementedError

    def _run_all(self, calls: list[_Call]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def predict(self, text: str | Sequence[str], top_k: int | None = None, user: str | None = None) -> PredictResponse:
        """One text (``str``) or several (a list); the response has one prediction per text. ``user``: a
        stable id of who asks, so a canary serves them one version throughout."""
        body: dict[str, Any] = {"text": text} if isinstance(text, str) else {"texts": list(text)}
        if top_k is not None:
            body["top_k"] = top_k
        if user is not None:
            body["user"] = user
        return self._run(_Call("POST", "/v1/predict", TypeAdapter(PredictResponse), json=body))

    def feedback(self, events: Iterable[Event | dict], as_admin: bool = False) -> list[FeedbackAccepted]:
        """Send events in batches of ``batch_size``; every event id is fixed before the first attempt.
        ``as_admin``: with the admin token, so they are trusted (served by the correction memory at once,
        trained by the next round, never held by the screen)."""
        calls = [
            _Call(
                "POST",
                "/v1/feedback",
                TypeAdapter(FeedbackAccepted),
                json={"events": [e.model_dump(mode="json", exclude_none=True) for e in batch]},
                as_admin=as_admin,
            )
            for batch in _batches(_events(events), self.batch_size)
        ]
        return self._run_all(calls)

    def label(
        self, text: str, label: str, source: str, prediction_id: str | None = None, as_admin: bool = False
    ) -> list[FeedbackAccepted]:
        """The correct label of a text (naming the prediction it corrects, when there is one)."""
        return self.feedback(
            [LabelEvent(kind="label", text=text, label=label, source=source, prediction_id=prediction_id)], as_admin
        )

    def thumbs(
        self, prediction_id: str, vote: str, source: str, label: str | None = None, as_admin: bool = False
    ) -> list[FeedbackAccepted]:
        """Up or down on a served prediction (down may name the correct label)."""
        return self.feedback(
            [ThumbsEvent(kind="thumbs", prediction_id=prediction_id, vote=vote, source=source, label=label)], as_admin
        )

    def generate(
        self,
        prompt: str | Sequence[dict[str, str]],
        max_new_tokens: int | None = None,
        temperature: float | None = None,
    ) -> GenerateResponse:
        """A generative deployment's answer to a prompt (``str``) or a chat (role/content dicts)."""
        body: dict[str, Any] = {"prompt": prompt} if isinstance(prompt, str) else {"messages": list(prompt)}
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return self._run(_Call("POST", "/v1/generate", TypeAdapter(GenerateResponse), json=body))

    def correct(
        self,
        answer: str,
        source: str,
        prediction_id: str | None = None,
        prompt: str | None = None,
        as_admin: bool = False,
    ) -> list[FeedbackAccepted]:
        """What a generation (its ``generation_id`` as ``prediction_id``) or a prompt should be answered."""
        event = CorrectionEvent(
            kind="correction", answer=answer, source=source, prediction_id=prediction_id, prompt=prompt
        )
        return self.feedback([event], as_admin)

    def feedback_status(self, event_id: str) -> FeedbackStatus:
        """What became of a feedback event: accepted, stored, held (why, and what would release it),
        dead-lettered (why), answered by the correction memory, trained in version N. With feedback keys,
        this client's key (or the admin token) is needed."""
        return self._run(_Call("GET", f"/v1/feedback/{event_id}", TypeAdapter(FeedbackStatus), as_admin=True))

    def models(self) -> ModelsResponse:
        return self._run(_Call("GET", "/v1/models", TypeAdapter(ModelsResponse)))

    def model(self, version: int) -> ModelDetail:
        """One version in full: manifest, gate report check by check, round statistics."""
        return self._run(_Call("GET", f"/v1/models/{version}", TypeAdapter(ModelDetail)))

    def rollback(self, to: int | None = None, reason: str = "") -> LiveChangeOut:
        """Live back to ``to`` (default: the live version's parent). Needs the admin token."""
        body = {"to": to, "reason": reason}
        return self._run(_Call("POST", "/v1/models/rollback", TypeAdapter(LiveChangeOut), json=body, admin=True))

    def promote(self, version: int, reason: str = "") -> LiveChangeOut:
        body = {"version": version, "reason": reason}
        return self._run(_Call("POST", "/v1/models/promote", TypeAdapter(LiveChangeOut), json=body, admin=True))

    def rounds(self, limit: int = 100) -> RoundsResponse:
        """The last continual rounds that made a version, oldest first."""
        return self._run(_Call("GET", "/v1/rounds", TypeAdapter(RoundsResponse), params={"limit": limit}))

    def shadow(self) -> ShadowResponse:
        """The candidate running in shadow (if any), with its agreement and accuracy next to live's."""
        return self._run(_Call("GET", "/v1/shadow", TypeAdapter(ShadowResponse)))

    def canary(self) -> CanaryResponse:
        """The canary in progress (if any): its share, its evidence against live, the decision due now."""
        return self._run(_Call("GET", "/v1/canary", TypeAdapter(CanaryResponse)))

    def canary_action(
        self, action: str, version: int | None = None, share: float | None = None, reason: str = ""
    ) -> LiveChangeOut:
        """start (``version``, ``share``), pause, resume, promote or abort the canary. Needs the admin token."""
        body = CanaryRequest(action=action, version=version, share=share, reason=reason).model_dump()  # type: ignore[arg-type]
        return self._run(_Call("POST", "/v1/canary", TypeAdapter(LiveChangeOut), json=body, admin=True))

    def drift(self, history: int = 0) -> DriftReport:
        return self._run(_Call("GET", "/v1/drift", TypeAdapter(DriftReport), params={"history": history}))

    def review(self, limit: int = 20) -> ReviewResponse:
        """Predictions worth a human label (answer one with :meth:`label` naming its prediction_id).
        Needs the reviewer or the admin token: it shows user texts."""
        call = _Call("GET", "/v1/review", TypeAdapter(ReviewResponse), params={"limit": limit}, reviewer=True)
        return self._run(call)

    def feedback_stats(self) -> FeedbackStats:
        return self._run(_Call("GET", "/v1/feedback/stats", TypeAdapter(FeedbackStats)))

    def buffer(self) -> BufferResponse:
        """The replay buffer per label, in counts."""
        return self._run(_Call("GET", "/v1/buffer", TypeAdapter(BufferResponse)))

    def approve_label(self, label: str) -> LabelApproved:
        """Let a new label go live (admin)."""
        return self._run(_Call("POST", f"/v1/labels/{label}/approve", TypeAdapter(LabelApproved), admin=True))

    def training(self) -> TrainingState:
        return self._run(_Call("GET", "/v1/training", TypeAdapter(TrainingState)))

    def pause(self, reason: str = "") -> TrainingState:
        """No new round starts until :meth:`resume` (admin)."""
        body = {"reason": reason}
        return self._run(_Call("POST", "/v1/training/pause", TypeAdapter(TrainingState), json=body, admin=True))

    def resume(self) -> TrainingState:
        return self._run(_Call("POST", "/v1/training/resume", TypeAdapter(TrainingState), admin=True))

    def quarantine(self, limit: int = 200) -> QuarantineResponse:
        """Held feedback (its texts: admin) and per-source statistics."""
        call = _Call("GET", "/v1/quarantine", TypeAdapter(QuarantineResponse), params={"limit": limit}, admin=True)
        return self._run(call)

    def release(self, sids: Sequence[str] = (), source: str | None = None) -> QuarantineResult:
        """Release held samples, or trust ``source`` again and release all it sent (admin)."""
        body = {"sids": list(sids), "source": source}
        return self._run(_Call("POST", "/v1/quarantine/release", TypeAdapter(QuarantineResult), json=body, admin=True))

    def drop(self, sids: Sequence[str] = (), source: str | None = None) -> QuarantineResult:
        """Delete held samples for good (admin)."""
        body = {"sids": list(sids), "source": source}
        return self._run(_Call("POST", "/v1/quarantine/drop", TypeAdapter(QuarantineResult), json=body, admin=True))

    def forget(self, source: str | None = None, text: str | None = None) -> ForgetResult:
        """Erase a source's or a text's data everywhere it is stored (admin)."""
        body = {"source": source, "text": text}
        return self._run(_Call("POST", "/v1/admin/forget", TypeAdapter(ForgetResult), json=body, admin=True))


class _Base(_Calls):
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        admin_token: str | None = None,
        reviewer_token: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        max_wait_s: float = 30.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.reviewer_token = reviewer_token
        self.retries = retries
        self.max_wait_s = max_wait_s
        self._headers = {"X-API-Key": api_key} if api_key else {}
        self._timeout = timeout
        self._transport = transport

    def _request_kwargs(self, call: _Call) -> dict[str, Any]:
        headers = dict(self._headers)
        if call.as_admin and call.method == "POST" and not self.admin_token:
            raise ApiError(401, "feedback as admin needs the admin token: Client(..., admin_token=...)")
        if call.as_admin and self.admin_token and not (call.method == "GET" and "X-API-Key" in headers):
            headers["Authorization"] = f"Bearer {self.admin_token}"
        if call.admin:
            if not self.admin_token:
                raise ApiError(401, "this call needs the admin token: Client(..., admin_token=...)")
            headers["Authorization"] = f"Bearer {self.admin_token}"
        elif call.reviewer:
            token = self.reviewer_token or self.admin_token
            if not token:
                raise ApiError(401, "this call needs the reviewer or admin token: Client(..., reviewer_token=...)")
            headers["Authorization"] = f"Bearer {token}"
        return {"method": call.method, "url": call.path, "json": call.json, "params": call.params, "headers": headers}

    def _retry_in(
        self, call: _Call, attempt: int, response: httpx.Response | None, error: httpx.TransportError | None
    ) -> float | None:
        """Seconds before the next attempt, or None when this outcome is final. Predict and feedback are
        safe to resend (feedback keeps its event ids); an admin call whose request may have reached the
        server is not (a second rollback would go back two versions): it is resent only when it never got
        through (a refused connection, or a 429/503 the API itself answered), never after a proxy's 502/504."""
        if attempt >= self.retries:
            return None
        if error is not None and call.admin and not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUS or (call.admin and response.status_code in (502, 504)):
                return None
            after = response.headers.get("retry-after")
            if after is not None:
                try:
                    return min(max(float(after), 0.0), self.max_wait_s)
                except ValueError:
                    pass
        return min(0.2 * 2**attempt, self.max_wait_s) * random.uniform(0.5, 1.0)

    @staticmethod
    def _result(call: _Call[T], response: httpx.Response | None, error: httpx.TransportError | None) -> T:
        if error is not None or response is None:
            raise error or AssertionError("no response and no error")
        if response.is_success:
            return call.parse.validate_python(response.json())
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        raise ApiError(response.status_code, detail)


class Client(_Base):
    """Blocking client; use as a context manager or call :meth:`close`."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.Client(base_url=self.url, timeout=self._timeout, transport=self._transport)

    def _run(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = self._http.request(**self._request_kwargs(call))
            except httpx.TransportError as exc:
                error = exc
            wait = self._retry_in(call, attempt, response, error)
            if wait is None:
                return self._result(call, response, error)
            time.sleep(wait)
            attempt += 1

    def _run_all(self, calls: list[_Call[T]]) -> list[T]:
        return [self._run(c) for c in calls]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same calls, awaitable; use as an async context manager or call :meth:`aclose`."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self._timeout, transport=self._transport)

    async def _run(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = await self._http.request(**self._request_kwargs(call))
            except httpx.TransportError as exc:
                error = exc
            wait = self._retry_in(call, attempt, response, error)
            if wait is None:
                return self._result(call, response, error)
            await asyncio.sleep(wait)
            attempt += 1

    async def _run_all(self, calls: list[_Call[T]]) -> list[T]:
        return [await self._run(c) for c in calls]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["ApiError", "AsyncClient", "Client"]
