"""Prompt and answer drift of a generating replica (``ONLINE_TASK=generate``).

The classifier compares its traffic with the version's training data; a generative base model has no
training data of this deployment to compare with. So the reference is the deployment's own first
prompts: the first ``2 x ONLINE_DRIFT_WINDOW`` prompts a replica serves become the baseline, shared
through Redis (the first replica to fill one writes it; the others take it), and every later window of
prompts is compared with it by the classifier's tests (``online.monitoring.drift.window_signals``: the
share of prompts far from every baseline prompt, the MMD two-sample test, the out-of-scope rate), on
sentence embeddings of the prompts (the deployment's encoder, ``ONLINE_BASE_MODEL``: all-MiniLM-L6-v2 by
default). Beside them, what the model answers: the mean answer length against the baseline's (a
version that rambles or goes terse) and the share of answers cut by ``max_new_tokens``.

Embedding runs on the forward thread (the only torch thread), once per decode for its prompts (a few
milliseconds of a 6-layer encoder against seconds of decoding); the window arithmetic and the writes to
Redis run on the replica's side-effect thread, so monitoring never delays an answer and never stops one.
"""

from __future__ import annotations

import io
import logging
import math
import time

import numpy as np
import redis
import torch

from online.keys import Keys
from online.monitoring.drift import Thresholds, window_signals
from online.monitoring.drift_log import DriftLog
from online.reference import Reference, unit_rows
from online.serving.breaker import Breaker
from online.serving.drift_window import publish_window
from online.serving.metrics import ApiMetrics
from online.settings import Settings

log = logging.getLogger("online.serving.prompt_drift")

SHARED_BASELINE_POLL_S = 5.0  # while collecting its own baseline, a replica looks for a shared one this often
ANSWER_LENGTH_MAX_RATIO = 1.5  # mean answer length this many times the baseline's (or 1/that): alert


