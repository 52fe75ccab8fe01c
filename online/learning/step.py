"""One continual-learning step: from the live model, new examples and rehearsal, to a candidate.

This is the learning algorithm only, with no Redis, Kafka or registry in it, so the product's rounds
(``online.learning.round``) and the benchmark (``online bench learn``) run exactly the same code. It:

1. copies the live model and grows its head for labels it has never seen (old rows kept);
2. embeds the round's examples once with the live encoder: the live head's logits on them are the
   distillation targets, and the grown head is first fitted on these frozen features (a linear probe,
   LP-FT: Kumar et al. 2022), so new labels start learned and the fine-tuning's first steps do not drag
   the encoder towards a head that knows nothing of them;
3. fine-tunes in one of three modes: ``head`` (frozen encoder, head trained on cached embeddings),
   ``full`` (encoder and head) or ``lora`` (low-rank adapters via peft, merged back afterwards, so a
   candidate is always a plain :class:`TextClassifier` that serves and saves like any other).
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from online.examples import Example
from online.learning.fit import Progress, embeddings, fit, fit_head, label_log_prior
from online.learning.rehearsal import strategy as make_strategy
from online.model import TextClassifier, resolve_device
from online.settings import Settings

Mode = Literal["head", "full", "lora"]
BiasCorrection = Literal["off", "logit-adjust", "head-finetune"]
HeadKind = Literal["sgd", "closed-form"]


@dataclass(frozen=True)
class LearnConfig:
    """How a round trains. The configurable part comes from :class:`Settings` (their defaults are the
    ones `online bench learn` chose, see the README); the rest are fixed choices of the algorithm."""

    mode: Mode
    strategy: str
    rehearsal_ratio: float  # rehearsed examples per new example...
    rehearsal_min: int  # ...but at least this many (small rounds still rehearse every label)
    new_share_min: float  # small rounds repeat their new examples up to this share of the data...
    distill_weight: float
    bias_correction: BiasCorrection
    probe_first: bool  # fit the head on the live encoder's features first (head_epochs at head_lr)
    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    max_seq_len: int
    device: str
    seed: int
    max_repeats: int = 8  # ...at most this many times each
    temperature: float = 2.0
    head_epochs: int = 30
    balance_epochs: int = 10  # head-finetune: epochs on the class-balanced set, at head_lr / 10
    lora_r: int = 16
    lora_alpha: int = 32
    lora_lr: float = 5e-4
    head: HeadKind = "closed-form"  # closed-form: the head solved exactly on accumulated statistics (closed_form.py)
    head_width: int = 4096  # closed-form: width of the random ReLU lift
    encoder_every: int = 4  # closed-form: every this many rounds the encoder is fine-tuned first (0: never)
    exact_probe: bool = True  # closed-form encoder rounds: start from the head solved on the live encoder
    head_balance: Literal["reweight", "logit-adjust"] = "reweight"  # closed-form: how a rare label is helped
    head_adjust_tau: float = 1.5  # closed-form, logit-adjust: the bias is -tau log(label share)
    encoder_fit_min: float = 0.8  # closed-form: a head round fitting less of its new examples tunes the encoder

    @classmethod
    def from_settings(cls, settings: Settings) -> LearnConfig:
        return cls(
            mode=settings.train_mode,
            strategy=settings.rehearsal_strategy,
            rehearsal_ratio=settings.rehearsal_ratio,
            rehearsal_min=settings.rehearsal_min,
            new_share_min=settings.new_share_min,
            distill_weight=settings.distill_weight,
            bias_correction=settings.bias_correction,
            probe_first=settings.probe_first,
            epochs=settings.train_epochs,
            batch_size=settings.train_batch_size,
            lr=settings.learning_rate,
            head_lr=settings.head_learning_rate,
            max_seq_len=settings.max_seq_len,
            device=settings.device,
            seed=settings.seed,
            head=settings.head,
            head_width=settings.head_width,
            encoder_every=settings.encoder_every if settings.train_mode != "head" else 0,
            head_balance=settings.head_balance,
            head_adjust_tau=settings.head_adjust_tau,
            encoder_fit_min=settings.encoder_fit_min,
        )

    @property
    def closed_form(self) -> bool:
        """Whether a round solves its head in closed form (``online.learning.closed_form``)."""
        return self.head == "closed-form"

    @property
    def head_tau(self) -> float:
        """The closed-form head's logit-adjustment strength: ``head_adjust_tau``, 0 without logit adjustment."""
        return self.head_adjust_tau if self.bias_correction == "logit-adjust" else 0.0

    @property
    def distills(self) -> bool:
        """Whether a round distils from the live model (``head`` mode trains the head alone: never)."""
        return self.distill_weight > 0 and self.mode != "head"

    @property
    def probes(self) -> bool:
        """Whether a round fits its head on frozen features first (``head`` mode is nothing else)."""
        return self.probe_first and self.mode != "head"

    def but(self, **changes: object) -> LearnConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class LearnResult:
    model: TextClassifier
    added_labels: list[str]
    examples: int
    mean_loss: float
    duration_s: float
    encoder_tuned: bool = True  # False: a closed-form head round, the live encoder kept as it is
    encoder_s: float = 0.0  # of duration_s, the encoder's fine-tuning (closed-form rounds that tune it)
    head: object | None = None  # closed-form rounds: the solve (online.learning.closed_form.HeadSolve)


