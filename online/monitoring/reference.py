"""Build a version's drift reference with its own serving path (same precision as the API), so the
embeddings the API compares live traffic with are computed exactly as live traffic's are."""

from __future__ import annotations

import random
from collections.abc import Sequence

from online.data import Example
from online.learning.rehearsal import ClassBalanced
from online.model import TextClassifier
from online.monitoring.drift import Reference
from online.serving.predictor import Predictor
from online.settings import Settings


def build_reference(
    model: TextClassifier, trained_on: Sequence[Example], calibration: Sequence[Example], settings: Settings
) -> Reference:
    """``trained_on``: what the version learned from (a class-balanced sample goes into the index);
    ``calibration``: in-domain texts it never trained on (the golden set, the round's holdout)."""
    rng = random.Random(settings.seed)
    sample = ClassBalanced().select(trained_on, settings.drift_reference_size, rng)
    predictor = Predictor(
        model, 0, device=settings.device, precision=settings.precision, max_seq_len=settings.max_seq_len
    )
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
