"""The serving path: one immutable, warmed-up predictor per model version.

A :class:`Predictor` is built once per version (in the background during a hot swap) and never mutated,
so a request that started on it finishes on it. Speed on CPU comes from measured levers: batching (done
by the caller), less padding (texts sorted by token length and padded per bucket) and the engine
(``online.engines``: int8 weights under ONNX Runtime by default on CPU, torch in bf16 where the
CPU has native bf16, autocast to bf16 or fp16 on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from online.engines import Engine, OnnxEngine, TorchEngine, resolve_engine, torch_thread_count
from online.model import TextClassifier, load_tokenizer, token_limit
from online.settings import Settings


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    top_k: list[tuple[str, float]]


class Predictor:
    """A frozen copy of one model version, ready to serve.

    Call it from one thread only, the same thread that built it: on a 2-core machine a second thread
    running torch ops creates a second OpenMP team, libgomp then throttles its spin-waits and every
    forward slows down about 2x for the life of the process (measured).

    ``Predictor(model, version, ...)`` serves the model with torch; :meth:`on_engine` serves any engine
    (a version's int8 artifact) with the same tokenisation and bucketing.
    """

    def __init__(
        self,
        model: TextClassifier,
        version: int,
        *,
        device: str = "auto",
        precision: str = "auto",
        max_seq_len: int = 64,
        bucket_size: int = 16,
        copy_model: bool = True,
    ) -> None:
        engine = TorchEngine(model, device=device, precision=precision, copy_model=copy_model)
        self._setup(engine, version, model.labels, model.base_model, max_seq_len, bucket_size)

    @classmethod
    def on_engine(
        cls,
        engine: Engine,
        version: int,
        labels: list[str],
        base_model: str,
        *,
        max_seq_len: int = 64,
        bucket_size: int = 16,
    ) -> "Predictor":
        """A predictor on any engine (a version's int8 artifact): no torch model is built or kept."""
        predictor = cls.__new__(cls)
        predictor._setup(engine, version, labels, base_model, max_seq_len, bucket_size)
        return predictor

    def _setup(
        self, engine: Engine, version: int, labels: list[str], base_model: str, max_seq_len: int, bucket_size: int
    ) -> None:
        self.engine = engine
        self.version = version
        self.labels = list(labels)
        self.max_seq_len = max_seq_len
        self.bucket_size = bucket_size
        self.tokenizer = load_tokenizer(base_model)

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def warmup_batches(self) -> list[list[str]]:
        """One small batch per bucket shape class: a replica runs them one at a time between live
        batches, so the first real request pays no one-off cost and no live batch waits for all of them."""
        return [["warm up"] * self.bucket_size, ["a longer warm-up text " * 8], ["warm up"]]

    def warmup(self) -> None:
        """Every warm-up batch at once (a replica runs them one by one between live batches instead)."""
        for batch in self.warmup_batches():
            self.probabilities(batch)

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Softmax over the head for each text, in input order, as float32 on the CPU."""
        return self.probabilities_and_embeddings(texts)[0]

    @torch.inference_mode()
    def probabilities_and_embeddings(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the head and the sentence embedding (the head's input) of each text, in input
        order, float32 on the CPU. The embedding comes free with the forward: drift monitoring uses it."""
        with torch_thread_count(self.engine.torch_threads):
            return self._forward(texts)

    def _forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.engine.hidden_size
        if not texts:
            return torch.empty(0, len(self.labels)), torch.empty(0, hidden)
        enc = self.tokenizer(texts, truncation=True, max_length=token_limit(self.tokenizer, self.max_seq_len))
        ids = enc["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out = torch.empty(len(texts), len(self.labels))
        emb = torch.empty(len(texts), hidden)
        pad = self.tokenizer.pad_token_id or 0
        pin = self.engine.pin_memory
        for start in range(0, len(order), self.bucket_size):
            idx = order[start : start + self.bucket_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long, pin_memory=pin)
            mask = torch.zeros((len(idx), width), dtype=torch.long, pin_memory=pin)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            out[idx], emb[idx] = self.engine(input_ids, mask)
        return out, emb

    def predict(self, texts: list[str], top_k: int = 3) -> list[Prediction]:
        return self.predict_with_probabilities(texts, top_k)[0]

    def predict_with_probabilities(
        self, texts: list[str], top_k: int = 3
    ) -> tuple[list[Prediction], torch.Tensor, torch.Tensor]:
        """Predictions plus the full probabilities and embeddings they came from (for monitoring)."""
        probs, emb = self.probabilities_and_embeddings(texts)
        k = min(top_k, len(self.labels))
        scores, rows = probs.topk(k, dim=-1)
        result = []
        for s_row, i_row in zip(scores.tolist(), rows.tolist()):
            top = [(self.labels[i], round(s, 6)) for i, s in zip(i_row, s_row)]
            result.append(Prediction(label=top[0][0], score=top[0][1], top_k=top))
        return result, probs, emb


# --- the one factory: every process builds its predictors here, from its Settings ------------------------
def serves_int8(settings: Settings) -> bool:
    """The engine choice, made once: a version with a checked int8 artifact serves on ONNX Runtime when
    the engine setting resolves to it (``auto`` on CPU); otherwise torch serves it."""
    return resolve_engine(settings.engine, settings.device) == "onnx-int8"


def torch_predictor(
    model: TextClassifier,
    version: int,
    settings: Settings,
    *,
    precision: str | None = None,
    copy_model: bool = True,
) -> Predictor:
    """``model`` on torch with the configured device, precision (unless given) and sequence length."""
    return Predictor(
        model,
        version,
        device=settings.device,
        precision=precision or settings.precision,
        max_seq_len=settings.max_seq_len,
        copy_model=copy_model,
    )


def int8_predictor(path: Path, version: int, labels: list[str], base_model: str, settings: Settings) -> Predictor:
    """A version's int8 artifact on ONNX Runtime (the CPU engine), tokenised like its torch model."""
    engine = OnnxEngine(path, threads=settings.num_threads)
    return Predictor.on_engine(engine, version, labels, base_model, max_seq_len=settings.max_seq_len)


def serving_predictor(model: TextClassifier, version: int, settings: Settings, int8: Path | None) -> Predictor:
    """What a replica would serve ``model`` with: its int8 artifact when it has one and the engine
    setting says so, else torch (the drift reference is built with this, so it matches live traffic)."""
    if int8 is not None and serves_int8(settings):
        return int8_predictor(int8, version, model.labels, model.base_model, settings)
    return torch_predictor(model, version, settings)
