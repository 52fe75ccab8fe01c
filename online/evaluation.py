"""A version measured on the user's own labelled file: accuracy, macro-F1, per-label precision and
recall, and the pairs it confuses most (what to teach it next)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

from online.examples import Example
from online.model import TextClassifier
from online.predictor import torch_predictor
from online.settings import Settings


class LabelScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Confusion(BaseModel):
    label: str
    predicted: str
    count: int


class EvalReport(BaseModel):
    version: int | None = None
    examples: int
    accuracy: float
    macro_f1: float  # mean over the labels present in the file
    per_label: dict[str, LabelScores]
    confused: list[Confusion]  # most frequent (true, predicted) mistakes first
    unknown_labels: list[str]  # labels of the file the model does not have: always counted wrong


def score(predicted: Sequence[str], examples: Sequence[Example], model_labels: Sequence[str] = (),
          top_confused: int = 10) -> EvalReport:  # fmt: skip
    """Scores of ``predicted`` against the labels of ``examples`` (same order)."""
    if len(predicted) != len(examples) or not examples:
        raise ValueError("one prediction per example, and at least one example")
    truth = [lab for _, lab in examples]
    right = Counter(t for t, p in zip(truth, predicted) if t == p)
    support = Counter(truth)
    said = Counter(predicted)
    per_label = {}
    for label in sorted(support):
        precision = right[label] / said[label] if said[label] else 0.0
        recall = right[label] / support[label]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = LabelScores(precision=precision, recall=recall, f1=f1, support=support[label])
    mistakes = Counter((t, p) for t, p in zip(truth, predicted) if t != p)
    known = set(model_labels)
    return EvalReport(
        examples=len(examples),
        accuracy=sum(right.values()) / len(examples),
        macro_f1=sum(s.f1 for s in per_label.values()) / len(per_label),
        per_label=per_label,
        confused=[Confusion(label=t, predicted=p, count=n) for (t, p), n in mistakes.most_common(top_confused)],
        unknown_labels=sorted(set(support) - known) if known else [],
    )


def evaluate(model: TextClassifier, examples: Sequence[Example], settings: Settings, version: int | None = None
             ) -> EvalReport:  # fmt: skip
    """Predict every text with the serving path (same precision and truncation as the API) and score."""
    predictor = torch_predictor(model, version or 0, settings)
    predicted: list[str] = []
    texts = [t for t, _ in examples]
    for start in range(0, len(texts), 256):
        predicted += [p.label for p in predictor.predict(texts[start : start + 256], 1)]
    report = score(predicted, examples, model.labels)
    report.version = version
    return report
