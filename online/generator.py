"""The generative forward path: a batch of prompts decoded together, token by token, on one thread.

:func:`generate` runs on a replica's forward thread (the only thread that runs torch there): the prompts
of a micro-batch are left-padded into one prefill, then each step samples one token per row (greedy at
temperature 0, else temperature and top-p, per row) with the KV cache. A row that ends (an end-of-turn
token, its own ``max_new_tokens``, its client gone) leaves the batch at once, cache rows included, so
the others decode at the width that is left, and its answer is handed back at once (``on_done``), not
when the longest row of its batch ends. Streaming clients get each text delta as it is decoded
(``on_delta``); a delta never ends inside a multi-byte character.

Continuous batching: requests that arrive while a decode runs join it between two steps (a
:class:`JoinQueue`), their prompts prefilled on their own and their KV cache stacked beside the running
rows', instead of waiting for the longest row of the batch to end. Under a closed loop of clients a
static batch fragments (the first clients answered come back before the last) and leaves the forward
thread decoding few rows; joining keeps it full.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

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
    on_failed: Callable[[BaseException], None] | None = None  # the decode it joined failed (serving side)
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


class Joiner(Protocol):
    """Where requests that arrive during a decode wait to join it (continuous batching): the serving side
    accepts them while the decode is open, the decode takes them between two steps."""

    def take(self, room: int) -> list[Generation]:
        """Requests waiting to join, at most ``room``; called on the forward thread between steps."""
        ...

    def close(self) -> list[Generation]:
        """Accept no more; every request still waiting (the decode serves them before it returns)."""
        ...


class JoinQueue:
    """The serving side's :class:`Joiner`: thread-safe, open for one version's decode at a time.

    The event loop offers each new request (:meth:`offer`); it is accepted while a decode of the same
    version runs and fewer than ``capacity`` wait, else it goes the usual way (the micro-batcher's queue,
    which the decode's close makes certain is served next). The forward thread opens the queue before a
    decode, takes from it between steps and closes it before returning, so no accepted request is left
    behind.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._open_for: object | None = None
        self._waiting: list[Generation] = []
        self.taken: list[Generation] = []  # what the current decode took (what fails with it)

    def open(self, version: object) -> None:
        with self._lock:
            self._open_for = version
            self.taken = []

    @property
    def is_open(self) -> bool:
        """A decode runs and takes in newcomers."""
        with self._lock:
            return self._open_for is not None

    def offer(self, version: object, request: Generation) -> bool:
        with self._lock:
            if self._open_for is None or self._open_for is not version or len(self._waiting) >= self.capacity:
                return False
            self._waiting.append(request)
            return True

    def take(self, room: int) -> list[Generation]:
        with self._lock:
            taken, self._waiting = self._waiting[: max(room, 0)], self._waiting[max(room, 0) :]
            self.taken += taken
            return taken

    def close(self) -> list[Generation]:
        with self._lock:
            self._open_for = None
            taken, self._waiting = self._waiting, []
            self.taken += taken
            return taken


class _Row:
    def __init__(self, request: Generation, ids: list[int], max_new: int) -> None:
        self.request = request
        self.prompt = ids
        self.max_new = max_new
        self.tokens: list[int] = []
        self.sent = ""  # text already streamed
        self.started = time.perf_counter()
        self.first_token_s: float | None = None


@dataclass
class _Batch:
    """The rows decoding together: their KV cache and per-row state, row ``r`` of each tensor being
    ``live[r]``. Prompts are left-padded, so every row's next token lands in the same cache column."""

    live: list[int]
    cache: object
    mask: torch.Tensor
    positions: torch.Tensor  # each row's last position, [rows, 1]
    temps: torch.Tensor
    top_ps: torch.Tensor
    logits: torch.Tensor  # each row's next-token logits
    joinable: bool  # a cache of plain growing layers: rows can join it, dead columns can be cut

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)  # type: ignore[attr-defined]
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.temps, self.top_ps = self.temps[index], self.top_ps[index]
        self.live = [self.live[r] for r in keep]
        self.trim()

    def trim(self) -> None:
        """Drop the leading cache columns no live row attends to (padding of rows that left): with rows
        joining and leaving, a decode that never ends would otherwise widen its cache a column a step.
        Positions are explicit per row, so dropping columns changes no row's attention."""
        used = self.mask.any(0).nonzero()
        lead = int(used[0]) if len(used) else self.mask.shape[1]
        if lead == 0 or not self.joinable:
            return
        for layer in self.cache.layers:  # type: ignore[attr-defined]
            layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
        self.mask = self.mask[:, lead:]

    def merge(self, other: "_Batch") -> None:
        """Append ``other``'s rows (a prefill of newly joined prompts): both caches left-padded with
        masked columns to the longer one, then stacked."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):  # type: ignore[attr-defined]
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(other.mask, width, -1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.temps, self.top_ps = torch.cat([self.temps, other.temps]), torch.cat([self.top_ps, other.top_ps])
        self.logits = torch.cat([self.logits, other.logits])
        self.live = self.live + other.live
        self.trim()


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _joinable(cache) -> bool:
    """Rows can join only a cache of plain growing layers (not a sliding window or a static cache)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


