"""Fine-tuning loops: the optimisation step shared by version 1 and every continual round.

What to train on (new feedback, rehearsal) is decided elsewhere; this module only turns examples into
weight updates, on CUDA with mixed precision when present, on CPU otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from online.examples import Example
from online.model import TextClassifier, load_tokenizer, token_limit

Progress = Callable[[int], None]  # called with the number of examples just trained on


@dataclass
class FitResult:
    examples_seen: int
    mean_loss: float


def configure_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)


def fit(
    model: TextClassifier,
    examples: Sequence[Example],
    *,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 5e-5,
    head_lr: float = 2e-3,
    max_seq_len: int = 64,
    device: torch.device | None = None,
    seed: int = 0,
    train_encoder: bool = True,
    teacher_logits: torch.Tensor | None = None,
    distill_weight: float = 0.0,
    temperature: float = 2.0,
    log_prior: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``model`` in place on ``examples`` (labels must already be in ``model.labels``).

    ``train_encoder``: the encoder's parameters that require grad are trained too (all of them for a
    plain encoder, only the adapters for a LoRA-wrapped one). ``teacher_logits`` (one row per example
    over the first ``teacher_logits.shape[1]`` labels, from the live model) add a distillation term
    ``distill_weight * T^2 * KL(teacher || student)`` at temperature ``T``: the old model's knowledge
    of the old labels is kept while the new ones are learned (Learning without Forgetting).
    ``log_prior`` (one value per label, see :func:`label_log_prior`) is added to the logits in the
    cross-entropy only (logit adjustment, Menon et al. 2021): a label that fills most of the data is not
    learned as the likelier answer, the bias towards a round's new labels that makes old ones forgotten.
    """
    device = device or torch.device("cpu")
    model.to(device).train()
    tokenizer = load_tokenizer(model.base_model)
    index = {lab: i for i, lab in enumerate(model.labels)}
    unknown = {lab for _, lab in examples if lab not in index}
    if unknown:
        raise ValueError(f"labels not in the model's head: {sorted(unknown)[:5]}")
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad] if train_encoder else []
    if not train_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr": head_lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    distill = teacher_logits is not None and distill_weight > 0
    if distill:
        if len(teacher_logits) != len(examples):
            raise ValueError(f"{len(teacher_logits)} teacher rows for {len(examples)} examples")
        teacher_logits = teacher_logits.to(device)
    prior = log_prior.to(device) if log_prior is not None else None
    rng = random.Random(seed)
    torch.manual_seed(seed)  # dropout masks: a round is reproducible from its inputs
    total_loss, steps, seen = 0.0, 0, 0
    for _ in range(epochs):
        for rows in length_bucketed_batches(examples, batch_size, rng):
            enc = tokenizer(
                [examples[i][0] for i in rows],
                padding=True,
                truncation=True,
                max_length=token_limit(tokenizer, max_seq_len),
                return_tensors="pt",
            ).to(device)
            target = torch.tensor([index[examples[i][1]] for i in rows], device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(enc["input_ids"], enc["attention_mask"]).float()
                loss = loss_fn(logits if prior is None else logits + prior, target)
                if distill:
                    old = teacher_logits[rows]
                    student = torch.log_softmax(logits[:, : old.shape[1]] / temperature, dim=-1)
                    teacher = torch.softmax(old / temperature, dim=-1)
                    kl = nn.functional.kl_div(student, teacher, reduction="batchmean")
                    loss = loss + distill_weight * temperature**2 * kl
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item()
            steps += 1
            seen += len(rows)
            if progress:
                progress(len(rows))
    model.eval()
    if not train_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(True)
    return FitResult(examples_seen=seen, mean_loss=total_loss / max(steps, 1))


def fit_head(
    model: TextClassifier,
    examples: Sequence[Example],
    *,
    epochs: int = 30,
    batch_size: int = 64,
    head_lr: float = 2e-3,
    max_seq_len: int = 64,
    device: torch.device | None = None,
    seed: int = 0,
    log_prior: torch.Tensor | None = None,
    progress: Progress | None = None,
    x: torch.Tensor | None = None,
) -> FitResult:
    """Train only the head, on embeddings computed once: the frozen-encoder mode, cheap enough for
    many epochs (one encoder forward per example instead of a forward and backward per epoch).
    ``log_prior``: as in :func:`fit`. ``x``: the examples' embeddings when the caller has them."""
    device = device or torch.device("cpu")
    index = {lab: i for i, lab in enumerate(model.labels)}
    unknown = {lab for _, lab in examples if lab not in index}
    if unknown:
        raise ValueError(f"labels not in the model's head: {sorted(unknown)[:5]}")
    if x is None:
        x = embeddings(model, [t for t, _ in examples], max_seq_len=max_seq_len, device=device)
        if progress:
            progress(len(examples))
    elif len(x) != len(examples):
        raise ValueError(f"{len(x)} embeddings for {len(examples)} examples")
    x = x.to(device)
    y = torch.tensor([index[lab] for _, lab in examples], device=device)
    model.head.to(device).train()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=head_lr, weight_decay=0.01)
    prior = log_prior.to(device) if log_prior is not None else 0.0
    gen = torch.Generator().manual_seed(seed)
    total_loss, steps = 0.0, 0
    for _ in range(epochs):
        for rows in torch.randperm(len(examples), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model.head(x[rows]) + prior, y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            steps += 1
    model.eval()
    return FitResult(examples_seen=len(examples) * epochs, mean_loss=total_loss / max(steps, 1))


def label_log_prior(labels: Sequence[str], examples: Sequence[Example], tau: float = 1.0) -> torch.Tensor:
    """``tau * log(share of examples)`` per label of the head, for logit adjustment. A label absent from
    the examples counts as the rarest present one (it is not pushed down for being missing)."""
    counts = torch.zeros(len(labels))
    index = {lab: i for i, lab in enumerate(labels)}
    for _, lab in examples:
        counts[index[lab]] += 1
    present = counts[counts > 0]
    counts[counts == 0] = present.min() if len(present) else 1.0
    return tau * torch.log(counts / counts.sum())


@torch.no_grad()
def _forward_buckets(
    model: TextClassifier, texts: Sequence[str], fn: Callable, max_seq_len: int, device: torch.device, batch: int
) -> torch.Tensor:
    tokenizer = load_tokenizer(model.base_model)
    model.to(device).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts: list[torch.Tensor] = []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=token_limit(tokenizer, max_seq_len),
            return_tensors="pt",
        )
        enc = enc.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(fn(enc["input_ids"], enc["attention_mask"]).float())
    if not parts:
        return torch.empty(0)
    out = torch.empty(len(texts), parts[0].shape[1], device=device)
    out[torch.tensor(order, device=device)] = torch.cat(parts)
    return out


