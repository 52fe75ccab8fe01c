"""The HTTP API's request and response bodies, shared by the server (`services.api`) and `online.client`.

Limits come from Settings, so the OpenAPI schema states them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    create_model,
    model_validator,
)

from online.events import FeedbackEvent
from online.reports import GateReport, VersionStats
from online.settings import Settings


class PredictRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="after")
    def _one_of(self) -> "PredictRequestBase":
        if (self.text is None) == (self.texts is None):  # type: ignore[attr-defined]
            raise ValueError("give exactly one of `text` (one string) or `texts` (a list of strings)")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)  # type: ignore[attr-defined]


def predict_request_model(settings: Settings) -> type[PredictRequestBase]:
    """The /v1/predict body with this deployment's limits baked into its schema."""
    Text = Annotated[str, StringConstraints(min_length=1, max_length=settings.max_text_chars, pattern=r"\S")]
    return create_model(
        "PredictRequest",
        __base__=PredictRequestBase,
        text=(Text | None, Field(None, description="One text to classify.")),
        texts=(
            list[Text] | None,
            Field(None, min_length=1, max_length=settings.max_texts_per_request, description="Several texts."),
        ),
        top_k=(int, Field(settings.top_k, ge=1, le=settings.max_top_k, description="Alternatives per text.")),
        user=(
            str | None,
            Field(
                None,
                min_length=1,
                max_length=200,
                description="Who asks (any stable id): during a canary the same user always sees the same version. "
                "Without it the routing is per text, so a retried text gets the same answer.",
            ),
        ),
    )


class LabelScore(BaseModel):
    label: str
    score: float


class PredictionOut(BaseModel):
    prediction_id: str = Field(description="Quote it in thumbs feedback.")
    label: str
    score: float
    top_k: list[LabelScore]
    model_version: int
    source: Literal["model", "memory"] = Field(
        "model", description="memory: a correction taught through feedback answered it, before any round trained on it."
    )
    memory_event_id: str | None = Field(None, description="With source memory: the feedback event that taught it.")


class PredictResponse(BaseModel):
    model_version: int = Field(description="The version that served every prediction of this call.")
    predictions: list[PredictionOut]


class ModelOut(BaseModel):
    version: int
    parent: int | None
    status: str
    live: bool
    created_at: float
    labels: int
    metrics: dict[str, float]
    gate_passed: bool | None = None
    failed_checks: list[str] = Field(default_factory=list, description="The gate checks it failed.")
    live_accuracy: float | None = Field(None, description="From feedback on this version's own predictions.")
    judged: int = Field(0, description="Predictions of this version judged by feedback.")


class ModelDetail(ModelOut):
    """One version in full: what `online models show N` prints."""

    label_names: list[str]
    base_model: str
    sha256: str
    artifacts: dict[str, str] = Field(description="Serving artifacts beside the weights: name -> sha256.")
    gate: GateReport | None = Field(
        None, description="The gate report, check by check (the int8 engine's check in `engine`)."
    )
    round: VersionStats | None = Field(
        None,
        description="How it was made, by `kind`: continual (a round: new, held out, rehearsed, timings), "
        "seed (version 1 trained on the seed data) or import (a classifier trained elsewhere).",
    )


class Signal(BaseModel):
    """One drift signal of a window: its value against its threshold (extra fields: the signal's own)."""

    model_config = ConfigDict(extra="allow")
    value: float | None
    threshold: float | None
    alert: bool
    kind: str | None = None


class WindowSnapshot(BaseModel):
    """A replica's latest (or a past) window of predictions."""

    model_config = ConfigDict(extra="allow")
    at: float
    replica: str
    version: int | None
    size: int
    signals: dict[str, Signal]
    label_counts: dict[str, int] = Field(default_factory=dict)


class VersionVerdict(BaseModel):
    p_value: float | None
    drop: float | None
    worse: bool
    reason: str


class VersionAccuracy(BaseModel):
    version: int
    parent: int | None
    n: int
    correct: int
    accuracy: float | None
    live: bool
    per_minute: list[tuple[int, int, int]] = Field(description="(minute, judged, correct), the last 3 hours.")
    vs_parent: VersionVerdict | None = None


class DriftAlert(BaseModel):
    signal: str
    replica: str | None
    value: float | None
    threshold: float | None
    at: float


class LabelDistribution(BaseModel):
    labels: list[str] = Field(default_factory=list)
    window: list[float] = Field(default_factory=list)
    reference: list[float | None] = Field(default_factory=list)


