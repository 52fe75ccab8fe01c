"""The admin interface: what an operator reads and changes, answered with the API's response models.

Two implementations: :class:`services.admin.local.LocalAdmin` (the stores of this process: Redis and the
model store) and :class:`services.admin.remote.RemoteAdmin` (a running API, over ``online.client``).
Every view of the CLI renders these models, whichever backend produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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


class Refused(Exception):
    """The backend refused a change (a rollback with no parent, a version that cannot go live) or an
    API refused the call; ``by``: the API that answered (None: this process's stores)."""

    def __init__(self, message: str, by: str | None = None) -> None:
        super().__init__(message)
        self.by = by


class NotFound(Refused):
    """No such version."""


class Unreachable(Exception):
    """The API at ``by`` did not answer (a remote backend only)."""

    def __init__(self, message: str, by: str) -> None:
        super().__init__(message)
        self.by = by


class AdminBackend(Protocol):
    def models(self) -> ModelsResponse: ...

    def model(self, version: int) -> ModelDetail:
        """Raises :class:`NotFound`."""
        ...

    def rounds(self, limit: int = 100) -> RoundsResponse: ...

    def promote(self, version: int, reason: str) -> LiveChangeOut:
        """Raises :class:`NotFound`, or :class:`Refused` (not published, weights fail their check, live moved)."""
        ...

    def rollback(self, to: int | None, reason: str) -> LiveChangeOut:
        """``to``: default the live version's parent. Raises :class:`Refused`."""
        ...

    def training(self) -> TrainingState: ...

    def pause(self, reason: str) -> TrainingState: ...

    def resume(self) -> TrainingState: ...

    def feedback_stats(self) -> FeedbackStats: ...

    def approve_label(self, label: str) -> LabelApproved: ...

    def buffer(self) -> BufferResponse: ...

    def quarantine(self, limit: int) -> QuarantineResponse: ...

    def release(self, sids: Sequence[str], source: str | None) -> QuarantineResult: ...

    def drop(self, sids: Sequence[str], source: str | None) -> QuarantineResult: ...

    def forget(self, source: str | None, text: str | None) -> ForgetResult:
        """Erase a source's or a text's data (exactly one). Raises :class:`Refused`."""
        ...

    def drift(self, history: int = 0) -> DriftReport: ...

    def shadow(self) -> ShadowResponse: ...

    def canary(self) -> CanaryResponse: ...

    def canary_action(self, request: CanaryRequest) -> LiveChangeOut:
        """Start, pause, resume, promote or abort the canary. Raises :class:`NotFound`, :class:`Refused`."""
        ...