def logits(
    model: TextClassifier,
    texts: Sequence[str],
    *,
    max_seq_len: int = 64,
    device: torch.device | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """The model's logits for ``texts`` in input order (eval mode, no grad): distillation targets."""
    return _forward_buckets(model, texts, model, max_seq_len, device or torch.device("cpu"), batch)


def embeddings(
    model: TextClassifier,
    texts: Sequence[str],
    *,
    max_seq_len: int = 64,
    device: torch.device | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """Sentence embeddings (the head's input) for ``texts`` in input order (eval mode, no grad)."""
    return _forward_buckets(model, texts, model.embed, max_seq_len, device or torch.device("cpu"), batch)


def length_bucketed_batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Random batches (as indices into ``examples``) of similar-length texts: far less padding than
    fully random batches.

    Shuffle, cut into pools of 50 batches, sort each pool by length, cut batches, shuffle the batches.
    """
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(examples[i][0]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def accuracy(predict: Callable[[list[str]], list[str]], examples: Sequence[Example], batch: int = 128) -> float:
    """Share of ``examples`` whose predicted label is right; ``predict`` maps texts to labels."""
    if not examples:
        return float("nan")
    right = 0
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        right += sum(p == lab for p, (_, lab) in zip(predict([t for t, _ in chunk]), chunk))
    return right / len(examples)