@torch.inference_mode()
def generate(
    host: AdapterHost,
    version: GenerativeLM,
    requests: list[Generation],
    max_prompt_tokens: int = 1024,
    joiner: Joiner | None = None,
    max_batch: int = 8,
    join_window_s: float = 5.0,
    after_step: Callable[[], None] | None = None,
    others_waiting: Callable[[], bool] = lambda: True,
) -> list[Generated]:
    """Answer every request of the batch with ``version``; results in request order.

    With a ``joiner``, requests that arrive meanwhile join the decode between two steps, while fewer than
    ``max_batch`` rows decode; once ``join_window_s`` has passed, it stops taking them as soon as
    ``others_waiting()`` says other work waits for the forward thread (a version swap, a canary's batch),
    which so waits a bounded time under steady traffic. Joined requests' answers reach them through
    ``on_done`` only. ``after_step`` runs once after each step's callbacks (the
    serving side hands that step's text to its event loop there, once, instead of once per row).
    """
    started = time.perf_counter()
    host.activate(version)
    tok = host.tokenizer
    limit = getattr(host.model.config, "max_position_embeddings", None) or 1 << 30
    rows: list[_Row] = []
    results: list[Generated | None] = []

    def add(new: list[Generation]) -> list[int]:
        """New rows; those with nothing to decode are answered at once; the indices of the others."""
        first = len(rows)
        for req in new:
            ids = prompt_ids(tok, req.messages, min(max_prompt_tokens, max(limit - 1, 1)))
            rows.append(_Row(req, ids, max(0, min(req.max_new_tokens, limit - len(ids)))))
            results.append(None)
        for i in range(first, len(rows)):
            if rows[i].max_new == 0 or rows[i].request.cancelled():
                finish(i, "cancelled" if rows[i].request.cancelled() else "length")
        return [i for i in range(first, len(rows)) if results[i] is None]

    def finish(i: int, reason: FinishReason) -> None:
        row = rows[i]
        text = tok.decode(row.tokens, skip_special_tokens=True)
        if row.request.on_delta and text.startswith(row.sent) and len(text) > len(row.sent):
            row.request.on_delta(text[len(row.sent) :])  # what a partial character held back
        results[i] = Generated(text, len(row.prompt), len(row.tokens), reason, row.first_token_s, row.tokens)
        if row.request.on_done:
            row.request.on_done(results[i])

    live = add(requests)
    closed = joiner is None
    waiting: list[Generation] = []  # accepted before the joiner closed, not yet admitted

    def joining(room: int) -> list[Generation]:
        nonlocal closed, waiting
        if not closed and time.perf_counter() - started > join_window_s and others_waiting():
            closed = True
            waiting += joiner.close()  # type: ignore[union-attr]
        if not closed:
            waiting += joiner.take(room - len(waiting))  # type: ignore[union-attr]
        taken, waiting = waiting[:room], waiting[room:]
        return taken

    batch = _prefill(host, version, rows, live) if live else None
    while True:
        if batch is None or not batch.live:  # the decode ended: serve who is still waiting, then return
            if not closed:
                closed = True
                waiting += joiner.close()  # type: ignore[union-attr]
            new = add(waiting[:max_batch])
            waiting = waiting[max_batch:]
            if new:
                batch = _prefill(host, version, rows, new)
                continue
            if waiting:
                continue  # all of them already answered (nothing to decode): the next ones
            break
        if joiner is not None and batch.joinable and len(batch.live) < max_batch:
            new = add(joining(max_batch - len(batch.live)))
            if new:
                batch.merge(_prefill(host, version, rows, new))
        chosen = _sample(batch.logits, batch.temps, batch.top_ps).tolist()
        now = time.perf_counter()
        keep: list[int] = []
        for r, i in enumerate(batch.live):
            row, token = rows[i], chosen[r]
            if row.first_token_s is None:
                row.first_token_s = now - row.started
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
        if after_step is not None:
            after_step()
        if not keep:
            batch.live = []
            continue
        step = torch.tensor([[chosen[r]] for r in keep], device=host.device)
        if len(keep) < len(batch.live):  # finished rows leave the batch, their cache rows too
            batch.select(keep)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.live), 1))], dim=-1)
        batch.positions = batch.positions + 1
        out = host.network(
            input_ids=step, attention_mask=batch.mask, position_ids=batch.positions, use_cache=True,
            **{host.cache_arg: batch.cache},
        )  # fmt: skip
        batch.logits = out.logits[:, -1, :].float()
    return results[: len(requests)]  # type: ignore[return-value]