def rehearsal_size(n_new: int, cfg: LearnConfig) -> int:
    return max(round(n_new * cfg.rehearsal_ratio), cfg.rehearsal_min) if cfg.rehearsal_ratio > 0 else 0


def new_repeats(n_new: int, n_rehearsal: int, cfg: LearnConfig) -> int:
    """How often a round's new examples appear per epoch: a round of 20 new examples beside 256
    rehearsed ones would otherwise barely move the model towards what it was just taught."""
    if n_new == 0 or cfg.new_share_min <= 0:
        return 1
    wanted = cfg.new_share_min / (1 - cfg.new_share_min) * n_rehearsal
    return max(1, min(cfg.max_repeats, math.ceil(wanted / n_new)))


def select_rehearsal(
    live: TextClassifier,
    pool: Sequence[Example],
    n_new: int,
    cfg: LearnConfig,
    rng: random.Random,
    new: Sequence[Example] = (),
) -> list[Example]:
    """The rehearsal sample for a round with ``n_new`` new examples, by the configured strategy."""
    k = rehearsal_size(n_new, cfg)
    if k == 0 or not pool:
        return []
    chosen = make_strategy(cfg.strategy)
    embed = None
    if chosen.needs_embeddings:
        device = resolve_device(cfg.device)

        def embed(texts: list[str]) -> np.ndarray:
            return embeddings(live, texts, max_seq_len=cfg.max_seq_len, device=device).cpu().numpy()

    return chosen.select(pool, k, rng, embed, new)


