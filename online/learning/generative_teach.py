"""One LoRA adapter trained from the base on (chat, answer) pairs: a generative round's learning step.

Supervised fine-tuning written against peft (a loop of ~30 lines; TRL's ``SFTTrainer`` would add a
``Trainer``, datasets and accelerate around the same loss for no gain at this size): the loss is the
answer tokens' cross-entropy, the chat being context only. Beside it, with a reference (the parent):

- DPO on preference pairs (a correction of a served generation: the correction preferred to what was
  served): ``-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))``, the
  loss of TRL's ``DPOTrainer`` (sigmoid), written here in ~10 lines for the same reason as above;
- KTO's undesirable term on answers voted down without a correction (no pair to compare with):
  ``1 - sigmoid(beta * (z0 - (log pi(y) - log ref(y))))`` with the reference point ``z0`` taken as 0
  (KTO estimates it from mismatched pairs in the batch; at a few dozen samples a round that estimate is
  noise), so a voted-down answer becomes less likely than the parent made it, with a bounded push. Every round trains a fresh adapter from the
base on everything it should answer (the new corrections, earlier accepted ones, the parent's own answers
to general prompts), so versions never stack adapters and a rollback is exact.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
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


Teacher = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, mask) -> the parent's logits
Preference = tuple[Chat, str, str]  # (chat, the answer preferred, the answer it replaces)


def sequence_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's log-probability of its answer tokens (labels -100 elsewhere)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (target != -100)).sum(-1)


def _cycled(items: list, step: int):
    return items[step % len(items)] if items else None


def teach(
    base_model: str,
    pairs: Sequence[tuple[Chat, str]],
    settings: Settings,
    *,
    keep: Sequence[tuple[Chat, str]] = (),
    teacher: Teacher | None = None,
    preferences: Sequence[Preference] = (),
    undesirable: Sequence[tuple[Chat, str]] = (),
    device: torch.device | str = "cpu",
    base=None,
) -> Taught:
    """Train an adapter on ``pairs`` (cross-entropy on their answers) for ``generate_train_epochs`` passes
    in shuffled batches. With ``keep`` and ``teacher``, each step also takes a batch of ``keep`` chats and
    pulls the adapter's next-token distributions along their answers to the teacher's (KL, weight
    ``generate_distill_weight``): the parent's behaviour on general prompts is rehearsed as whole
    distributions, not only as its greedy words. With ``teacher`` as the reference, each step also takes a
    batch of ``preferences`` (DPO) and of ``undesirable`` answers (KTO), weight
    ``generate_preference_weight``, temperature ``generate_dpo_beta``. ``base``: an already loaded (model,
    tokenizer) to wrap (it is unwrapped again afterwards)."""
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
    size = settings.generate_train_batch
    kept = list(batches(tokenizer, list(keep), device, size=size)) if teacher else []
    prefer = settings.generate_preference_weight if teacher else 0.0
    chosen = list(batches(tokenizer, [(c, w) for c, w, _ in preferences], device, size=size)) if prefer else []
    rejected = list(batches(tokenizer, [(c, lose) for c, _, lose in preferences], device, size=size)) if prefer else []
    bad = list(batches(tokenizer, list(undesirable), device, size=size)) if prefer else []
    beta = settings.generate_dpo_beta

    def margin(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log pi(y) - log ref(y) per row: how much likelier the adapter makes the answer than the parent."""
        with torch.no_grad():
            ref = sequence_logp(teacher(ids, mask), labels)  # type: ignore[misc]
        return sequence_logp(peft(input_ids=ids, attention_mask=mask).logits, labels) - ref
    try:
        for _ in range(settings.generate_train_epochs):
            order = list(pairs)
            rng.shuffle(order)
            for input_ids, mask, labels in batches(tokenizer, order, device, size=settings.generate_train_batch):
                out = peft(input_ids=input_ids, attention_mask=mask, labels=labels)
                loss = out.loss
                if kept:
                    k_ids, k_mask, k_labels = kept[steps % len(kept)]
                    with torch.no_grad():
                        target = torch.log_softmax(teacher(k_ids, k_mask)[:, :-1].float(), -1)
                    student = torch.log_softmax(peft(input_ids=k_ids, attention_mask=k_mask).logits[:, :-1].float(), -1)
                    where = k_labels[:, 1:] != -100
                    kl = (target.exp() * (target - student)).sum(-1)[where].mean()
                    loss = loss + settings.generate_distill_weight * kl
                if chosen:
                    win, lose = _cycled(chosen, steps), _cycled(rejected, steps)
                    dpo = -torch.nn.functional.logsigmoid(beta * (margin(*win) - margin(*lose))).mean()
                    loss = loss + prefer * dpo
                if bad:
                    kto = (1 - torch.sigmoid(-beta * margin(*_cycled(bad, steps)))).mean()
                    loss = loss + prefer * kto
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
                steps += 1
        state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft).items()}
    finally:
        peft.unload()  # the base as it was (its weights were frozen): reusable for the next round
        model.eval()
    adapter = GenerativeLM(base_model, state, config)
    return Taught(adapter, steps, sum(losses) / max(len(losses), 1), time.perf_counter() - started)
