"""The generative forward path: a batch of prompts decoded together, token by token, on one thread.

:func:`generate` runs on a replica's forward thread (the only thread that runs torch there). Every live
row of a decode is kept in one packed sequence (:class:`_Packed`): the first forward carries the prompts,
then each step samples one token per row (greedy at temperature 0, else temperature and top-p, per row)
and feeds it back. A row that ends (an end-of-turn token, its own ``max_new_tokens``, its client gone)
leaves at once and its answer is handed back then (``on_done``), not when the longest row ends.
Streaming clients get each text delta as it is decoded (``on_delta``); a delta never ends inside a
multi-byte character.

Continuous batching: requests that arrive while a decode runs join it between two steps (a
:class:`JoinQueue`), their prompts fed in the next step's forward beside the running rows' tokens,
instead of waiting for the longest row of the batch to end. Under a closed loop of clients a static
batch fragments (the first clients answered come back before the last) and leaves the forward thread
decoding few rows; joining keeps it full.
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
    first_token_s: float | None = None  # from the row's admission to the decode
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

    def answered(self, request: Generation) -> None:
        """``request`` has its answer: nothing of it need be kept for the rest of the decode."""
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
        self._taken: dict[int, Generation] = {}  # taken by the current decode, not yet answered

    def open(self, version: object) -> None:
        with self._lock:
            self._open_for = version
            self._taken = {}

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
            self._taken.update((id(r), r) for r in taken)
            return taken

    def close(self) -> list[Generation]:
        with self._lock:
            self._open_for = None
            taken, self._waiting = self._waiting, []
            self._taken.update((id(r), r) for r in taken)
            return taken

    def answered(self, request: Generation) -> None:
        with self._lock:
            self._taken.pop(id(request), None)

    @property
    def taken(self) -> list[Generation]:
        """What the current decode took and has not answered yet (what fails with it)."""
        with self._lock:
            return list(self._taken.values())


class _Row:
    def __init__(self, request: Generation, ids: list[int], max_new: int) -> None:
        self.request = request
        self.prompt = ids
        self.max_new = max_new
        self.tokens: list[int] = []
        self.sent = ""  # text already streamed
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.length = 0  # positions in the cache so far (the shared opening's included)
        self.shared = False  # attends to the shared opening's columns instead of its own copy


_SHARED, _DEAD = -1, -2  # owners of cache columns that are no row's own: the shared opening, a row gone
_CUT_DEAD = 64  # dead columns are cut (a copy of the whole cache) once more than this and most of it


class _Packed:
    """Every live row of a decode in one sequence: one cache of batch size 1 whose columns belong to rows
    (``owner``) at positions (``pos``), and a mask that lets each token see its own row's earlier columns
    (and the chat template's shared opening, kept once at the start). Why not a padded batch: a request
    that joins a running decode then costs no forward of its own; its prompt's tokens ride in the next
    decode step beside the running rows' one token each, so the weights are read once a step (the cost of
    a forward on a CPU or a small GPU batch), and no row is padded to another's length."""

    def __init__(self, host: AdapterHost, opening: tuple[tuple[int, ...], list] | None) -> None:
        from transformers import DynamicCache

        kinds = set(getattr(host.model.config, "layer_types", None) or ["full_attention"])
        if not kinds <= {"full_attention", "sliding_attention"}:  # a recurrent state would mix rows
            raise ValueError(f"{host.base_model}: layers {sorted(kinds)} cannot be decoded packed (attention only)")
        self.host = host
        self.cache = DynamicCache()  # plain growing layers: rows' columns are indexed, never windowed
        self.opening = opening[0] if opening else ()
        width = len(self.opening)
        for layer, (keys, values) in enumerate(opening[1] if opening else []):
            self.cache.update(keys, values, layer)
        device = host.device
        self.owner = torch.full((width,), _SHARED, dtype=torch.long, device=device)
        self.pos = torch.arange(width, device=device)
        self.live: list[int] = []  # rows with next-token logits, in the order of ``logits``' rows
        self.logits: torch.Tensor | None = None
        self.dtype = host.model.dtype  # the mask's: attention kernels want the queries' own

    def step(self, rows: dict[int, _Row], feed: list[tuple[int, list[int]]]) -> None:
        """One forward: each ``(row, tokens)`` of ``feed`` appended to the sequence (a running row's last
        token, a new row's prompt); afterwards ``live``/``logits`` are those rows' next-token logits."""
        host, device = self.host, self.host.device
        ids, q_owner, q_pos, last = [], [], [], []
        for i, tokens in feed:
            row = rows[i]
            ids += tokens
            q_owner += [i] * len(tokens)
            q_pos += range(row.length, row.length + len(tokens))
            row.length += len(tokens)
            last.append(len(ids) - 1)
        q_owner_t = torch.tensor(q_owner, device=device)
        q_pos_t = torch.tensor(q_pos, device=device)
        shared = torch.tensor([rows[i].shared for i in q_owner], device=device)
        owner, pos = torch.cat([self.owner, q_owner_t]), torch.cat([self.pos, q_pos_t])
        seen = (owner[None, :] == q_owner_t[:, None]) | ((owner[None, :] == _SHARED) & shared[:, None])
        seen &= pos[None, :] <= q_pos_t[:, None]
        mask = torch.zeros(seen.shape, dtype=self.dtype, device=device)
        mask.masked_fill_(~seen, torch.finfo(self.dtype).min)
        keep = torch.tensor(last, device=device)
        kwargs = {"logits_to_keep": keep} if host.last_logits_only else {}
        out = host.network(
            input_ids=torch.tensor([ids], device=device), attention_mask=mask[None, None],
            position_ids=q_pos_t[None], use_cache=True, **{host.cache_arg: self.cache}, **kwargs,
        )  # fmt: skip
        logits = out.logits[0] if kwargs else out.logits[0, keep]
        self.owner, self.pos = owner, pos
        self.live, self.logits = [i for i, _ in feed], logits.float()

    def leave(self, i: int) -> None:
        """Row ``i`` ended: its columns are dead, and cut once they are most of the sequence."""
        self.owner = torch.where(self.owner == i, _DEAD, self.owner)
        dead = int((self.owner == _DEAD).sum())
        if dead > _CUT_DEAD and 2 * dead > len(self.owner):
            kept = (self.owner != _DEAD).nonzero().squeeze(-1)
            for layer in self.cache.layers:  # type: ignore[attr-defined]
                layer.keys, layer.values = layer.keys.index_select(-2, kept), layer.values.index_select(-2, kept)
            self.owner, self.pos = self.owner[kept], self.pos[kept]


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
    limit = _context_limit(host.model.config)
    rows: dict[int, _Row] = {}  # the rows not yet answered, by admission number
    results: list[Generated | None] = [None] * len(requests)  # the batch's own answers (joiners get on_done)
    admitted = 0
    packed = _Packed(host, _opening_kv(host, version))

    def add(new: list[Generation]) -> list[tuple[int, list[int]]]:
        """New rows; those with nothing to decode are answered at once; the others' prompts to feed."""
        nonlocal admitted
        fed = []
        for req in new:
            i, admitted = admitted, admitted + 1
            ids = prompt_ids(tok, req.messages, min(max_prompt_tokens, max(limit - 1, 1)))
            row = rows[i] = _Row(req, ids, max(0, min(req.max_new_tokens, limit - len(ids))))
            if row.max_new == 0 or row.request.cancelled():
                finish(i, "cancelled" if row.request.cancelled() else "length")
                continue
            opening = packed.opening
            row.shared = bool(opening) and len(row.prompt) > len(opening) and tuple(row.prompt[: len(opening)]) == opening
            row.length = len(opening) if row.shared else 0
            fed.append((i, row.prompt[row.length :]))
        return fed

    def finish(i: int, reason: FinishReason) -> None:
        """Row ``i``'s answer to its request; nothing of the row is kept after (a decode that keeps taking
        newcomers may run for hours)."""
        row = rows.pop(i)
        text = tok.decode(row.tokens, skip_special_tokens=True)
        if row.request.on_delta and text.startswith(row.sent) and len(text) > len(row.sent):
            row.request.on_delta(text[len(row.sent) :])  # what a partial character held back
        result = Generated(text, len(row.prompt), len(row.tokens), reason, row.first_token_s, row.tokens)
        if i < len(results):
            results[i] = result
        if row.request.on_done:
            row.request.on_done(result)
        if joiner is not None:
            joiner.answered(row.request)

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

    feed = add(requests[:max_batch])
    waiting += requests[max_batch:]
    while True:
        if feed:
            packed.step(rows, feed)
            feed = []
        else:
            packed.live = []
        if not packed.live:  # the decode ended: serve who is still waiting, then return
            if not closed:
                closed = True
                waiting += joiner.close()  # type: ignore[union-attr]
            if not waiting:
                break
            feed, waiting = add(waiting[:max_batch]), waiting[max_batch:]
            continue
        assert packed.logits is not None
        temps = torch.tensor([rows[i].request.temperature for i in packed.live], device=host.device)
        top_ps = torch.tensor([rows[i].request.top_p for i in packed.live], device=host.device)
        chosen = _sample(packed.logits, temps, top_ps).tolist()
        now = time.perf_counter()
        for i, token in zip(packed.live, chosen):
            row = rows[i]
            if row.first_token_s is None:
                row.first_token_s = now - row.started
            if token in host.eos_ids:
                finish(i, "stop")
                packed.leave(i)
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
                feed.append((i, [token]))
                continue
            packed.leave(i)
        if after_step is not None:
            after_step()
        room = max_batch - len(feed)
        if room > 0 and (joiner is not None or waiting):
            feed += add(joining(room) if joiner is not None else _take(waiting, room))
    return results  # type: ignore[return-value]


def _take(waiting: list[Generation], room: int) -> list[Generation]:
    taken = waiting[:room]
    del waiting[:room]
    return taken


def _context_limit(config) -> int:
    """The longest sequence a row may reach: the model's positions, and a sliding window's width (the
    packed sequence's mask is the whole causal one, so a row stays within the window it was trained on)."""
    limit = getattr(config, "max_position_embeddings", None) or 1 << 30
    window = getattr(config, "sliding_window", None)
    return min(limit, window) if isinstance(window, int) and window > 0 else limit


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
    on the host beside the adapter it was computed with), or None where not worth it."""
    from transformers import DynamicCache

    if host.template_opening is None:
        host.template_opening = template_opening(host.tokenizer)
    ids = host.template_opening
    if len(ids) < _MIN_OPENING:
        return None
    key = (version.adapter_name, ids)
    if key not in host.prefix_kv:
        cache = DynamicCache()
        host.network(
            input_ids=torch.tensor([ids], device=host.device), use_cache=True, **{host.cache_arg: cache},
            **host.last_logits_only,
        )  # fmt: skip
        host.prefix_kv[key] = [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[attr-defined]
    return ids, host.prefix_kv[key]


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
