"""A round's probe (``ONLINE_PROBE_FIRST``, LP-FT): the head is fitted on the live encoder's frozen features
before the encoder is fine-tuned, so new labels start learned and the first steps do not pull the encoder
towards a random head."""

from __future__ import annotations

import torch

from online.learning.fit import logits
from online.learning.step import LearnConfig, _distinct_rows, learn, new_repeats
from tests import helpers


def _predicted(model, texts: list[str]) -> list[str]:
    return [model.labels[i] for i in logits(model, texts).argmax(-1).tolist()]


def test_the_probe_alone_learns_a_new_label_on_the_live_features_and_keeps_the_old_answers(live, settings):
    new = helpers.examples(["travel"], 24, seed=5)
    rehearsal = helpers.examples(helpers.OLD, 20, seed=4)
    old_texts = [t for t, _ in helpers.examples(helpers.OLD, 30, seed=9)]
    cfg = LearnConfig.from_settings(settings).but(
        probe_first=True, epochs=0, distill_weight=1.0, bias_correction="logit-adjust", device="cpu"
    )  # no fine-tuning epoch: what comes back is the probe's work only

    model = learn(live, new, rehearsal, cfg).model

    for mine, theirs in zip(model.encoder.state_dict().values(), live.encoder.state_dict().values()):
        assert torch.equal(mine, theirs)  # the encoder is untouched by the probe
    travel_tests = [t for t, _ in helpers.examples(["travel"], 20, seed=12)]
    # the tiny encoder never learned travel's keywords: a linear head on its features gets 11 of 20
    assert _predicted(model, travel_tests).count("travel") >= 7
    agree = sum(a == b for a, b in zip(_predicted(model, old_texts), _predicted(live, old_texts)))
    assert agree >= 0.95 * len(old_texts)
    # without the probe the new row starts at the old rows' mean, whose logit never beats the best old one
    plain = learn(live, new, rehearsal, cfg.but(probe_first=False)).model
    assert _predicted(plain, travel_tests).count("travel") == 0


def test_with_the_probe_a_round_learns_its_new_label_under_distillation_and_logit_adjustment(live, settings):
    """The product's round on the tiny model: distillation and logit adjustment both hold the new label back
    (recall 0.70-0.90 over seeds without the probe); with it the label is learned."""
    new = helpers.examples(["travel"], 24, seed=5)
    rehearsal = helpers.examples(helpers.OLD, 20, seed=4)
    cfg = LearnConfig.from_settings(settings).but(
        probe_first=True, epochs=10, distill_weight=1.0, bias_correction="logit-adjust", new_share_min=0.0, device="cpu"
    )
    tests = helpers.examples(["travel"], 20, seed=12)
    old = helpers.examples(helpers.OLD, 20, seed=11)
    for seed in (0, 1, 2):
        model = learn(live, new, rehearsal, cfg.but(seed=seed)).model
        assert helpers.accuracy(model, tests) >= 0.9, seed
        assert helpers.accuracy(model, old) >= 0.95, seed


def test_distillation_targets_follow_the_repeated_new_examples_row_by_row(live, settings, monkeypatch):
    """The live model is run once over the distinct examples; each trained row (new examples repeated,
    then the rehearsal) gets the targets of its own text."""
    assert _distinct_rows(2, 3, 2).tolist() == [0, 1, 0, 1, 0, 1, 2, 3]
    new = helpers.examples(["travel"], 5, seed=5)
    rehearsal = helpers.examples(helpers.OLD, 10, seed=4)
    cfg = LearnConfig.from_settings(settings).but(epochs=1, distill_weight=1.0, new_share_min=0.5, device="cpu")
    repeats = new_repeats(len(new), len(rehearsal), cfg)
    assert repeats > 1
    seen = {}

    def spy(model, examples, **kwargs):
        seen["examples"], seen["teacher"] = list(examples), kwargs["teacher_logits"]
        return real_fit(model, examples, **kwargs)

    from online.learning import step

    real_fit = step.fit
    monkeypatch.setattr(step, "fit", spy)
    learn(live, new, rehearsal, cfg)
    expected = logits(live, [t for t, _ in seen["examples"]])
    assert seen["examples"] == new * repeats + rehearsal
    assert torch.allclose(seen["teacher"], expected, atol=1e-4)