class DriftReport(BaseModel):
    """Everything `/v1/drift` shows (`services.admin.drift.drift_report`)."""

    live_version: int | None
    replica: str | None
    window_size: int
    reference: bool
    signals: dict[str, Signal]
    replicas: list[WindowSnapshot]
    feedback: dict[str, Signal]
    live_accuracy: list[VersionAccuracy]
    feedback_volume: list[tuple[int, int]] = Field(description="(minute, events), the last hour.")
    alerts: list[DriftAlert]
    label_distribution: LabelDistribution
    history: list[WindowSnapshot] | None = None


class ShadowSlot(BaseModel):
    version: int
    share: float = Field(description="Share of live traffic the candidate also answers (never returned).")
    since: float


class CanarySlot(BaseModel):
    """A candidate answering a share of live traffic (sticky per user, else per text), stepped up on
    live evidence (``online.lifecycle.canary``)."""

    version: int
    parent: int = Field(description="The live version it is compared with (and rolled back to).")
    share: float = Field(description="Share of live traffic it answers now.")
    steps: list[float] = Field(default_factory=list, description="Shares still to come; past the last: promoted.")
    since: float
    step_since: float = Field(description="When the current share began.")
    paused: bool = Field(False, description="An operator paused it: the share holds, nothing is decided.")
    judged_at_step: int = Field(0, description="Canary judgements counted when the current share began.")
    shares: list[tuple[float, float]] = Field(default_factory=list, description="(when, share) of each step so far.")


class ArmEvidence(BaseModel):
    """One side of a canary comparison over the canary's window."""

    version: int
    judged: int = 0
    correct: int = 0
    accuracy: float | None = None
    sources: int = 0
    thumbs: int = 0
    thumbs_down_rate: float | None = Field(None, description="Share of its thumbs votes that were down.")
    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None


class CanaryResponse(BaseModel):
    """The canary in progress (``canary`` null when none runs), its evidence against live over the same
    window, the decision the analysis would take now and why, and per-minute accuracy of both."""

    canary: CanarySlot | None = None
    loaded_by_this_replica: bool = False
    live: ArmEvidence | None = None
    candidate: ArmEvidence | None = None
    decision: str | None = Field(None, description="hold, step, promote or rollback.")
    reason: str = ""
    decided_by: str = Field("", description="Whose decision: the trainer's last (its settings decide), or this process's.")
    curve: list[tuple[int, float | None, float | None]] = Field(
        default_factory=list, description="(epoch minute, live accuracy, canary accuracy) since the canary began."
    )


