"""Classifier, registry and serving path on the tiny encoder."""

from __future__ import annotations

import pytest
import torch

from online.lifecycle.registry import IntegrityError
from online.model import TextClassifier
from online.predictor import Predictor
from online.wiring.stores import Stores


def test_grow_keeps_old_rows_and_predictions(tiny_base):
    model = TextClassifier.from_base(tiny_base, ["a", "b"])
    before_w = model.head.weight.detach().clone()
    ids = torch.tensor([[101, 2054, 102]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = model(ids, mask)
    assert model.grow(["b", "c", "d", "c"]) == ["c", "d"]
    assert model.labels == ["a", "b", "c", "d"]
    assert torch.equal(model.head.weight[:2], before_w)
    with torch.no_grad():
        after = model(ids, mask)
    assert torch.allclose(after[:, :2], before)
    assert after.shape == (1, 4)


def test_registry_roundtrip_and_integrity(settings, tiny_base):
    registry = Stores.from_settings(settings).registry
    model = TextClassifier.from_base(tiny_base, ["x", "y"])
    m1 = registry.publish(model, parent=None, metrics={"acc": 0.5})
    assert registry.live() is None
    registry.promote(m1.version)
    assert registry.live() == m1.version
    loaded, manifest = registry.load(m1.version)
    assert manifest.labels == ["x", "y"]
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k

    m2 = registry.publish(model, parent=m1.version)
    weights = registry.path(m2.version) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(IntegrityError):
        registry.load(m2.version)

    rejected = registry.publish(model, parent=m1.version, status="rejected")
    with pytest.raises(ValueError):
        registry.promote(rejected.version)
    assert registry.live() == m1.version
    assert [h.version for h in registry.history()] == [m1.version]


def test_served_path_matches_fp32(tiny_base):
    model = TextClassifier.from_base(tiny_base, [f"l{i}" for i in range(5)])
    texts = ["short", "a somewhat longer text with more tokens in it", "mid length text here"] * 7
    fp32 = Predictor(model, 1, precision="fp32", bucket_size=4)
    full = fp32.probabilities(texts)
    # bucketing by length must not change results or their order
    one_by_one = torch.cat([fp32.probabilities([t]) for t in texts])
    assert torch.allclose(full, one_by_one, atol=1e-5)
    bf16 = Predictor(model, 1, precision="bf16", bucket_size=4)
    assert torch.allclose(bf16.probabilities(texts), full, atol=0.05)
    preds = fp32.predict(texts, top_k=3)
    assert all(p.label == p.top_k[0][0] and len(p.top_k) == 3 for p in preds)


def test_a_seeded_new_head_is_the_same_whatever_was_drawn_before(tiny_base):
    first = TextClassifier.from_base(tiny_base, ["a", "b", "c"], seed=7)
    torch.rand(1000)  # other work in the process draws random numbers
    state = torch.random.get_rng_state()
    again = TextClassifier.from_base(tiny_base, ["a", "b", "c"], seed=7)
    assert torch.equal(first.head.weight, again.head.weight) and torch.equal(first.head.bias, again.head.bias)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left alone
    other = TextClassifier.from_base(tiny_base, ["a", "b", "c"], seed=8)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_a_long_text_is_cut_before_tokenizing_and_keeps_the_same_tokens(tiny_base, monkeypatch):
    """A 10,000-character correction is cut to max_seq_len * CHARS_PER_TOKEN characters before the
    tokenizer sees it (a fast tokenizer tokenizes all of a text, then truncates); the tokens kept, and so
    the answer, are the same."""
    from online import predictor as predictor_module

    model = TextClassifier.from_base(tiny_base, [f"l{i}" for i in range(5)])
    p = Predictor(model, 1, precision="fp32", bucket_size=4)
    words = ["refund", "my", "order", "please", "card", "delivery", "was", "late"]
    long = " ".join(words[i % len(words)] for i in range(2000))  # ~10,000 characters
    seen: list[int] = []
    tokenize = p.tokenizer.__class__.__call__
    monkeypatch.setattr(
        p.tokenizer.__class__, "__call__", lambda self, texts, **kw: seen.extend(map(len, texts)) or tokenize(self, texts, **kw)
    )
    cut = p.probabilities([long])
    assert seen == [p.max_seq_len * predictor_module.CHARS_PER_TOKEN] and len(long) > seen[0]
    monkeypatch.setattr(predictor_module, "CHARS_PER_TOKEN", 10**6)  # not cut
    assert torch.allclose(cut, p.probabilities([long]), atol=1e-6)
