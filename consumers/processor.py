"""Feedback records -> buffer samples, live-accuracy judgements and dead letters (no Kafka I/O here).

The consumer loop (``consumers.feedback``) feeds each polled batch through :meth:`FeedbackProcessor.process`
and writes what it returns; keeping the decisions here makes them testable without a broker.

Anything wrong with one record makes that record a dead letter, never an exception of the batch (only
Redis being unreachable is, and the loop retries it). A dead letter keeps a PII-masked copy of the record,
cut to ``DLQ_TEXT_CHARS`` characters (undecodable bytes: ``DLQ_RAW_BYTES``, base64), so its encoding
stays under ``DLQ_MAX_BYTES``, far below the producer's 1 MiB. Each text is masked once, here: the
buffer and the correction log store it as it comes (``Incoming.masked``).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field

import redis
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from online import generation_samples as gen
from online.contract import error_field
from online.credentials import Credential, Signer
from online.events import MAX_EVENT_BYTES, AnyEvent, CorrectionEvent, LabelEvent, ThumbsEvent, parse_event
from online.feedback.buffer import Incoming, normalise
from online.feedback.pii import mask_pii
from online.feedback.prediction_log import PredictionLog, PredictionRecord
from online.monitoring.live_accuracy import Judgement
from online.settings import Settings

DLQ_TEXT_CHARS = 16_384  # of a UTF-8 record, masked (JSON-escaped: at most ~6 bytes a character)
DLQ_RAW_BYTES = 4_096  # of a record that is not UTF-8 (base64): nothing reads it as text, so nothing masks it
DLQ_REASON_CHARS = 1_000
DLQ_MAX_BYTES = 256 * 1024  # far under the producer's max.request.size (1 MiB)


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    record: ConsumerRecord
    label: str | None = None

    @property
    def key(self) -> bytes | None:
        """The record's key for the dead letter, cut to 256 bytes (a producer may set a huge one)."""
        return self.record.key[:256] if self.record.key else self.record.key

    def encode(self) -> bytes:
        """The dead letter as JSON: reason, where the record was, and a masked copy cut to size."""
        raw = self.record.value or b""
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        key = self.record.key.decode("utf-8", "replace")[:256] if self.record.key else None
        doc = {
            "reason": mask_pii(self.reason[:DLQ_REASON_CHARS]),
            "topic": self.record.topic,
            "partition": self.record.partition,
            "offset": self.record.offset,
            "key": mask_pii(key) if key else key,
            "original_bytes": len(raw),
            "original_text": None if text is None else mask_pii(text[:DLQ_TEXT_CHARS]),
            "original_b64": base64.b64encode(raw[:DLQ_RAW_BYTES]).decode() if text is None else None,
            "truncated": len(raw) > DLQ_RAW_BYTES if text is None else len(text) > DLQ_TEXT_CHARS,
            "masked": True,
            "at": time.time(),
        }
        out = json.dumps(doc).encode()
        if len(out) > DLQ_MAX_BYTES:  # cannot happen with the limits above; kept so a change of them cannot stall
            doc.update(original_text=None, original_b64=None, truncated=True)
            out = json.dumps(doc).encode()
        return out