class CanaryRequest(BaseModel):
    """An operator's move on the canary: start one, pause or resume it, promote it now, or abort it."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["start", "pause", "resume", "promote", "abort"]
    version: int | None = Field(None, ge=1, description="With start: the published version to canary.")
    share: float | None = Field(None, gt=0, lt=1, description="With start: its first share (default ONLINE_CANARY_SHARE).")
    reason: str = Field("", max_length=500)


class ShadowResponse(BaseModel):
    """The candidate running in shadow, with its agreement and accuracy next to live's on the same
    requests; ``shadow`` is null when none runs (the other fields then stay empty)."""

    shadow: ShadowSlot | None = None
    loaded_by_this_replica: bool = False
    requests: int = 0
    agreement: float | None = None
    judged: int = 0
    shadow_accuracy: float | None = None
    live_accuracy_same_requests: float | None = None


class ValidationIssue(BaseModel):
    field: str = Field(description="Dotted path of the offending field (`body` for the whole body).")
    reason: str


class ValidationErrorOut(BaseModel):
    """What every 422 answers: one readable line, and the issues one by one."""

    detail: str
    errors: list[ValidationIssue]


class ReviewItemOut(BaseModel):
    prediction_id: str
    text: str = Field(description="PII-masked, as stored.")
    label: str
    score: float
    margin: float = Field(description="Top-1 minus top-2 probability.")
    distance: float | None = Field(
        None, description="To the nearest training example (None without a drift reference)."
    )
    far: bool = Field(description="Farther from the training data than 99% of in-domain texts.")
    uncertainty: float
    version: int
    at: float


class ReviewResponse(BaseModel):
    queued: int
    items: list[ReviewItemOut]


class LiveChangeOut(BaseModel):
    at: float
    action: str
    version: int
    previous: int | None
    reason: str


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: int | None = Field(None, ge=1, description="Version to go back to (default: the live version's parent).")
    reason: str = Field("", max_length=500)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(..., ge=1, description="A published version (never a rejected or collected one).")
    reason: str = Field("", max_length=500)


class TrainingState(BaseModel):
    paused: bool
    paused_at: float | None = None
    reason: str = ""


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class ModelsResponse(BaseModel):
    live: int | None
    canary: CanarySlot | None = None
    served_by_this_replica: int | None
    versions: list[ModelOut]
    history: list[LiveChangeOut]


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list  # replaced with the event union and this deployment's limit in feedback_body_model


def _body_shape(body: Any) -> str:
    return "batch" if isinstance(body, dict) and "events" in body else "event"


def feedback_body_model(settings: Settings) -> type:
    """A single event or a batch, with this deployment's batch limit in the schema. The body's shape
    (an ``events`` list or not) picks the branch before validation, so an invalid event is told
    against the one model it was meant as: a plain union reported every field against both (a bad
    timestamp came last of seven errors, after "FeedbackBatch.events: Field required")."""
    batch = create_model(
        "FeedbackBatch",
        __base__=FeedbackBatch,
        events=(list[FeedbackEvent], Field(min_length=1, max_length=settings.max_feedback_events)),
    )
    return Annotated[  # type: ignore[return-value]
        Annotated[batch, Tag("batch")] | Annotated[FeedbackEvent, Tag("event")], Discriminator(_body_shape)
    ]


_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")


def error_field(loc: Sequence[str | int], error_type: str) -> str:
    """The field a request validation error names, as the caller wrote it: ``body`` is the whole body,
    and the tags of :func:`feedback_body_model`'s unions (the body's shape, each event's ``kind``) are
    steps of pydantic's location, not fields (``event.label.timestamp`` is the ``timestamp``,
    ``batch.events.0.label.text`` is ``events.0.text``). Other bodies have no such steps: their path is
    joined as it is."""
    parts = [p for p in loc if p != "body"]
    tagged = bool(parts) and parts[0] == "event"  # a single event: its kind's tag comes next
    if parts and parts[0] in ("event", "batch"):
        parts = parts[1:]
    out: list[str] = []
    for p in parts:
        if tagged:
            tagged = False
            continue
        out.append(str(p))
        tagged = isinstance(p, int) and out[:1] == ["events"]  # an event of the batch: its kind's tag next
    if tagged and error_type in _TAG_ERRORS:
        out.append("kind")
    return ".".join(out) or "body"


class FeedbackAccepted(BaseModel):
    accepted: int
    event_ids: list[str] = Field(description="Stored by the broker; the consumer deduplicates by these.")
    status_url: str | None = Field(None, description="Where the (first) event's fate is told: GET it.")
    status_urls: list[str] = Field(default_factory=list, description="Each event's status URL, in order.")


FeedbackState = Literal["accepted", "stored", "recorded", "memory", "held", "trained", "dead_lettered", "unknown"]


class FeedbackStatus(BaseModel):
    """What became of one feedback event (``GET /v1/feedback/{event_id}``)."""

    event_id: str
    state: FeedbackState = Field(
        description="accepted (in the broker, not consumed yet), stored (waiting for a round), recorded (a "
        "judgement only), memory (answered by the correction memory now), held (with reason and release), "
        "trained (in version), dead_lettered (with reason), unknown (not consumed yet, or expired)."
    )
    detail: str
    label: str | None = None
    sid: str | None = Field(None, description="The buffer sample its text and label became.")
    trusted: bool = Field(False, description="Sent with the admin token or a trusted feedback key.")
    reason: str | None = Field(None, description="Why it is held or dead-lettered.")
    release: str | None = Field(None, description="What would release it (held only).")
    memory: str | None = Field(None, description="Its state in this replica's correction memory, if any.")
    version: int | None = Field(None, description="The version a round trained it into.")
    round_status: str | None = Field(None, description="What became of that version: promoted, rejected, ...")


class HeldOut(BaseModel):
    sid: str
    text: str
    label: str
    source: str
    sources: int
    reason: str
    at: float
    origin: str = Field("", description="Who first sent it, as the screen counts senders: addr:<client> without a key.")


class SourceOut(BaseModel):
    source: str
    events: int
    judged: int
    contradicted: int
    contradiction_rate: float | None
    quarantined: bool


class QuarantineResponse(BaseModel):
    held: list[HeldOut] = Field(description="The oldest held samples, up to the limit asked for.")
    sources: list[SourceOut]
    held_count: int = Field(0, description="Every sample held, listed or not.")


class QuarantineAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sids: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,40}$")]] = Field(
        default_factory=list, max_length=1000
    )
    source: str | None = Field(
        None, max_length=128, description="Release: its held samples, and trust its feedback key from now on."
    )


class QuarantineResult(BaseModel):
    changed: int


class ForgetRequest(BaseModel):
    """Erase one source's data, or one text's (``online.lifecycle.erasure``)."""

    model_config = ConfigDict(extra="forbid")
    source: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = (
        Field(None, description="Everything this source sent, and its statistics.")
    )
    text: Annotated[str, StringConstraints(min_length=1, max_length=10_000, pattern=r"\S")] | None = Field(
        None, description="This text (compared masked, case and spaces ignored), whoever sent it, any label."
    )

    @model_validator(mode="after")
    def _one_of(self) -> "ForgetRequest":
        if (self.source is None) == (self.text is None):
            raise ValueError("give exactly one of `source` or `text`")
        return self


class ForgetResult(BaseModel):
    """What an erasure removed, what it keeps out, and what the weights may still hold."""

    source: str | None
    text: str | None = Field(None, description="The text as it was stored (masked).")
    buffer: int = Field(description="Replay-buffer samples removed (trainable and held).")
    trained: int = Field(description="Of those, samples a round had already trained on.")
    corrections: int = Field(description="Correction-log entries removed (every replica's memory drops them).")
    stream: int = Field(description="Correction-stream records holding their texts, removed.")
    predictions: int = Field(description="Logged predictions of the text removed (none for a source).")
    predictions_scanned: int = 0
    review: int = Field(description="Review-queue items of the text removed.")
    ledger: bool = Field(description="The source's statistics and created labels removed.")
    kept_out: str = Field(description="What the tombstone keeps from being stored again.")
    versions: list[int] = Field(description="Versions trained after the samples arrived: they may hold them.")
    live: int | None
    weights: str = Field(description="What the weights still hold, and when it is gone.")
    not_reached: str = Field(description="Copies this erasure cannot reach.")


class HeldCounts(BaseModel):
    total: int
    by_reason: dict[str, int] = Field(description="contradicted, source quarantined, pending label")
    by_source: dict[str, dict[str, int]]


class PendingLabel(BaseModel):
    label: str
    examples: int
    sources: list[str]
    reason: str


class ScreeningSummary(BaseModel):
    """What the screen holds back, in counts only (``online.feedback.quarantine.screening_summary``)."""

    held: HeldCounts
    pending_labels: list[PendingLabel]
    quarantined_sources: list[str]
    trusted_sources: list[str] = Field(description="Sources whose feedback key an operator released (trusted).")
    approved_labels: list[str]


class FeedbackStats(ScreeningSummary):
    """What the screen holds back, in counts (no texts: open to every caller)."""

    review_queued: int = Field(
        0, description="Predictions queued for a human label (`GET /v1/review`; expired ones leave when it is read)."
    )


class RoundOut(BaseModel):
    """One continual round that produced a version (passed or rejected by the gate)."""

    version: int
    parent: int | None
    status: str = Field(description="The version's status: published (live or not), rejected, collected.")
    gate_passed: bool | None
    failed_checks: list[str]
    created_at: float
    started_at: float | None
    duration_s: float
    train_s: float
    new: int
    holdout: int
    rehearsed: int
    quarantined: int
    added_labels: int
    golden_accuracy: float | None


class RoundsResponse(BaseModel):
    rounds: list[RoundOut] = Field(description="Oldest first.")


class BufferLabelOut(BaseModel):
    label: str
    stored: int
    total: int = Field(description="Events ever stored for the label.")
    new: int = Field(description="Not yet trained on by a round.")
    duplicates: int
    dead_lettered: int
    evicted: int


class BufferResponse(BaseModel):
    """The replay buffer in counts (no texts)."""

    capacity: int
    samples: int
    new: int
    held: int
    labels: list[BufferLabelOut] = Field(description="Labels with samples in the buffer.")
    dead_lettered_other: int = Field(
        0, description="Events dead-lettered under labels never stored (refused by the allow-list, ...)."
    )
    cursor: int | None = Field(None, description="Sequence number of the last event stored.")


class LabelApproved(BaseModel):
    label: str
    newly_approved: bool
    released: int = Field(description="Held examples of the label back in the buffer: the next round trains on them.")


class ReplicaOut(BaseModel):
    """An API replica's last heartbeat."""

    replica: str
    version: int | None
    at: float
    age_s: float
    stale: bool = Field(description="No heartbeat for three model polls: the replica is probably gone.")
    engine: str | None = None
    last_load_error: str | None = None
    memory: dict[str, int] | None = Field(None, description="Correction memory by state, answers by source.")


class BufferSummary(BaseModel):
    samples: int
    new: int
    labels: int
    dead_lettered: int
    held: int


class SupervisedProcess(BaseModel):
    pid: int
    restarts: int = 0


class Supervisor(BaseModel):
    """A running `online up` in the same state directory, and the processes it restarts."""

    pid: int
    processes: dict[str, SupervisedProcess] = Field(default_factory=dict)


class StatusReport(BaseModel):
    """Everything `online status` shows, as one document (a monitoring script's input)."""

    live_version: int | None
    canary: CanaryResponse | None = Field(None, description="The canary in progress, when one runs.")
    training: TrainingState
    replicas: list[ReplicaOut]
    correction_log: int = Field(description="Corrections taught through feedback, in the correction log.")
    buffer: BufferSummary
    screening: ScreeningSummary
    rounds: list[RoundOut] = Field(description="The last continual rounds, oldest first.")
    drift: DriftReport
    supervisor: Supervisor | None = None
