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

from online.data import Example
from online.model import TextClassifier, load_tokenizer

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
    progress: Progress | None = None,
) -> FitResult:
    """Train ``model`` in place on ``examples`` (labels must already be in ``model.labels``)."""
    device = device or torch.device("cpu")
    model.to(device).train()
    tokenizer = load_tokenizer(model.base_model)
    index = {lab: i for i, lab in enumerate(model.labels)}
    unknown = {lab for _, lab in examples if lab not in index}
    if unknown:
        raise ValueError(f"labels not in the model's head: {sorted(unknown)[:5]}")
    for p in model.encoder.parameters():
        p.requires_grad_(train_encoder)
    groups = [{"params": model.head.parameters(), "lr": head_lr}]
    if train_encoder:
        groups.append({"params": model.encoder.parameters(), "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    rng = random.Random(seed)
    total_loss, steps, seen = 0.0, 0, 0
    for _ in range(epochs):
        for batch in length_bucketed_batches(examples, batch_size, rng):
            enc = tokenizer(
                [t for t, _ in batch], padding=True, truncation=True, max_length=max_seq_len, return_tensors="pt"
            ).to(device)
            target = torch.tensor([index[lab] for _, lab in batch], device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(enc["input_ids"], enc["attention_mask"])
                loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item()
            steps += 1
            seen += len(batch)
            if progress:
                progress(len(batch))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return FitResult(examples_seen=seen, mean_loss=total_loss / max(steps, 1))


def length_bucketed_batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Random batches of similar-length texts: far less padding than fully random batches.

    Shuffle, cut into pools of 50 batches, sort each pool by length, cut batches, shuffle the batches.
    """
    order = list(examples)
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda ex: len(ex[0]))
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
