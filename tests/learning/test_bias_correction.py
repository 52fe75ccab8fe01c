"""A round's bias correction (``ONLINE_BIAS_CORRECTION``): the pieces, each mode end to end on the tiny
keyword model, and the per-label change a round's gate report records."""

from __future__ import annotations

import random

import pytest
import torch

from online.learning.fit import label_log_prior, logits
from online.learning.step import LearnConfig, class_balanced, learn
from online.lifecycle.gate import Gate, GoldenSet
from online.model import TextClassifier
from tests import helpers


def test_log_prior_is_each_labels_share_and_a_missing_label_counts_as_the_rarest():
    prior = label_log_prior(["a", "b", "c"], [("x", "a")] * 6 + [("y", "b")] * 2)
    shares = torch.exp(prior)
    assert torch.allclose(shares / shares.sum(), torch.tensor([0.6, 0.2, 0.2]))
    assert prior[2] == prior[1]
    half = label_log_prior(["a", "b", "c"], [("x", "a")] * 6 + [("y", "b")] * 2, tau=0.5)
    assert torch.allclose(half, prior / 2)


def test_class_balanced_takes_the_same_number_of_distinct_texts_per_label():
    pool = [(f"a{i}", "a") for i in range(50)] * 2 + [(f"b{i}", "b") for i in range(3)] + [("c0", "c")]
    picked = class_balanced(pool, 12, random.Random(0))
    counts = {lab: sum(1 for _, x in picked if x == lab) for lab in "abc"}
    assert counts == {"a": 4, "b": 3, "c": 1} and len(set(picked)) == len(picked)


def _new_label_pull(model: TextClassifier, texts: list[str]) -> float:
    """How much the new label's logit wins over the old labels' best, on old texts (higher: more bias)."""
    out = logits(model, texts)
    travel = model.labels.index("travel")
    old = [model.labels.index(lab) for lab in helpers.OLD]
    return float((out[:, travel] - out[:, old].max(dim=1).values).mean())


@pytest.mark.parametrize("mode", ["full", "head"])
def test_each_correction_learns_the_new_label_and_pulls_old_texts_less_towards_it(live, settings, mode):
    # An imbalanced round, as on the full stream: 60 examples of a new label beside 4 of each old one.
    new = helpers.examples(["travel"], 60, seed=3)
    rehearsal = helpers.examples(helpers.OLD, 4, seed=4)
    old_tests = [t for t, _ in helpers.examples(helpers.OLD, 30, seed=9)]
    new_tests = helpers.examples(["travel"], 20, seed=10)
    cfg = LearnConfig.from_settings(settings).but(
        mode=mode,
        epochs=6,
        lr=1e-3,
        head_lr=1e-2,
        distill_weight=0.0,
        new_share_min=0.0,
        device="cpu",
        probe_first=False,  # the corrections alone (the probe has tests/learning/test_probe_first.py)
    )
    pull = {}
    for correction in ("off", "logit-adjust", "head-finetune"):
        model = learn(live, new, rehearsal, cfg.but(bias_correction=correction)).model
        assert model.labels[-1] == "travel" and live.labels == helpers.OLD  # grown copy; live untouched
        predicted = [model.labels[i] for i in logits(model, [t for t, _ in new_tests]).argmax(-1).tolist()]
        # learned, though logit adjustment (trained against the round's 60:4 shares) trades some of the
        # new label's recall for the smaller pull, the cost `online bench learn` weighs
        assert predicted.count("travel") >= (10 if correction == "logit-adjust" else 18), (correction, predicted)
        pull[correction] = _new_label_pull(model, old_tests)
    assert pull["logit-adjust"] < pull["off"] and pull["head-finetune"] < pull["off"], pull


def test_the_gate_report_records_which_golden_labels_a_candidate_changed(live, settings, tmp_path):
    s = helpers.keyword_round_settings(settings.model_copy(update={"base_model": live.base_model}), tmp_path)
    gate = Gate(s, GoldenSet.for_settings(s))
    baseline = gate.baseline(live)
    hurt = TextClassifier.from_base(live.base_model, helpers.OLD)
    hurt.load_state_dict(live.state_dict())
    with torch.no_grad():  # music's row now loses to every other label: its golden texts go wrong
        hurt.head.bias[helpers.OLD.index("music")] -= 100.0
    report = gate.evaluate(hurt, live, baseline, [])
    assert list(report.golden_label_change) == ["music"] and report.golden_label_change["music"] < -0.5
    assert gate.evaluate(live, live, baseline, []).golden_label_change == {}


def test_the_gate_report_names_the_golden_labels_a_new_label_takes(live, settings, tmp_path):
    s = helpers.keyword_round_settings(settings.model_copy(update={"base_model": live.base_model}), tmp_path)
    gate = Gate(s, GoldenSet.for_settings(s))
    baseline = gate.baseline(live)
    music = helpers.OLD.index("music")
    overlapping = TextClassifier.from_base(live.base_model, helpers.OLD)
    overlapping.load_state_dict(live.state_dict())
    overlapping.grow(["concerts"])
    with torch.no_grad():  # the new label is music's row, just ahead: it answers what live answered music
        overlapping.head.weight[-1] = overlapping.head.weight[music]
        overlapping.head.bias[-1] = overlapping.head.bias[music] + 0.01
    live_said_music = sum(
        live.labels[i] == "music" for i in logits(live, [t for t, _ in gate.golden.examples]).argmax(-1).tolist()
    )
    report = gate.evaluate(overlapping, live, baseline, [])
    assert live_said_music > 0
    assert list(report.golden_taken_by_new) == ["concerts"]
    taken = report.golden_taken_by_new["concerts"]
    assert sum(taken.values()) == live_said_music and max(taken, key=taken.get) == "music", taken
    golden_check = next(c for c in report.checks if c.name == "golden_accuracy")
    assert "answered with a new label (concerts: music" in golden_check.detail
    assert gate.evaluate(live, live, baseline, []).golden_taken_by_new == {}
