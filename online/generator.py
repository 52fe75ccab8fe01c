"""The generative forward path: a batch of prompts decoded together, token by token, on one thread.

:func:`generate` runs on a replica's forward thread (the only thread that runs torch there): the prompts
of a micro-batch are left-padded into one prefill, then each step samples one token per row (greedy at
temperature 0, else temperature and top-p, per row) with the KV cache. A row that ends (an end-of-turn
token, its own ``max_new_tokens``, its client gone) leaves the batch at once, cache rows included, so
the others decode at the width that is left, and its answer is handed back at once (``on_done``), not
when the longest row of its batch ends. Streaming clients get each text delta as it is decoded
(``on_delta``); a delta never ends inside a multi-byte character.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from online.generative import AdapterHost, GenerativeLM

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class Generation:
    """One request of a batch. ``messages``: a chat (role/content dicts); a bare prompt is one user turn."""

    messages: list[dict[str, str]]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    on_delta: Callable[[str], None] | None = None  # streaming: each new piece of text, on the forward thread
    on_done: Callable[["Generated"], None] | None = None  # the answer as soon as its row ends
    cancelled: Callable[[], bool] = lambda: False  # the client went away: the row leaves the batch


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    first_token_s: float | None = None  # from the batch's start
    token_ids: list[int] = field(default_factory=list, repr=False)


def render(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt text of a chat: the tokenizer's chat template with the assistant's turn opened, or, for
    a base model without one, the turns as plain lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def prompt_ids(tokenizer, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
    """The prompt's token ids, its oldest tokens dropped beyond ``max_tokens``."""
    ids = tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:]


class _Row:
    def __init__(self, request: Generation, ids: list[int], max_new: int) -> None:
        self.request = request
        self.prompt = ids
        self.max_new = max_new
        self.tokens: list[int] = []
        self.sent = ""  # text already streamed
        self.first_token_s: float | None = None


@torch.inference_mode()
def generate(
    host: AdapterHost, version: GenerativeLM, requests: list[Generation], max_prompt_tokens: int = 1024
) -> list[Generated]:
    """Answer every request of the batch with ``version``; results in request order."""
    started = time.perf_counter()
    host.activate(version)
    tok, net = host.tokenizer, host.network
    limit = getattr(host.model.config, "max_position_embeddings", None) or 1 << 30
    rows = []
    for req in requests:
        ids = prompt_ids(tok, req.messages, min(max_prompt_tokens, max(limit - 1, 1)))
        rows.append(_Row(req, ids, max(0, min(req.max_new_tokens, limit - len(ids)))))
    results: list[Generated | None] = [None] * len(rows)
    live = list(range(len(rows)))  # row indices still decoding, in batch order

    def finish(i: int, reason: FinishReason) -> None:
        row = rows[i]
        text = tok.decode(row.tokens, skip_special_tokens=True)
        if row.request.on_delta and text.startswith(row.sent) and len(text) > len(row.sent):
            row.request.on_delta(text[len(row.sent) :])  # what a partial character held back
        results[i] = Generated(text, len(row.prompt), len(row.tokens), reason, row.first_token_s, row.tokens)
        if row.request.on_done:
            row.request.on_done(results[i])

    for i in [i for i in live if rows[i].max_new == 0 or rows[i].request.cancelled()]:
        finish(i, "cancelled" if rows[i].request.cancelled() else "length")
    live = [i for i in live if results[i] is None]
    if not live:
        return results  # type: ignore[return-value]

    device = host.device
    width = max(len(rows[i].prompt) for i in live)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(live), width), pad, dtype=torch.long)
    mask = torch.zeros((len(live), width), dtype=torch.long)
    for r, i in enumerate(live):
        ids = rows[i].prompt
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        mask[r, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    from transformers import DynamicCache

    cache = DynamicCache(config=host.model.config)
    out = net(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{host.cache_arg: cache}
    )
    logits = out.logits[:, -1, :].float()
    positions = positions[:, -1:]
    temps = torch.tensor([rows[i].request.temperature for i in live], device=device)
    top_ps = torch.tensor([rows[i].request.top_p for i in live], device=device)
    while True:
        chosen = _sample(logits, temps, top_ps).tolist()
        now = time.perf_counter() - started
        keep: list[int] = []
        for r, i in enumerate(live):
            row, token = rows[i], chosen[r]
            if row.first_token_s is None:
                row.first_token_s = now
            if token in host.eos_ids:
                finish(i, "stop")
                continue
            row.tokens.append(token)
            if row.request.on_delta:
                text = tok.decode(row.tokens, skip_special_tokens=True)
                if not text.endswith("\ufffd") and text.startswith(row.sent) and len(text) > len(row.sent):
                    row.request.on_delta(text[len(row.sent) :])
                    row.sent = text
            if len(row.tokens) >= row.max_new:
                finish(i, "length")
            elif row.request.cancelled():
                finish(i, "cancelled")
            else:
                keep.append(r)
        if not keep:
            break
        step = torch.tensor([[chosen[r]] for r in keep], device=device)
        if len(keep) < len(live):  # finished rows leave the batch, their cache rows too
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, positions, temps, top_ps = mask[index], positions[index], temps[index], top_ps[index]
            live = [live[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
        positions = positions + 1
        out = net(
            input_ids=step, attention_mask=mask, position_ids=positions, use_cache=True, **{host.cache_arg: cache}
        )
        logits = out.logits[:, -1, :].float()
    return results  # type: ignore[return-value]


def _sample(logits: torch.Tensor, temps: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """One token per row: the most likely at temperature 0, else a draw from the temperature-scaled
    distribution cut to its top-p nucleus."""
    greedy = logits.argmax(-1)
    if not bool((temps > 0).any()):
        return greedy
    probs = torch.softmax(logits / temps.clamp(min=1e-5).unsqueeze(-1), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_ps.unsqueeze(-1)  # the most likely token always stays
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    drawn = order.gather(-1, torch.multinomial(sorted_probs, 1)).squeeze(-1)
    return torch.where(temps > 0, drawn, greedy)
