"""The serving path: one immutable, warmed-up predictor per model version.

A :class:`Predictor` is built once per version (in the background during a hot swap) and never mutated,
so a request that started on it finishes on it. Speed on CPU comes from measured levers: batching (done
by the caller), less padding (texts sorted by token length and padded per bucket) and the engine
(``online.engines``: int8 weights under ONNX Runtime by default on CPU, torch in bf16 where the
CPU has native bf16, autocast to bf16 or fp16 on CUDA).

A closed-form head round changes the head and keeps the encoder, so the judges of a candidate (the gate,
the int8 check, the drift reference) may reuse the sentence embeddings the live encoder already gave for
the same texts (``reuse=True``; :class:`EmbeddingStore`): only the head runs again, in fp32 as the
engines run a lifted head. Serving predictors never reuse (a replica's traffic is not worth keeping).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from online.engines import Engine, OnnxEngine, TorchEngine, cpu_threads, resolve_engine, torch_thread_count
from online.model import LiftedHead, TextClassifier, encoder_fingerprint, load_tokenizer, token_limit
from online.settings import Settings


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    top_k: list[tuple[str, float]]


class EmbeddingStore:
    """Sentence embeddings by text, per (encoder fingerprint, engine, sequence length): the latest
    ``keys`` of them (a trainer's live encoder under the gate's, the int8 check's and the reference's
    engines), so a closed-form head round runs its checks with the encoder's forward done once."""

    def __init__(self, keys: int = 6) -> None:
        self.keys = keys
        self._maps: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def table(self, key: tuple) -> dict[str, torch.Tensor]:
        with self._lock:
            table = self._maps.pop(key, None)
            self._maps[key] = table if table is not None else {}
            while len(self._maps) > self.keys:
                self._maps.popitem(last=False)
            return self._maps[key]

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(t.numel() * t.element_size() for m in self._maps.values() for t in m.values())


EMBEDDINGS = EmbeddingStore()
# Characters a kept token spans at most, as far as cutting a text before tokenizing is concerned: a
# WordPiece/BPE piece is a few characters and a word past the tokenizer's word limit is one unknown
# token, so max_seq_len tokens never reach past max_seq_len * 32 characters of ordinary text (only text
# padded with long runs of whitespace could; its tail is then cut, as truncation would have).
CHARS_PER_TOKEN = 32


# Lanes tokenise from two threads, and predictors built on one thread share a cached tokenizer (one Rust
# object, which a change of its truncation would write to): one caller at a time, for ~0.3 ms a batch.
_TOKENIZING = threading.Lock()


