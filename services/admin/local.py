"""The admin backend over this process's stores: the one place that turns Redis and the model store
into the API's response models. The API's routers answer with it; so does the CLI without ``--api``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict

from online.contract import (
    CanaryRequest,
    CanaryResponse,
    BufferLabelOut,
    BufferResponse,
    BufferSummary,
    DriftReport,
    FeedbackStats,
    ForgetResult,
    HeldOut,
    LabelApproved,
    LiveChangeOut,
    ModelDetail,
    ModelOut,
    ModelsResponse,
    QuarantineResponse,
    QuarantineResult,
    ReplicaOut,
    RoundOut,
    RoundsResponse,
    ShadowResponse,
    SourceOut,
    StatusReport,
    Supervisor,
    TrainingState,
)
from online.feedback import quarantine
from online.lifecycle import canary, erasure, promotion
from online.lifecycle.registry import IntegrityError, LiveMoved, Manifest
from online.monitoring.live_accuracy import VersionAccuracy
from online.reports import RoundStats
from online.serving.drift_window import DriftWindow
from online.wiring.stores import Stores
from services.admin.backend import NotFound, Refused
from services.admin.drift import drift_report

_REFUSED = (KeyError, ValueError, IntegrityError, LiveMoved)


def _message(exc: Exception) -> str:
    return str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)


def model_out(m: Manifest, live: int | None, acc: VersionAccuracy | None) -> ModelOut:
    return ModelOut(
        version=m.version,
        parent=m.parent,
        status=m.status,
        live=m.version == live,
        created_at=m.created_at,
        labels=len(m.labels),
        metrics=m.metrics,
        gate_passed=None if m.gate is None else m.gate.passed,
        failed_checks=[] if m.gate is None else m.gate.failed(),
        live_accuracy=acc.accuracy if acc else None,
        judged=acc.n if acc else 0,
    )


def round_out(m: Manifest) -> RoundOut:
    """A continual round's version (``m.round`` is :class:`RoundStats`)."""
    r = m.round if isinstance(m.round, RoundStats) else RoundStats()
    return RoundOut(
        version=m.version,
        parent=m.parent,
        status=m.status,
        gate_passed=None if m.gate is None else m.gate.passed,
        failed_checks=[] if m.gate is None else m.gate.failed(),
        created_at=m.created_at,
        started_at=r.started_at,
        duration_s=r.duration_s,
        train_s=r.train_s,
        new=r.new,
        holdout=r.holdout,
        rehearsed=r.rehearsed,
        quarantined=r.quarantined,
        added_labels=len(r.added_labels),
        golden_accuracy=m.metrics.get("golden_accuracy"),
    )


def _is_round(m: Manifest) -> bool:
    return m.round is not None and m.round.kind == "continual"


