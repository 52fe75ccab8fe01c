"""One LoRA adapter trained from the base on (chat, answer) pairs: a generative round's learning step.

Supervised fine-tuning written against peft (a loop of ~30 lines; TRL's ``SFTTrainer`` would add a
``Trainer``, datasets and accelerate around the same loss for no gain at this size): the loss is the
answer tokens' cross-entropy, the chat being context only. Every round trains a fresh adapter from the
base on everything it should answer (the new corrections, earlier accepted ones, the parent's own answers
to general prompts), so versions never stack adapters and a rollback is exact.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from online.generative import GenerativeLM, load_base
from online.generative_eval import Chat, batches
from online.settings import Settings


@dataclass(frozen=True)
class Taught:
    model: GenerativeLM
    steps: int
    mean_loss: float
    seconds: float


def lora_config(settings: Settings) -> dict:
    """The adapter's shape, stored in each version's file (JSON: peft's ``LoraConfig`` arguments)."""
    return {
        "r": settings.generate_lora_r,
        "lora_alpha": 2 * settings.generate_lora_r,
        "target_modules": "all-linear",
        "lora_dropout": 0.0,
    }


def teach(
    base_model: str,
    pairs: Sequence[tuple[Chat, str]],
    settings: Settings,
    *,
    device: torch.device | str = "cpu",
    base=None,
) -> Taught:
    """Train an adapter on ``pairs`` for ``generate_train_epochs`` passes in shuffled batches.
    ``base``: an already loaded (model, tokenizer) to wrap (it is unwrapped again afterwards)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    started = time.perf_counter()
    device = torch.device(device)
    model, tokenizer = base if base is not None else load_base(base_model, device, cache_dir=settings.state_dir / "base-cache")
    config = lora_config(settings)
    torch.manual_seed(settings.seed)
    peft = get_peft_model(model, LoraConfig(**config))
    peft.train()
    params = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.generate_learning_rate, weight_decay=0.0)
    rng = random.Random(settings.seed)
    losses: list[float] = []
    steps = 0
    try:
        for _ in range(settings.generate_train_epochs):
            order = list(pairs)
            rng.shuffle(order)
            for input_ids, mask, labels in batches(tokenizer, order, device, size=settings.generate_train_batch):
                out = peft(input_ids=input_ids, attention_mask=mask, labels=labels)
                optimizer.zero_grad()
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                losses.append(float(out.loss.detach()))
                steps += 1
        state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft).items()}
    finally:
        peft.unload()  # the base as it was (its weights were frozen): reusable for the next round
        model.eval()
    adapter = GenerativeLM(base_model, state, config)
    return Taught(adapter, steps, sum(losses) / max(len(losses), 1), time.perf_counter() - started)
