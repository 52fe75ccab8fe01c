"""Measuring a generative version on chats with known answers: the numbers its gate and its benchmark read.

- :func:`answer_nll`: negative log-likelihood of each reference answer given its chat, per answer token,
  teacher-forced (the prompt's tokens are context, never scored);
- :func:`kl_to`: the mean per-token KL divergence of one version's next-token distribution from another's
  along the same references (how far a round moved the model where it was not taught);
- :func:`answers`: greedy answers, batched through the serving path's own decoder.

All run on the calling thread with the host's base (``online.generative.AdapterHost``); no gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from online.generative import AdapterHost, GenerativeLM
from online.generator import Generation, generate, prompt_ids

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Scored:
    nll: float  # summed over the answer's tokens
    tokens: int

    @property
    def per_token(self) -> float:
        return self.nll / max(self.tokens, 1)


def end_of_turn(tokenizer) -> int:
    """The token that ends an assistant turn: ChatML's ``<|im_end|>`` when the vocabulary has it."""
    if "<|im_end|>" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("<|im_end|>")
    return tokenizer.eos_token_id


def encode_pair(tokenizer, chat: Chat, answer: str, max_tokens: int = 512) -> tuple[list[int], int]:
    """(token ids of chat + answer + end of turn, index of the first answer token)."""
    prompt = prompt_ids(tokenizer, chat, max_tokens)
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_of_turn(tokenizer)]
    ids = (prompt + target)[-max_tokens:]
    return ids, max(len(ids) - len(target), 1)


def batches(tokenizer, pairs: Sequence[tuple[Chat, str]], device: torch.device, size: int = 8):
    """Right-padded batches: (input_ids, attention_mask, labels with -100 outside the answers)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(pairs), size):
        encoded = [encode_pair(tokenizer, chat, answer) for chat, answer in pairs[start : start + size]]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), -100, dtype=torch.long)
        for r, (ids, first) in enumerate(encoded):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            labels[r, first : len(ids)] = torch.tensor(ids[first:])
        yield input_ids.to(device), mask.to(device), labels.to(device)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of the next token (0 where the label is -100), shape (batch, width - 1)."""
    shifted, target = logits[:, :-1, :].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1).clamp(min=0), reduction="none"
    ).view(target.shape)
    return nll * (target != -100)


@torch.inference_mode()
def answer_nll(host: AdapterHost, version: GenerativeLM, pairs: Sequence[tuple[Chat, str]]) -> list[Scored]:
    host.activate(version)
    out: list[Scored] = []
    for input_ids, mask, labels in batches(host.tokenizer, pairs, host.device):
        nll = token_nll(host.network(input_ids=input_ids, attention_mask=mask).logits, labels)
        counted = (labels[:, 1:] != -100).sum(-1)
        out += [Scored(float(n), int(c)) for n, c in zip(nll.sum(-1), counted)]
    return out


def mean_nll(scored: Sequence[Scored]) -> float:
    """Per-token NLL over all answers together."""
    return sum(s.nll for s in scored) / max(sum(s.tokens for s in scored), 1)


@torch.inference_mode()
def kl_to(host: AdapterHost, reference: GenerativeLM, candidate: GenerativeLM, pairs: Sequence[tuple[Chat, str]]) -> float:
    """Mean over answer tokens of KL(reference || candidate) of the next-token distributions."""
    total, count = 0.0, 0
    for input_ids, mask, labels in batches(host.tokenizer, pairs, host.device):
        host.activate(reference)
        ref = torch.log_softmax(host.network(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float(), -1)
        host.activate(candidate)
        cand = torch.log_softmax(host.network(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float(), -1)
        where = labels[:, 1:] != -100
        kl = (ref.exp() * (ref - cand)).sum(-1)
        total += float(kl[where].sum())
        count += int(where.sum())
    return total / max(count, 1)


def answers(host: AdapterHost, version: GenerativeLM, chats: Sequence[Chat], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers, 8 chats a batch."""
    out: list[str] = []
    for start in range(0, len(chats), 8):
        batch = [Generation(list(chat), max_new_tokens) for chat in chats[start : start + 8]]
        out += [g.text for g in generate(host, version, batch)]
    return out


def complete_answers(host: AdapterHost, version: GenerativeLM, chats: Sequence[Chat], max_new_tokens: int = 96) -> list[str | None]:
    """Greedy answers that ended by themselves (None where ``max_new_tokens`` cut one off: a reference
    that ends mid-sentence would teach, or score, an end of turn where the model never puts one)."""
    out: list[str | None] = []
    for start in range(0, len(chats), 8):
        batch = [Generation(list(chat), max_new_tokens) for chat in chats[start : start + 8]]
        out += [g.text if g.finish_reason == "stop" and g.text.strip() else None for g in generate(host, version, batch)]
    return out


def user(prompt: str) -> Chat:
    return [{"role": "user", "content": prompt}]
