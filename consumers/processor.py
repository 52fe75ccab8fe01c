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

from online import generation_samples as gen
from online.events import AnyEvent, CorrectionEvent, LabelEvent, ThumbsEvent, parse_event
from online.feedback.buffer import Incoming, normalise
from online.feedback.pii import mask_pii
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
    dead: list[DeadLetter] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # prediction ids labelled: off the review queue
    shadow: list[Judgement] = field(default_factory=list)  # a shadow candidate judged on a shadowed request
    shadow_live: list[Judgement] = field(default_factory=list)  # live judged on the same request
    corrections: list[Incoming] = field(default_factory=list)  # taught labels: to the correction memory
    forget: list[str] = field(default_factory=list)  # memory entries whose answer got a thumbs-down


class FeedbackProcessor:
    """Turns raw records into buffer samples, judgements and dead letters. No Kafka I/O here."""

    def __init__(self, settings: Settings, predictions: PredictionLog) -> None:
        self.allow = set(settings.label_allowlist) if settings.label_allowlist else None
        self.predictions = predictions

    def process(self, records: list[ConsumerRecord]) -> Outcome:
        out = Outcome()
        parsed: list[tuple[ConsumerRecord, AnyEvent]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_event(rec.value or b"")))
            except ValidationError as exc:
                out.dead.append(DeadLetter(f"invalid event: {_first_error(exc)}", rec))
            except ValueError as exc:
                out.dead.append(DeadLetter(f"malformed record: {exc}", rec))
        wanted = [ev.prediction_id for _, ev in parsed if ev.prediction_id]
        resolved = dict(zip(wanted, self.predictions.get_many(wanted)))
        for rec, ev in parsed:
            label = getattr(ev, "label", None)
            if label is not None and self.allow is not None and label not in self.allow:
                out.dead.append(DeadLetter(f"label {label!r} is not in the allow-list", rec, label))
                continue
            pred = resolved.get(ev.prediction_id) if ev.prediction_id else None
            if ev.prediction_id and pred is None:
                out.dead.append(
                    DeadLetter(f"unknown prediction_id {ev.prediction_id!r} (expired or never served)", rec, label)
                )
                continue
            if isinstance(ev, CorrectionEvent) or (pred is not None and pred.is_generation):
                if reason := _generation_feedback(out, ev, pred):
                    out.dead.append(DeadLetter(reason, rec, label))
                continue
            if isinstance(ev, LabelEvent):
                sample = Incoming(ev.event_id, ev.text, ev.label, ev.source, ev.timestamp)
                out.samples.append(sample)
                if pred is None or pred.label != ev.label:
                    out.corrections.append(sample)
                    if pred is not None and pred.memory_sid:
                        out.forget.append(pred.memory_sid)  # the memory's answer was corrected: it leaves
                if ev.prediction_id:
                    out.answered.append(ev.prediction_id)
                if pred:
                    out.judgements.append(Judgement(ev.event_id, pred.version, pred.label == ev.label, ev.timestamp))
                    _judge_shadow(out, ev, pred, ev.label)
                continue
            assert pred is not None
            correct = ev.vote == "up"
            out.judgements.append(Judgement(ev.event_id, pred.version, correct, ev.timestamp))
            label = pred.label if correct else ev.label
            _judge_shadow(out, ev, pred, label)
            if not correct and pred.memory_sid:
                out.forget.append(pred.memory_sid)  # the memory's answer was wrong: it leaves the memory
            if label is None:
                out.seen_only.append(ev.event_id)  # thumbs down without the right label: a judgement only
            else:
                sample = Incoming(ev.event_id, pred.text, label, ev.source, ev.timestamp)
                out.samples.append(sample)
                if not correct:
                    out.corrections.append(sample)
        return out


def _generation_feedback(out: Outcome, ev: AnyEvent, pred: PredictionRecord | None) -> str | None:
    """Feedback on a generation (or a correction of a prompt) as a generative sample
    (``online.generation_samples``) and, on a served generation, a judgement of its version. Returns why
    the event cannot be used (it is then dead-lettered), or None."""
    if isinstance(ev, LabelEvent):
        return f"prediction_id {ev.prediction_id!r} is a generation: send a correction (its answer), not a label"
    if isinstance(ev, ThumbsEvent) and ev.label is not None:
        return "a thumbs on a generation takes no label: send a correction with the answer instead"
    if pred is not None and not pred.is_generation:
        return f"prediction_id {ev.prediction_id!r} is a classification: send a label, not a correction"
    if isinstance(ev, CorrectionEvent):
        answer = mask_pii(ev.answer)
        if pred is None:
            text = gen.encode([{"role": "user", "content": mask_pii(ev.prompt or "")}], answer)
        else:
            text = gen.encode(gen.decode_chat(pred.text), answer, rejected=pred.answer)
            right = normalise(ev.answer) == normalise(pred.answer or "")
            out.judgements.append(Judgement(ev.event_id, pred.version, right, ev.timestamp))
        out.samples.append(Incoming(ev.event_id, text, gen.CORRECTION, ev.source, ev.timestamp))
        return None
    assert isinstance(ev, ThumbsEvent) and pred is not None
    up = ev.vote == "up"
    out.judgements.append(Judgement(ev.event_id, pred.version, up, ev.timestamp))
    text = gen.encode(gen.decode_chat(pred.text), pred.answer or "")
    out.samples.append(Incoming(ev.event_id, text, gen.UP if up else gen.DOWN, ev.source, ev.timestamp))
    return None


def _judge_shadow(out: Outcome, ev: LabelEvent | ThumbsEvent, pred: PredictionRecord, truth: str | None) -> None:
    """Feedback on a shadowed request judges the shadow candidate and live on the same request."""
    if pred.shadow_version is None or truth is None:
        return
    v = pred.shadow_version
    out.shadow.append(Judgement(ev.event_id, v, pred.shadow_label == truth, ev.timestamp))
    out.shadow_live.append(Judgement(ev.event_id, v, pred.label == truth, ev.timestamp))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{where}: {err['msg']}"
