"""The admin backend over a running API (``online.client``): how an operator drives the compose stack,
or any deployment, from their own machine with ``--api URL`` and ``ONLINE_ADMIN_TOKEN``.

The API's refusals become :class:`Refused` (:class:`NotFound` for a 404), an API that does not answer
:class:`Unreachable`, as the interface says."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import httpx

from online.client import ApiError, Client
from online.contract import (
    BufferResponse,
    DriftReport,
    FeedbackStats,
    ForgetResult,
    LabelApproved,
    LiveChangeOut,
    ModelDetail,
    ModelsResponse,
    QuarantineResponse,
    QuarantineResult,
    RoundsResponse,
    ShadowResponse,
    CanaryRequest,
    CanaryResponse,
    TrainingState,
)
from services.admin.backend import NotFound, Refused, Unreachable

T = TypeVar("T")


class RemoteAdmin:
    """:class:`services.admin.backend.AdminBackend` over :class:`online.client.Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        url = self.client.url
        try:
            return fn(*args)
        except ApiError as exc:
            if exc.status == 401 and not self.client.admin_token:
                raise Refused("this command needs its admin token: set ONLINE_ADMIN_TOKEN", by=url) from None
            kind = NotFound if exc.status == 404 else Refused
            raise kind(f"HTTP {exc.status}: {exc.detail}", by=url) from None
        except httpx.TransportError as exc:
            raise Unreachable(str(exc), by=url) from None

    def models(self) -> ModelsResponse:
        return self._call(self.client.models)

    def model(self, version: int) -> ModelDetail:
        return self._call(self.client.model, version)

    def rounds(self, limit: int = 100) -> RoundsResponse:
        return self._call(self.client.rounds, limit)

    def promote(self, version: int, reason: str) -> LiveChangeOut:
        return self._call(self.client.promote, version, reason)

    def rollback(self, to: int | None, reason: str) -> LiveChangeOut:
        return self._call(self.client.rollback, to, reason)

    def training(self) -> TrainingState:
        return self._call(self.client.training)

    def pause(self, reason: str) -> TrainingState:
        return self._call(self.client.pause, reason)

    def resume(self) -> TrainingState:
        return self._call(self.client.resume)

    def feedback_stats(self) -> FeedbackStats:
        return self._call(self.client.feedback_stats)

    def approve_label(self, label: str) -> LabelApproved:
        return self._call(self.client.approve_label, label)

    def buffer(self) -> BufferResponse:
        return self._call(self.client.buffer)

    def quarantine(self, limit: int) -> QuarantineResponse:
        return self._call(self.client.quarantine, limit)

    def release(self, sids: Sequence[str], source: str | None) -> QuarantineResult:
        return self._call(self.client.release, sids, source)

    def drop(self, sids: Sequence[str], source: str | None) -> QuarantineResult:
        return self._call(self.client.drop, sids, source)

    def forget(self, source: str | None, text: str | None) -> ForgetResult:
        return self._call(self.client.forget, source, text)

    def drift(self, history: int = 0) -> DriftReport:
        return self._call(self.client.drift, history)

    def shadow(self) -> ShadowResponse:
        return self._call(self.client.shadow)

    def canary(self) -> CanaryResponse:
        return self._call(self.client.canary)

    def canary_action(self, request: CanaryRequest) -> LiveChangeOut:
        return self._call(self.client.canary_action, request.action, request.version, request.share, request.reason)