class LocalAdmin:
    """:class:`services.admin.backend.AdminBackend` over :class:`Stores`. Blocking (Redis and disk):
    the API calls it on a worker thread. The extra keyword arguments are what only a replica knows."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    # --- versions -------------------------------------------------------------------------------
    def models(self, served: int | None = None) -> ModelsResponse:
        """``served``: the version the asking replica serves."""
        registry = self.stores.registry
        live, versions, history = registry.live(), registry.list(), registry.history()
        accs = {a.version: a for a in self.stores.live_accuracy.all()}
        return ModelsResponse(
            live=live,
            canary=registry.canary(),
            served_by_this_replica=served,
            versions=[model_out(m, live, accs.get(m.version)) for m in versions],
            history=[LiveChangeOut(**h.model_dump()) for h in history],
        )

    def model(self, version: int) -> ModelDetail:
        registry = self.stores.registry
        try:
            m = registry.get(version)
        except KeyError as exc:
            raise NotFound(_message(exc)) from None
        summary = model_out(m, registry.live(), self.stores.live_accuracy.get(version))
        return ModelDetail(
            **summary.model_dump(),
            label_names=m.labels,
            base_model=m.base_model,
            sha256=m.sha256,
            artifacts=m.artifacts,
            gate=m.gate,
            round=m.round,
        )

    def rounds(self, limit: int = 100) -> RoundsResponse:
        return RoundsResponse(rounds=[round_out(m) for m in self.stores.registry.list() if _is_round(m)][-limit:])

    def promote(self, version: int, reason: str) -> LiveChangeOut:
        try:
            change = promotion.promote(self.stores.registry, version, reason)
        except KeyError as exc:
            raise NotFound(_message(exc)) from None
        except _REFUSED as exc:
            raise Refused(_message(exc)) from None
        return LiveChangeOut(**change.model_dump())

    def rollback(self, to: int | None, reason: str) -> LiveChangeOut:
        try:
            change = promotion.rollback(self.stores.registry, to, reason)
        except _REFUSED as exc:
            raise Refused(_message(exc)) from None
        return LiveChangeOut(**change.model_dump())

    # --- training ---------------------------------------------------------------------------------
    def training(self) -> TrainingState:
        return self.stores.control.state()

    def pause(self, reason: str) -> TrainingState:
        self.stores.control.pause(reason)
        return self.training()

    def resume(self) -> TrainingState:
        self.stores.control.resume()
        return self.training()

    # --- feedback -----------------------------------------------------------------------------------
    def feedback_stats(self) -> FeedbackStats:
        s = self.stores
        summary = quarantine.screening_summary(s.buffer, s.sources, s.labels.approved())
        return FeedbackStats(**dict(summary), review_queued=s.review.size())

    def approve_label(self, label: str) -> LabelApproved:
        new, released = quarantine.approve_label(self.stores.labels, self.stores.buffer, label)
        return LabelApproved(label=label, newly_approved=new, released=released)

    def buffer(self) -> BufferResponse:
        """Open to every caller: per-label rows only for labels stored, not for any string a sender tried
        (refused labels are dead-lettered under their name and only counted)."""
        buffer = self.stores.buffer
        stored, stats = buffer.labels(), buffer.stats()
        return BufferResponse(
            capacity=buffer.capacity,
            samples=buffer.size(),
            new=buffer.new_count(),
            held=buffer.held_count(),
            labels=[BufferLabelOut(**asdict(st)) for st in stats if st.label in stored],
            dead_lettered_other=sum(st.dead_lettered for st in stats if st.label not in stored),
            cursor=buffer.cursor(),
        )

    def quarantine(self, limit: int) -> QuarantineResponse:
        buffer = self.stores.buffer
        return QuarantineResponse(
            held=[HeldOut(**asdict(h)) for h in buffer.held(limit)],
            sources=[
                SourceOut(
                    source=name,
                    events=st["events"],
                    judged=st["judged"],
                    contradicted=st["contradicted"],
                    contradiction_rate=st["contradicted"] / st["judged"] if st["judged"] else None,
                    quarantined=bool(st["quarantined"]),
                )
                for name, st in self.stores.sources.stats().items()
            ],
            held_count=buffer.held_count(),
        )

    def release(self, sids: Sequence[str], source: str | None) -> QuarantineResult:
        return QuarantineResult(changed=quarantine.release(self.stores.buffer, self.stores.sources, sids, source))

    def drop(self, sids: Sequence[str], source: str | None) -> QuarantineResult:
        return QuarantineResult(changed=quarantine.drop(self.stores.buffer, self.stores.corrections, sids, source))

    def forget(self, source: str | None, text: str | None) -> ForgetResult:
        try:
            e = erasure.forget(self.stores, source=source, text=text)
        except ValueError as exc:
            raise Refused(str(exc)) from exc
        if source is not None:
            kept = f"events of {source!r} stamped up to now (in flight or redelivered) are not stored; later ones are"
        else:
            kept = "this text (masked, any label, any source) is never stored again"
        return ForgetResult(
            **{k: v for k, v in e.__dict__.items() if k in ForgetResult.model_fields},
            kept_out=kept,
            weights=erasure.weights_note(e),
            not_reached=(
                "records still in the feedback and dead-letter topics until their retention (the API masks texts "
                "before producing; dead letters are masked)"
                + ("; predictions carry no source: they expire after ONLINE_PREDICTION_TTL_S" if source else "")
            ),
        )

    # --- monitoring ---------------------------------------------------------------------------------
    def drift(self, history: int = 0, window: DriftWindow | None = None) -> DriftReport:
        """``window``: the asking replica's own drift window."""
        return drift_report(self.stores, window, history)

    def shadow(self, loaded: int | None = None) -> ShadowResponse:
        """``loaded``: the shadow version the asking replica has loaded."""
        slot = self.stores.registry.shadow()
        if slot is None:
            return ShadowResponse()
        st = self.stores.shadow.stats(slot.version)
        return ShadowResponse(
            shadow=slot,
            loaded_by_this_replica=loaded == slot.version,
            requests=st.requests,
            agreement=st.agreement,
            judged=st.judged,
            shadow_accuracy=st.shadow_accuracy,
            live_accuracy_same_requests=st.live_accuracy,
        )

    def canary(self, loaded: int | None = None) -> CanaryResponse:
        """``loaded``: the canary version the asking replica has loaded."""
        slot = self.stores.registry.canary()
        if slot is None:
            return CanaryResponse()
        a = canary.analyse(slot, self.stores.live_accuracy, self.stores.canary, self.stores.settings)
        decision, by = a.decision, "this process (no trainer has judged it yet)"
        noted = self.stores.canary.noted(slot.version)
        if noted is not None and time.time() - noted[0] < 120:  # the trainer decides, with its settings
            decision, by = noted[1], f"the trainer, {time.time() - noted[0]:.0f} s ago"
        return CanaryResponse(
            canary=slot, loaded_by_this_replica=loaded == slot.version, live=a.live, candidate=a.candidate,
            decision=decision.action, reason=decision.reason, decided_by=by, curve=a.curve,
        )  # fmt: skip

    def canary_action(self, request: CanaryRequest) -> LiveChangeOut:
        registry, reason = self.stores.registry, request.reason
        try:
            if request.action == "start":
                if request.version is None:
                    raise ValueError("start needs the version to canary")
                change = canary.start(registry, request.version, self.stores.settings, reason, request.share)
            elif request.action in ("pause", "resume"):
                change = canary.pause(registry, request.action == "pause", reason)
            elif request.action == "promote":
                change = canary.promote_now(registry, reason or "canary promoted by an operator")
            else:
                change = canary.abort(registry, reason or "canary aborted by an operator")
        except KeyError as exc:
            raise NotFound(_message(exc)) from None
        except _REFUSED as exc:
            raise Refused(_message(exc)) from None
        return LiveChangeOut(**change.model_dump())

    def status(self) -> StatusReport:
        """Everything at a glance (`online status`): read from Redis, so a local backend only."""
        s = self.stores
        settings, buffer = s.settings, s.buffer
        stats = buffer.stats()
        stale_after = 3 * settings.model_poll_s + 5
        replicas = []
        for beat in s.replicas.all():
            age = beat.age_s()
            replicas.append(ReplicaOut(**asdict(beat), age_s=age, stale=age > stale_after))
        return StatusReport(
            live_version=s.registry.live(),
            canary=self.canary() if s.registry.canary() else None,
            training=self.training(),
            replicas=replicas,
            correction_log=s.corrections.size(),
            buffer=BufferSummary(
                samples=buffer.size(),
                new=buffer.new_count(),
                labels=len([st for st in stats if st.stored]),
                dead_lettered=sum(st.dead_lettered for st in stats),
                held=buffer.held_count(),
            ),
            screening=quarantine.screening_summary(buffer, s.sources, s.labels.approved()),
            rounds=self.rounds(5).rounds,
            drift=self.drift(),
            supervisor=self._supervisor(),
        )

    def _supervisor(self) -> Supervisor | None:
        """A running `online up` in this state dir, with its processes and their restart counts."""
        from services.supervisor import STACK_FILE

        try:
            info = json.loads((self.stores.settings.state_dir / STACK_FILE).read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return None
        return Supervisor(pid=int(info["pid"]), processes=info.get("processes", {}))