@dataclass
class Outcome:
    """What one batch turns into."""

    samples: list[Incoming] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    seen_only: list[tuple[str, str]] = field(default_factory=list)  # (source, event_id): no sample
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

    def merge(self, other: "Outcome") -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))


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
        """Decide every record; raises only ``redis.RedisError`` (the loop retries the batch)."""
        out = Outcome()
        parsed: list[tuple[ConsumerRecord, AnyEvent]] = []
        for rec in records:
            size = len(rec.value or b"")
            if size > MAX_EVENT_BYTES:  # no valid event is this long: not even parsed
                out.dead.append(DeadLetter(f"record of {size} bytes: no valid event exceeds {MAX_EVENT_BYTES}", rec))
                continue
            try:
                parsed.append((rec, parse_event(rec.value or b"")))
            except ValidationError as exc:
                out.dead.append(DeadLetter(f"invalid event: {_first_error(exc)}", rec))
            except Exception as exc:  # JSON the parser refuses, or anything else it raises
                out.dead.append(DeadLetter(f"malformed record: {exc}", rec))
        resolved, unreadable = self._resolve([ev.prediction_id for _, ev in parsed if ev.prediction_id])
        for d in out.dead:  # the API keys each record by its event id: say what became of it
            key = d.record.key.decode("utf-8", "replace") if d.record.key else ""
            if key and len(key) <= 128:
                out.dead_ids.append((key, d.reason))
        for rec, ev in parsed:
            label = getattr(ev, "label", None)
            if ev.prediction_id in unreadable:
                reason = f"prediction {ev.prediction_id!r} unreadable: {unreadable[ev.prediction_id]}"
                out.dead.append(DeadLetter(reason, rec, label))
                out.dead_ids.append((ev.event_id, reason))
                continue
            part = Outcome()
            try:
                cred = self.credential(rec)
                origin = cred.origin(ev.source)
                trusted = cred.level if cred.trusted(ev.source, self.trusted_keys) else ""
                self._decide(part, rec, ev, resolved, origin, trusted)
            except Exception as exc:  # a record nothing above foresaw: its dead letter, the batch goes on
                part = Outcome(dead=[DeadLetter(f"not processed: {exc!r}", rec, label)])
            if part.dead:
                out.dead_ids.append((ev.event_id, part.dead[-1].reason))
            out.merge(part)
        return out

    def _resolve(self, wanted: list[str]) -> tuple[dict[str, PredictionRecord | None], dict[str, str]]:
        """The logged predictions feedback refers to, in one round trip; one that cannot be read (a
        stored record this version cannot parse) is reported by id, not raised for the batch."""
        try:
            return dict(zip(wanted, self.predictions.get_many(wanted))), {}
        except redis.RedisError:
            raise
        except Exception:
            pass
        resolved: dict[str, PredictionRecord | None] = {}
        unreadable: dict[str, str] = {}
        for pid in dict.fromkeys(wanted):
            try:
                resolved[pid] = self.predictions.get(pid)
            except redis.RedisError:
                raise
            except Exception as exc:
                unreadable[pid] = repr(exc)[:300]
        return resolved, unreadable

    def _decide(
        self,
        out: Outcome,
        rec: ConsumerRecord,
        ev: AnyEvent,
        resolved: dict[str, PredictionRecord | None],
        origin: str,
        trusted: str,
    ) -> None:
        """One valid event into ``out`` (a dead letter, or samples, judgements and the rest); ``origin``
        is what independence rules count, ``trusted`` the credential's level ("" when untrusted)."""
        label = getattr(ev, "label", None)
        if label is not None and self.allow is not None and label not in self.allow:
            out.dead.append(DeadLetter(f"label {label!r} is not in the allow-list", rec, label))
            return
        pred = resolved.get(ev.prediction_id) if ev.prediction_id else None
        if ev.prediction_id and pred is None:
            out.dead.append(
                DeadLetter(f"unknown prediction_id {ev.prediction_id!r} (expired or never served)", rec, label)
            )
            return
        if isinstance(ev, CorrectionEvent) or (pred is not None and pred.is_generation):
            if reason := _generation_feedback(out, ev, pred, origin, trusted):
                out.dead.append(DeadLetter(reason, rec, label))
            return
        if isinstance(ev, LabelEvent):
            # masked once, here, whoever produced it (the API already did: masking is idempotent)
            text = mask_pii(ev.text)
            sample = Incoming(ev.event_id, text, ev.label, ev.source, ev.timestamp, origin, trusted, masked=True)
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
        assert isinstance(ev, ThumbsEvent) and pred is not None
        correct = ev.vote == "up"
        out.judgements.append(
            Judgement(ev.event_id, pred.version, correct, ev.timestamp, pred.prediction_id, origin, thumbs=True)
        )
        label = pred.label if correct else ev.label
        _judge_shadow(out, ev, pred, label, origin)
        if not correct and pred.memory_sid:  # the memory's answer was wrong: it leaves the memory
            (out.forget if trusted else out.forget_untrusted).append(pred.memory_sid)
        if label is None:
            out.seen_only.append((ev.source, ev.event_id))  # thumbs down without the right label: a judgement only
            out.seen_only_sources.append((ev.event_id, ev.source))
        else:  # the prediction log's text, masked when it was logged
            sample = Incoming(ev.event_id, pred.text, label, ev.source, ev.timestamp, origin, trusted, masked=True)
            out.samples.append(sample)
            out.stored_ids.append(ev.event_id)
            if not correct:
                out.corrections.append(sample)


