"""The serving path: one immutable, warmed-up predictor per model version.

A :class:`Predictor` is built once per version (in the background during a hot swap) and never mutated,
so a request that started on it finishes on it. Speed on CPU comes from three measured levers: batching
(done by the caller), less padding (texts sorted by token length and padded per bucket) and a bf16 copy
of the weights where the CPU has native bf16 (AVX512-BF16/AMX); on CUDA, autocast to bf16 or fp16.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from online.model import TextClassifier, load_tokenizer, resolve_device, token_limit

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    top_k: list[tuple[str, float]]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware runs it natively, else fp32 (fp16 on CUDA without bf16)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


class Predictor:
    """A frozen copy of one model version, ready to serve.

    Call it from one thread only, the same thread that built it: on a 2-core machine a second thread
    running torch ops creates a second OpenMP team, libgomp then throttles its spin-waits and every
    forward slows down about 2x for the life of the process (measured).
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
        self.version = version
        self.labels = list(model.labels)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_seq_len = max_seq_len
        self.bucket_size = bucket_size
        self.tokenizer = load_tokenizer(model.base_model)
        served = (copy.deepcopy(model) if copy_model else model).eval().to(self.device)
        self._autocast = self.device.type == "cuda" and self.precision != "fp32"
        if not self._autocast:
            served = served.to(_DTYPES[self.precision])
        for p in served.parameters():
            p.requires_grad_(False)
        self.model = served

    def warmup(self) -> None:
        """One forward per bucket shape class, so the first real request pays no one-off costs."""
        self.probabilities(["warm up"] * self.bucket_size + ["a longer warm-up text " * 8])

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Softmax over the head for each text, in input order, as float32 on the CPU."""
        return self.probabilities_and_embeddings(texts)[0]

    @torch.inference_mode()
    def probabilities_and_embeddings(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the head and the sentence embedding (the head's input) of each text, in input
        order, float32 on the CPU. The embedding comes free with the forward: drift monitoring uses it."""
        if not texts:
            return torch.empty(0, len(self.labels)), torch.empty(0, self.model.head.in_features)
        enc = self.tokenizer(texts, truncation=True, max_length=token_limit(self.tokenizer, self.max_seq_len))
        ids = enc["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out = torch.empty(len(texts), len(self.labels))
        emb = torch.empty(len(texts), self.model.head.in_features)
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.bucket_size):
            idx = order[start : start + self.bucket_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            with torch.autocast(self.device.type, dtype=_DTYPES[self.precision], enabled=self._autocast):
                pooled = self.model.embed(input_ids, mask)
                logits = self.model.head(pooled)
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu()
            emb[idx] = pooled.float().cpu()
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
