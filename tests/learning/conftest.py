"""Fixtures of the learning tests."""

from __future__ import annotations

import pytest
import torch

from online.learning.fit import fit
from online.model import TextClassifier
from tests import helpers


@pytest.fixture(scope="module")
def live(tiny_base) -> TextClassifier:
    """The tiny encoder trained on the keyword task's old labels: a live model for a round to start from."""
    torch.manual_seed(0)
    model = TextClassifier.from_base(tiny_base, helpers.OLD)
    fit(model, helpers.examples(helpers.OLD, 40, seed=1), epochs=10, lr=1e-3, head_lr=1e-2, seed=0)
    return model
