"""Feedback records -> buffer samples, live-accuracy judgements and dead letters (no Kafka I/O here).

The consumer loop (``consumers.feedback``) feeds each polled batch through :meth:`FeedbackProcessor.process`
and writes what it returns; keeping the decisions here makes them testable without a broker.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field

from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from online.credentials import Credential, Signer
from online.events import LabelEvent, ThumbsEvent, parse_event
from online.feedback.buffer import Incoming
from online.feedback.prediction_log import PredictionLog, PredictionRecord
from online.monitoring.live_accuracy import Judgement
from online.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    record: ConsumerRecord
    label: str | None = None

    def encode(self) -> bytes:
        raw = self.record.value or b""
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return json.dumps(
            {
                "reason": self.reason,
                "topic": self.record.topic,
                "partition": self.record.partition,
                "offset": self.record.offset,
                "key": self.record.key.decode("utf-8", "replace") if self.record.key else None,
                "original_b64": base64.b64encode(raw).decode(),
                "original_text": text,
                "at": time.time(),
            }
        ).encode()


@dataclass
class Outcome:
    """What one batch turns into."""

    samples: list[Incoming] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    seen_only: list[str] = field(default_factory=list)  # valid events that add no sample
    seen_only_sources: list[tuple[str, str]] = field(default_factory=list)  # (event id, source) of those
    dead: list[DeadLetter] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # prediction ids labelled: off the review queue
    shadow: list[Judgement] = field(default_factory=list)  # a shadow candidate judged on a shadowed request
    shadow_live: list[Judgement] = field(default_factory=list)  # live judged on the same request
    corrections: list[Incoming] = field(default_factory=list)  # taught labels: to the correction memory
    forget: list[str] = field(default_factory=list)  # memory entries whose answer got a thumbs-down (trusted)
    forget_untrusted: list[str] = field(default_factory=list)  # ...from an untrusted sender: not trusted entries
    stored_ids: list[str] = field(default_factory=list)  # event id of each sample, in order (its status)
    dead_ids: list[tuple[str, str]] = field(default_factory=list)  # (event id, reason) of dead letters


class FeedbackProcessor:
    """Turns raw records into buffer samples, judgements and dead letters. No Kafka I/O here."""

    def __init__(self, settings: Settings, predictions: PredictionLog) -> None:
        self.allow = set(settings.label_allowlist) if settings.label_allowlist else None
        self.predictions = predictions
        self.signer: Signer | None = None  # set by the consumer once it has the stack's secret
        self.trusted_keys: set[str] = set(settings.feedback_trusted_keys)  # refreshed per batch by the consumer

    def credential(self, rec: ConsumerRecord) -> Credential:
        """What the API vouched for on this record (unsigned if nothing, or not the API's signature)."""
        return self.signer.verify(rec.headers, rec.value or b"") if self.signer else Credential()

    def process(self, records: list[ConsumerRecord]) -> Outcome:
        out = Outcome()
        parsed: list[tuple[ConsumerRecord, LabelEvent | ThumbsEvent]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_event(rec.value or b"")))
            except ValidationError as exc:
                out.dead.append(DeadLetter(f"invalid event: {_first_error(exc)}", rec))
            except ValueError as exc:
                out.dead.append(DeadLetter(f"malformed record: {exc}", rec))
        wanted = [ev.prediction_id for _, ev in parsed if ev.prediction_id]
        resolved = dict(zip(wanted, self.predictions.get_many(wanted)))
        for d in out.dead:  # the API keys each record by its event id: say what became of it
            key = d.record.key.decode("utf-8", "replace") if d.record.key else ""
            if key and len(key) <= 128:
                out.dead_ids.append((key, d.reason))
        for rec, ev in parsed:
            cred = self.credential(rec)
            origin = cred.origin(ev.source)
            trusted = cred.level if cred.trusted(ev.source, self.trusted_keys) else ""
            dead_before = len(out.dead)
            self._one(out, rec, ev, resolved, origin, trusted)
            if len(out.dead) > dead_before:
                out.dead_ids.append((ev.event_id, out.dead[-1].reason))
        return out

    def _one(
        self, out: Outcome, rec: ConsumerRecord, ev: LabelEvent | ThumbsEvent, resolved: dict, origin: str, trusted: str
    ) -> None:
        if ev.label is not None and self.allow is not None and ev.label not in self.allow:
            out.dead.append(DeadLetter(f"label {ev.label!r} is not in the allow-list", rec, ev.label))
            return
        pred = resolved.get(ev.prediction_id) if ev.prediction_id else None
        if ev.prediction_id and pred is None:
            out.dead.append(
                DeadLetter(f"unknown prediction_id {ev.prediction_id!r} (expired or never served)", rec, ev.label)
            )
            return
        if isinstance(ev, LabelEvent):
            sample = Incoming(ev.event_id, ev.text, ev.label, ev.source, ev.timestamp, origin, trusted)
            out.samples.append(sample)
            out.stored_ids.append(ev.event_id)
            if pred is None or pred.label != ev.label:
                out.corrections.append(sample)
                if pred is not None and pred.memory_sid:  # the memory's answer was corrected: it leaves
                    (out.forget if trusted else out.forget_untrusted).append(pred.memory_sid)
            if ev.prediction_id:
                out.answered.append(ev.prediction_id)
            if pred:
                out.judgements.append(
                    Judgement(
                        ev.event_id, pred.version, pred.label == ev.label, ev.timestamp, pred.prediction_id, origin
                    )
                )
                _judge_shadow(out, ev, pred, ev.label, origin)
            return
        assert pred is not None
        correct = ev.vote == "up"
        out.judgements.append(Judgement(ev.event_id, pred.version, correct, ev.timestamp, pred.prediction_id, origin))
        label = pred.label if correct else ev.label
        _judge_shadow(out, ev, pred, label, origin)
        if not correct and pred.memory_sid:  # the memory's answer was wrong: it leaves the memory
            (out.forget if trusted else out.forget_untrusted).append(pred.memory_sid)
        if label is None:
            out.seen_only.append(ev.event_id)  # thumbs down without the right label: a judgement only
            out.seen_only_sources.append((ev.event_id, ev.source))
        else:
            sample = Incoming(ev.event_id, pred.text, label, ev.source, ev.timestamp, origin, trusted)
            out.samples.append(sample)
            out.stored_ids.append(ev.event_id)
            if not correct:
                out.corrections.append(sample)


def _judge_shadow(
    out: Outcome, ev: LabelEvent | ThumbsEvent, pred: PredictionRecord, truth: str | None, origin: str
) -> None:
    """Feedback on a shadowed request judges the shadow candidate and live on the same request (once per
    request, like live accuracy)."""
    if pred.shadow_version is None or truth is None:
        return
    v, pid = pred.shadow_version, pred.prediction_id
    out.shadow.append(Judgement(ev.event_id, v, pred.shadow_label == truth, ev.timestamp, pid, origin))
    out.shadow_live.append(Judgement(ev.event_id, v, pred.label == truth, ev.timestamp, pid, origin))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{where}: {err['msg']}"
