"""What the registry records of a version and its making: typed reports, one leaf module both the
registry and the gate import, so a manifest read back is the same object that was judged.

``Manifest.gate`` is a :class:`GateReport`; ``Manifest.round`` says how the version was made, one of
:data:`VersionStats` told apart by ``kind`` (a continual round, the seed training of version 1, an
import).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field


class EngineCheck(BaseModel):
    """How the int8 artifact of a version did against the same model in fp32 on the golden set."""

    engine: str = "onnx-int8"
    passed: bool
    accuracy: float | None = None
    fp32_accuracy: float | None = None
    agreement: float | None = None
    max_drop: float | None = None
    min_agreement: float | None = None
    build_s: float = 0.0
    detail: str = ""


class Check(BaseModel):
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str = ""


class GateReport(BaseModel):
    passed: bool
    checks: list[Check]
    golden_sha256: str
    golden_accuracy: float
    golden_per_label: dict[str, list[int]]  # label -> [right, total]: the next round's baseline
    # label -> candidate minus live accuracy on its golden texts, labels that changed, worst first:
    # which old intents a round hurt (or helped), the per-label column of `online bench learn`'s matrix
    golden_label_change: dict[str, float] = {}
    # new label -> {golden label: texts of it the candidate answers with the new label (some may have been
    # wrong already)}: a round teaching an intent that overlaps a known one, a common reason to refuse it
    golden_taken_by_new: dict[str, dict[str, int]] = {}
    holdout_accuracy: float | None = None
    batch_latency_ms: float | None = None
    duration_s: float = 0.0
    engine: EngineCheck | None = None  # the int8 artifact against fp32; a failure means torch serves it

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]


class HeadInfo(BaseModel):
    """Which head a version has and which encoder it sits on (`online models show`)."""

    mode: Literal["sgd", "closed-form"]  # sgd: a linear head trained with the encoder; closed-form: a ridge solve
    width: int | None = None  # closed-form: the random ReLU lift's width
    ridge: float | None = None  # closed-form: the regulariser (chosen on held-out data, then carried)
    temperature: float | None = None  # closed-form: the logits' scale (held-out log loss)
    ridge_chosen: bool | None = None  # closed-form: chosen in this round (True) or carried from the parent
    examples: int | None = None  # closed-form: the stored examples its statistics cover
    new_fit: float | None = None  # closed-form: share of the round's new examples its head answers right
    encoder_tuned: bool = True  # whether this round changed the encoder
    encoder_of: int | None = None  # the version whose round last changed the encoder; None: this one's own
    encoder_sha: str | None = None  # closed-form: digest of the encoder's weights (the statistics' key)

    def describe(self) -> str:
        head = "linear, trained by SGD" if self.mode == "sgd" else (
            f"closed-form: lift {self.width}, ridge {self.ridge:g} ({'chosen on held-out data' if self.ridge_chosen else 'carried'}), "
            f"temperature {self.temperature:.3g}, statistics of {self.examples} examples"
            + (f", fits {self.new_fit:.0%} of the round's new examples" if self.new_fit is not None else "")
        )  # fmt: skip
        encoder = (
            "tuned in this version's round" if self.encoder_of is None else f"version {self.encoder_of}'s, unchanged"
        )
        return f"head {head}; encoder {encoder}" + (f" (sha {self.encoder_sha[:12]})" if self.encoder_sha else "")


class RoundStats(BaseModel):
    """A continual round: what it trained on and with which recipe."""

    kind: Literal["continual"] = "continual"
    new: int = 0
    holdout: int = 0
    rehearsed: int = 0
    quarantined: int = 0
    held_by_reason: dict[str, int] = Field(default_factory=dict)
    added_labels: list[str] = Field(default_factory=list)
    rehearsal_strategy: str | None = None
    mode: str | None = None
    epochs: int | None = None
    distill_weight: float | None = None
    bias_correction: str | None = None
    probe_first: bool | None = None
    mean_loss: float | None = None
    train_s: float = 0.0
    duration_s: float = 0.0
    cursor: int | None = None
    started_at: float | None = None
    trained_by: str | None = None
    head: HeadInfo | None = None


class SeedStats(BaseModel):
    """Version 1 trained on the seed data."""

    kind: Literal["seed"] = "seed"
    examples: int
    epochs: int
    mean_loss: float | None = None
    duration_s: float = 0.0
    head: HeadInfo | None = None


class ImportStats(BaseModel):
    """A classifier trained elsewhere, imported (`online models import`, `online up --model`)."""

    kind: Literal["import"] = "import"
    source: str
    labels: int


VersionStats = Annotated[RoundStats | SeedStats | ImportStats, Field(discriminator="kind")]