def _prefill(host: AdapterHost, version: GenerativeLM, rows: list[_Row], live: list[int]) -> _Batch:
    """The rows' prompts prefilled: those that open with the chat template's shared opening (the system
    prompt, every request's first ~24 tokens with SmolLM2's template) from its cached KV, the others whole;
    the two groups merged when both exist."""
    opening = _opening_kv(host, version)
    if opening is None:
        return _prefill_rows(host, rows, live)
    ids, kv = opening
    shared = [i for i in live if len(rows[i].prompt) > len(ids) and tuple(rows[i].prompt[: len(ids)]) == ids]
    whole = [i for i in live if i not in set(shared)]
    if not shared:
        return _prefill_rows(host, rows, whole)
    batch = _prefill_rows(host, rows, shared, kv)
    if whole:
        batch.merge(_prefill_rows(host, rows, whole))
    return batch


_MIN_OPENING = 8  # a shorter shared opening (a template-less base's "user: ") is not worth a cache entry


def template_opening(tokenizer) -> tuple[int, ...]:
    """The token ids every one-user-turn prompt of this tokenizer's chat template starts with: the longest
    common start of two renderings that differ only in the user's text."""
    a, b = (
        tokenizer(render(tokenizer, [{"role": "user", "content": text}]), add_special_tokens=False)["input_ids"]
        for text in ("Hi.", "Why is the sky blue?")
    )  # fmt: skip
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return tuple(a[:n])


def _opening_kv(host: AdapterHost, version: GenerativeLM) -> tuple[tuple[int, ...], list] | None:
    """The shared opening's ids and its KV under ``version`` (computed by one forward on first use, kept
    on the host beside the adapter it was computed with), or None where not worth it or not joinable."""
    from transformers import DynamicCache

    if host.template_opening is None:
        host.template_opening = template_opening(host.tokenizer)
    ids = host.template_opening
    if len(ids) < _MIN_OPENING:
        return None
    key = (version.adapter_name, ids)
    if key not in host.prefix_kv:
        cache = DynamicCache(config=host.model.config)
        if not _joinable(cache):
            return None
        host.network(
            input_ids=torch.tensor([ids], device=host.device), use_cache=True, **{host.cache_arg: cache},
            **host.last_logits_only,
        )  # fmt: skip
        host.prefix_kv[key] = [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[attr-defined]
    return ids, host.prefix_kv[key]


def _prefill_rows(host: AdapterHost, rows: list[_Row], live: list[int], opening: list | None = None) -> _Batch:
    """One forward over the rows' left-padded prompts: their cache and first next-token logits. With the
    ``opening``'s KV, only what follows it is computed: the cache starts with the opening's columns (every
    row a view of the same tensors), then each row's padding and the rest of its prompt."""
    from transformers import DynamicCache

    device, tok = host.device, host.tokenizer
    skip = opening[0][0].shape[-2] if opening else 0
    width = max(len(rows[i].prompt) - skip for i in live)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(live), width), pad, dtype=torch.long)
    mask = torch.zeros((len(live), skip + width), dtype=torch.long)
    mask[:, :skip] = 1
    for r, i in enumerate(live):
        ids = rows[i].prompt[skip:]
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        mask[r, skip + width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
    cache = DynamicCache(config=host.model.config)
    for layer, (keys, values) in enumerate(opening or []):
        cache.update(keys.expand(len(live), -1, -1, -1), values.expand(len(live), -1, -1, -1), layer)
    out = host.network(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{host.cache_arg: cache},
        **host.last_logits_only,
    )  # fmt: skip
    return _Batch(
        live=list(live),
        cache=cache,
        mask=mask,
        positions=positions[:, -1:],
        temps=torch.tensor([rows[i].request.temperature for i in live], device=device),
        top_ps=torch.tensor([rows[i].request.top_p for i in live], device=device),
        logits=out.logits[:, -1, :].float(),
        joinable=_joinable(cache),
    )


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