class Predictor:
    """A frozen copy of one model version, ready to serve.

    On the torch engine call it from one thread only, the same thread that built it: on a 2-core machine
    a second thread running torch ops creates a second OpenMP team, libgomp then throttles its spin-waits
    and every forward slows down about 2x for the life of the process (measured). An engine with
    ``lanes`` > 1 (int8 on ONNX Runtime, torch only for one-thread bookkeeping) may be called from that
    many threads at once.

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
        reuse: bool = False,
    ) -> None:
        engine = TorchEngine(model, device=device, precision=precision, copy_model=copy_model)
        self._setup(engine, version, model.labels, model.base_model, max_seq_len, bucket_size)
        if reuse:
            self.reuse_embeddings(model)

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
        self.lanes = engine.lanes  # batches it may run at once
        self._reuse: tuple[dict[str, torch.Tensor], torch.nn.Module] | None = None

    def reuse_embeddings(self, model: TextClassifier) -> None:
        """Reuse the embeddings :data:`EMBEDDINGS` holds for ``model``'s encoder under this engine, the
        probabilities computed by an fp32 copy of ``model``'s head: only for a lifted head (a linear one
        is left to the engine, unchanged). The engine must run ``model``'s encoder and serve its head in
        fp32 (the torch engine does for a lifted head, and so does its int8 artifact)."""
        if not isinstance(model.head, LiftedHead):
            return
        key = (encoder_fingerprint(model), self.engine.name, self.max_seq_len)
        self._reuse = (EMBEDDINGS.table(key), copy.deepcopy(model.head).float().cpu().eval())

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

    def probabilities(self, texts: list[str], reuse: bool = True) -> torch.Tensor:
        """Softmax over the head for each text, in input order, as float32 on the CPU."""
        return self.probabilities_and_embeddings(texts, reuse)[0]

    @torch.inference_mode()
    def probabilities_and_embeddings(self, texts: list[str], reuse: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the head and the sentence embedding (the head's input) of each text, in input
        order, float32 on the CPU. The embedding comes free with the forward: drift monitoring uses it.
        ``reuse=False``: the engine's forward even where embeddings are reused (the gate's latency)."""
        with torch_thread_count(self.engine.torch_threads):
            if self._reuse is None or not reuse:
                return self._forward(texts)
            return self._reused(texts)

    def _reused(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        table, head = self._reuse  # type: ignore[misc]
        missing = [t for t in dict.fromkeys(texts) if t not in table]
        if missing:
            _, emb = self._forward(missing)
            table.update(zip(missing, emb))
        emb = torch.stack([table[t] for t in texts]) if texts else torch.empty(0, self.engine.hidden_size)
        return torch.softmax(head(emb).float(), dim=-1), emb

    def _forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.engine.hidden_size
        if not texts:
            return torch.empty(0, len(self.labels)), torch.empty(0, hidden)
        # a fast tokenizer tokenizes all of a text before it truncates (a 10,000-character correction, on
        # the forward thread: issue 31's long-texts row), so cut first, past what the kept tokens span
        cut = self.max_seq_len * CHARS_PER_TOKEN
        texts = [t if len(t) <= cut else t[:cut] for t in texts]
        with _TOKENIZING:
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
    reuse: bool = False,
) -> Predictor:
    """``model`` on torch with the configured device, precision (unless given) and sequence length."""
    return Predictor(
        model,
        version,
        device=settings.device,
        precision=precision or settings.precision,
        max_seq_len=settings.max_seq_len,
        copy_model=copy_model,
        reuse=reuse,
    )


def int8_predictor(
    path: Path,
    version: int,
    labels: list[str],
    base_model: str,
    settings: Settings,
    reuse: TextClassifier | None = None,
    lanes: int = 1,
) -> Predictor:
    """A version's int8 artifact on ONNX Runtime (the CPU engine), tokenised like its torch model.
    ``reuse``: the torch model the artifact was built from, whose encoder's embeddings may be reused.
    ``lanes``: batches it may run at once (a serving replica's, :func:`forward_lanes`)."""
    engine = OnnxEngine(path, threads=settings.num_threads, lanes=lanes)
    predictor = Predictor.on_engine(engine, version, labels, base_model, max_seq_len=settings.max_seq_len)
    if reuse is not None:
        predictor.reuse_embeddings(reuse)
    return predictor


def forward_lanes(settings: Settings) -> int:
    """Batches a replica runs at once (``ONLINE_FORWARD_LANES``; 0: 2 on 2+ cores): only on the int8
    engine; torch runs one."""
    if not serves_int8(settings):
        return 1
    if settings.forward_lanes:
        return settings.forward_lanes
    return 2 if cpu_threads(settings.num_threads) >= 2 else 1


def serving_predictor(
    model: TextClassifier, version: int, settings: Settings, int8: Path | None, reuse: bool = False
) -> Predictor:
    """What a replica would serve ``model`` with: its int8 artifact when it has one and the engine
    setting says so, else torch (the drift reference is built with this, so it matches live traffic)."""
    if int8 is not None and serves_int8(settings):
        return int8_predictor(int8, version, model.labels, model.base_model, settings, model if reuse else None)
    return torch_predictor(model, version, settings, reuse=reuse)