class PromptEncoder:
    """Sentence embeddings of prompts with the deployment's encoder, on the forward thread (loaded with the
    replica's first version, off the request path)."""

    def __init__(self, base_model: str, max_seq_len: int, device: torch.device) -> None:
        self.base_model = base_model
        self.max_seq_len = max_seq_len
        self.device = device
        self._model = None
        self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        from transformers import AutoTokenizer

        from online.model import TextClassifier

        self._model = TextClassifier.from_base(self.base_model, ["prompt"]).to(self.device).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(self.base_model)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self.load()
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_len, return_tensors="pt"
        ).to(self.device)
        return self._model.embed(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()


class PromptDrift:
    """The windows of one replica: collects the baseline, then compares each window with it."""

    def __init__(
        self, settings: Settings, drift_log: DriftLog, client: redis.Redis, keys: Keys, metrics: ApiMetrics,
        breaker: Breaker, replica: str,
    ) -> None:  # fmt: skip
        self.s = settings
        self.drift_log = drift_log
        self.r = client
        self.key = keys.drift_generate_baseline
        self.metrics = metrics
        self.breaker = breaker
        self.replica = replica
        self.thresholds = Thresholds.from_settings(settings)
        self.window = settings.drift_window
        self.reference: Reference | None = None
        self.baseline_tokens: float | None = None
        self._shared_due = 0.0  # when to look for a baseline another replica set
        self._base_emb: list[np.ndarray] = []
        self._base_tokens: list[int] = []
        self._emb: list[np.ndarray] = []
        self._tokens: list[int] = []
        self._cut: list[bool] = []
        self.version: int | None = None
        self.latest: dict | None = None
        self.alert_since: dict[str, float] = {}

    # --- on the side-effect thread ------------------------------------------------------------
    def observe(self, version: int, emb: np.ndarray, tokens: list[int], cut: list[bool]) -> None:
        """One decode's prompts (embeddings) and answers (their lengths, whether ``max_new_tokens`` cut them).
        A decode's prompts are split where the baseline or a window fills, so each holds exactly its size
        (a decode that others joined answers several at once)."""
        if version != self.version:
            self.version = version  # a new window for a new version (the baseline is the deployment's)
            self._emb, self._tokens, self._cut = [], [], []
        if self.reference is None:
            need = 2 * self.window - len(self._base_tokens)
            self._collect(emb[:need], tokens[:need])
            if self.reference is None:
                return
            emb, tokens, cut = emb[need:], tokens[need:], cut[need:]
        while tokens:
            room = self.window - len(self._tokens)
            self._emb.append(emb[:room])
            self._tokens += tokens[:room]
            self._cut += cut[:room]
            emb, tokens, cut = emb[room:], tokens[room:], cut[room:]
            if len(self._tokens) >= self.window:
                self._close()

    def _collect(self, emb: np.ndarray, tokens: list[int]) -> None:
        if time.monotonic() >= self._shared_due:  # another replica's baseline: looked for now and then
            self._shared_due = time.monotonic() + SHARED_BASELINE_POLL_S
            shared = self._read_shared()
            if shared is not None:
                self._use(*shared)
                return
        self._base_emb.append(emb)
        self._base_tokens += tokens
        if len(self._base_tokens) < 2 * self.window:
            return
        base = np.concatenate(self._base_emb)
        mean_tokens = float(np.mean(self._base_tokens))
        self._base_emb, self._base_tokens = [], []
        buf = io.BytesIO()
        np.savez(buf, emb=base.astype(np.float32), tokens=np.array([mean_tokens]))
        try:
            if not self.r.set(self.key, buf.getvalue(), nx=True):
                shared = self._read_shared()  # another replica filled its baseline first: the same for all
                if shared is not None:
                    base, mean_tokens = shared
        except redis.RedisError as exc:
            self.breaker.failed(exc)
        self._use(base, mean_tokens)
        log.info("prompt drift: baseline of %d prompts set (answers %.1f tokens on average)", len(base), mean_tokens)

    def _read_shared(self) -> tuple[np.ndarray, float] | None:
        if not self.breaker.allow():
            return None
        try:
            raw = self.r.get(self.key)
        except redis.RedisError as exc:
            self.breaker.failed(exc)
            return None
        if raw is None:
            return None
        data = np.load(io.BytesIO(raw))
        return data["emb"], float(data["tokens"][0])

    def _use(self, base: np.ndarray, mean_tokens: float) -> None:
        half = len(base) // 2
        self.reference = Reference.build(
            base[:half], base[half:], np.zeros(len(base) - half, dtype=np.int64), 1, self.window, seed=self.s.seed,
            bootstrap=True,
        )
        self.baseline_tokens = max(mean_tokens, 1e-6)

    def _close(self) -> None:
        assert self.reference is not None and self.baseline_tokens is not None
        emb = np.concatenate(self._emb)
        tokens, cut = np.array(self._tokens, dtype=np.float64), np.array(self._cut, dtype=bool)
        self._emb, self._tokens, self._cut = [], [], []
        dist = 1.0 - (unit_rows(emb) @ self.reference.train.T).max(axis=1)
        signals = window_signals(
            self.reference, emb, dist, np.ones(len(emb)), np.zeros(len(emb), dtype=np.int64), self.thresholds
        )
        signals.pop("js_p", None)  # no labels: no prediction shift
        ratio = float(tokens.mean()) / self.baseline_tokens
        limit = math.log(ANSWER_LENGTH_MAX_RATIO)
        signals["answer_length_ratio"] = {
            "value": ratio, "threshold": ANSWER_LENGTH_MAX_RATIO, "alert": abs(math.log(max(ratio, 1e-6))) > limit,
            "kind": "answer", "higher_is_worse": True, "baseline_tokens": self.baseline_tokens,
        }  # fmt: skip
        signals["cut_rate"] = {
            "value": float(cut.mean()), "threshold": None, "alert": False, "kind": "answer", "higher_is_worse": True,
        }  # fmt: skip
        now = time.time()
        self.latest = {
            "at": now, "replica": self.replica, "version": self.version, "size": len(tokens), "signals": signals,
            "label_counts": {},
        }  # fmt: skip
        publish_window(self.latest, self.alert_since, self.metrics, self.drift_log, self.breaker)