def split_holdout(new: Sequence[Example], fraction: float, minimum: int) -> tuple[list[Example], list[Example]]:
    """(train, holdout): a stable ``fraction`` of new examples (by text hash) kept out for the gate.

    Rounds with fewer than ``minimum`` new examples hold nothing out (they would lose too much to learn
    from). Each label keeps at least one training example, so a new intent is always learned."""
    if fraction <= 0 or len(new) < minimum:
        return list(new), []
    train, holdout = [], []
    kept: dict[str, int] = {}
    for ex in sorted(new, key=lambda e: hashlib.sha1(e[0].encode()).hexdigest()):
        bucket = int(hashlib.sha1(f"holdout:{ex[0]}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if bucket < fraction and kept.get(ex[1], 0) > 0:
            holdout.append(ex)
        else:
            train.append(ex)
            kept[ex[1]] = kept.get(ex[1], 0) + 1
    return train, holdout


def learn(
    live: TextClassifier,
    new: Sequence[Example],
    rehearsal: Sequence[Example],
    cfg: LearnConfig,
    progress: Progress | None = None,
) -> LearnResult:
    """Fine-tune a copy of ``live`` on ``new`` + ``rehearsal``; ``live`` itself is never modified.

    ``cfg.bias_correction`` counters the pull of a round towards its own labels (a round brings 100
    examples of a new intent beside a handful of each old one, and the head learns that new intents are
    likelier): ``logit-adjust`` trains against the round's label shares (free), ``head-finetune`` retrains
    the head on a class-balanced subset afterwards (one extra forward over it). Distillation and logit
    adjustment both hold a round's new labels back; the probe (``cfg.probe_first``) is what lets them be
    learned all the same (docs/benchmarks.md)."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    model = copy.deepcopy(live).cpu()
    added = model.grow(sorted({lab for _, lab in new} | {lab for _, lab in rehearsal}))
    repeats = new_repeats(len(new), len(rehearsal), cfg)
    examples = list(new) * repeats + list(rehearsal)
    # The round's label shares over distinct examples: the repeats of a small round's new examples are a
    # deliberate push towards what was just taught, not an imbalance to correct.
    distinct = list(new) + list(rehearsal)
    prior = label_log_prior(model.labels, distinct) if cfg.bias_correction == "logit-adjust" else None
    if cfg.mode == "head":
        result = fit_head(
            model,
            examples,
            epochs=cfg.head_epochs,
            head_lr=cfg.head_lr,
            max_seq_len=cfg.max_seq_len,
            device=device,
            seed=cfg.seed,
            log_prior=prior,
            progress=progress,
        )
    else:
        distill = cfg.distills and bool(live.labels)
        teacher = None
        if distinct and (cfg.probes or distill):
            # One forward of the live encoder over the round's distinct examples serves the probe and
            # the distillation targets alike.
            frozen = embeddings(live, [t for t, _ in distinct], max_seq_len=cfg.max_seq_len, device=device)
            if distill:
                with torch.no_grad():
                    # embeddings() left live on ``device``, beside ``frozen``
                    teacher = live.head(frozen)[_distinct_rows(len(new), repeats, len(rehearsal))].float()
            if cfg.probes:
                fit_head(
                    model,
                    distinct,
                    x=frozen,
                    epochs=cfg.head_epochs,
                    head_lr=cfg.head_lr,
                    device=device,
                    seed=cfg.seed,
                    log_prior=prior,
                )
        lr = cfg.lr
        if cfg.mode == "lora":
            model.encoder = _with_lora(model.encoder, cfg)
            lr = cfg.lora_lr
        result = fit(
            model,
            examples,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=lr,
            head_lr=cfg.head_lr,
            max_seq_len=cfg.max_seq_len,
            device=device,
            seed=cfg.seed,
            teacher_logits=teacher,
            distill_weight=cfg.distill_weight,
            temperature=cfg.temperature,
            log_prior=prior,
            progress=progress,
        )
        if cfg.mode == "lora":
            model.encoder = model.encoder.merge_and_unload()
    if cfg.bias_correction == "head-finetune" and rehearsal:
        balanced = class_balanced(distinct, len(rehearsal), random.Random(cfg.seed))
        fit_head(
            model,
            balanced,
            epochs=cfg.balance_epochs,
            head_lr=cfg.head_lr / 10,
            max_seq_len=cfg.max_seq_len,
            device=device,
            seed=cfg.seed,
        )
    model.cpu().eval()
    return LearnResult(
        model=model,
        added_labels=added,
        examples=len(examples),
        mean_loss=result.mean_loss,
        duration_s=time.perf_counter() - started,
        encoder_tuned=cfg.mode != "head",
    )


def _distinct_rows(n_new: int, repeats: int, n_rehearsal: int) -> torch.Tensor:
    """For each row of a round's examples (``new`` ``repeats`` times, then the rehearsal), its row in
    ``new + rehearsal``."""
    return torch.cat([torch.arange(n_new).repeat(repeats), n_new + torch.arange(n_rehearsal)])


def class_balanced(examples: Sequence[Example], k: int, rng: random.Random) -> list[Example]:
    """About ``k`` of ``examples`` with the same number per label (distinct texts, random within a label)."""
    unique = list(dict.fromkeys(examples))
    groups: dict[str, list[Example]] = {}
    for ex in unique:
        groups.setdefault(ex[1], []).append(ex)
    per_label = max(1, k // max(len(groups), 1))
    return [ex for lab in sorted(groups) for ex in rng.sample(groups[lab], min(per_label, len(groups[lab])))]


def _with_lora(encoder: torch.nn.Module, cfg: LearnConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    # BERT-family names (BERT, RoBERTa, XLM-R, MiniLM); other encoders get peft's per-architecture default
    names = {name.rsplit(".", 1)[-1] for name, _ in encoder.named_modules()}
    targets = [t for t in ("query", "key", "value", "dense") if t in names] or None
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(encoder, config)
