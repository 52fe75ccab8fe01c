"""Packaging a judged version: what replicas serve beside its weights.

A version that passed the gate gets its int8 artifact (built and checked against fp32 on the golden set,
the result kept in its gate report) and its drift reference, built with its own serving path (the engine
and precision the API will serve it with: its int8 artifact when it has one), so the embeddings the API
compares live traffic with are computed exactly as live traffic's are. A rejected version is packaged
with nothing: it never serves.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from online.engines import INT8_FILE
from online.examples import Example, class_balanced
from online.lifecycle.artifact import build_int8
from online.model import TextClassifier
from online.predictor import serving_predictor
from online.reference import REFERENCE_FILE, Reference
from online.reports import GateReport
from online.settings import Settings


def build_reference(
    model: TextClassifier,
    trained_on: Sequence[Example],
    calibration: Sequence[Example],
    settings: Settings,
    artifacts: Mapping[str, Path] | None = None,
) -> Reference:
    """``trained_on``: what the version learned from (a class-balanced sample goes into the index);
    ``calibration``: in-domain texts it never trained on (the golden set, the round's holdout);
    ``artifacts``: the version's serving artifacts, whose int8 engine replicas serve where it has one."""
    rng = random.Random(settings.seed)
    sample = class_balanced(trained_on, settings.drift_reference_size, rng)
    predictor = serving_predictor(model, 0, settings, (artifacts or {}).get(INT8_FILE), reuse=True)
    _, train_emb = predictor.probabilities_and_embeddings([t for t, _ in sample])
    probs, calib_emb = predictor.probabilities_and_embeddings([t for t, _ in calibration])
    return Reference.build(
        train_emb.numpy(),
        calib_emb.numpy(),
        probs.argmax(-1).numpy(),
        len(model.labels),
        settings.drift_window,
        settings.seed,
        train_labels=[lab for _, lab in sample],
    )


@dataclass(frozen=True)
class Package:
    """What the registry stores beside a version's weights."""

    artifacts: dict[str, Path] = field(default_factory=dict)  # serving artifacts (moved in, checksummed)
    files: dict[str, bytes] = field(default_factory=dict)  # small files written beside them (the reference)


@contextlib.contextmanager
def package(
    model: TextClassifier,
    report: GateReport,
    golden: Sequence[Example],
    trained_on: Sequence[Example],
    calibration: Sequence[Example],
    settings: Settings,
) -> Iterator[Package]:
    """Build what a judged version serves with (``report.engine`` records the int8 check). Empty when the
    version failed the gate; no int8 artifact when it failed its check or the engine setting is torch
    (torch then serves the version). The artifacts live in a temporary directory until the block ends."""
    if not report.passed:
        yield Package()
        return
    with tempfile.TemporaryDirectory(prefix="online-artifact-") as tmp:
        path, report.engine = build_int8(model, golden, settings, Path(tmp))
        artifacts = {INT8_FILE: path} if path else {}
        reference = build_reference(model, trained_on, calibration, settings, artifacts)
        yield Package(artifacts, {REFERENCE_FILE: reference.dumps()})