def _generation_feedback(
    out: Outcome, ev: AnyEvent, pred: PredictionRecord | None, origin: str, trusted: str
) -> str | None:
    """Feedback on a generation (or a correction of a prompt) as a generative sample
    (``online.generation_samples``) and, on a served generation, a judgement of its version. Returns why
    the event cannot be used (it is then dead-lettered), or None."""
    if isinstance(ev, LabelEvent):
        return f"prediction_id {ev.prediction_id!r} is a generation: send a correction (its answer), not a label"
    if isinstance(ev, ThumbsEvent) and ev.label is not None:
        return "a thumbs on a generation takes no label: send a correction with the answer instead"
    if pred is not None and not pred.is_generation:
        return f"prediction_id {ev.prediction_id!r} is a classification: send a label, not a correction"
    pid = pred.prediction_id if pred is not None else None
    if isinstance(ev, CorrectionEvent):
        answer = mask_pii(ev.answer)
        right = False
        if pred is None:
            text = gen.encode([{"role": "user", "content": mask_pii(ev.prompt or "")}], answer)
        else:
            text = gen.encode(gen.decode_chat(pred.text), answer, rejected=pred.answer)
            right = normalise(ev.answer) == normalise(pred.answer or "")
            if not pred.memory_sid:  # a memory answer was written by a user, not by the version: not its judgement
                out.judgements.append(Judgement(ev.event_id, pred.version, right, ev.timestamp, pid, origin))
        sample = Incoming(ev.event_id, text, gen.CORRECTION, ev.source, ev.timestamp, origin, trusted, masked=True)
        out.samples.append(sample)
        out.stored_ids.append(ev.event_id)
        if not right:
            out.corrections.append(sample)  # to every generating replica's memory (online.memory.generative)
            if pred is not None and pred.memory_sid:  # the memory's answer was corrected: it leaves
                (out.forget if trusted else out.forget_untrusted).append(pred.memory_sid)
        return None
    assert isinstance(ev, ThumbsEvent) and pred is not None
    up = ev.vote == "up"
    if not pred.memory_sid:  # as above: the memory's answer is judged by forgetting it, not the version
        out.judgements.append(Judgement(ev.event_id, pred.version, up, ev.timestamp, pid, origin, thumbs=True))
    if not up and pred.memory_sid:  # the memory's answer was voted down: it leaves the memory
        (out.forget if trusted else out.forget_untrusted).append(pred.memory_sid)
    text = gen.encode(gen.decode_chat(pred.text), pred.answer or "")
    label = gen.UP if up else gen.DOWN
    out.samples.append(Incoming(ev.event_id, text, label, ev.source, ev.timestamp, origin, trusted, masked=True))
    out.stored_ids.append(ev.event_id)
    return None


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
    """The first problem, naming the field as the API's 422 does (``timestamp``, not pydantic's
    ``label.timestamp`` with the event kind's tag in it); ``event`` for the record as a whole."""
    err = exc.errors()[0]
    where = error_field(("event", *err["loc"]), err.get("type", ""))
    return f"{'event' if where == 'body' else where}: {err['msg']}"
