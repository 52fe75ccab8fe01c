"""`online bench serve --task generate`: the generation API against the raw in-process ``generate`` of the
same run, on the real SmolLM2-135M-Instruct (or ``ONLINE_GENERATE_BASE_MODEL``).

(a) raw: :func:`online.generator.generate` called in this process on the served version, ``c`` prompts a
batch (what ``c`` clients waiting on each other would make at best);
(b) api: ``online serve --task generate`` in a child process, ``c`` clients in a closed loop, each streaming
``POST /v1/chat/completions`` (OpenAI's server-sent events), so the time to first token is the client's
own: from sending the request to the first chunk with text.

The same prompts (the golden and rehearsal prompts of ``online.generative_prompts``), greedy, the same
``max_new_tokens``. For each concurrency both cells are measured in two halves, interleaved (raw, API,
raw, API), so machine noise hits both alike. Reported: tokens/s (completion tokens over wall time),
time to first token p50/p99, whole-request p50, and the ratio API/raw (goal: >= 0.9x tokens/s).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import httpx
from rich.table import Table

from bench.common import bench_environment, cpu_seconds, listening_pid, percentile
from bench.report import BenchConsole
from online.generative import AdapterHost, GenerativeLM
from online.generative_eval import user
from online.generative_prompts import GOLDEN, REHEARSAL
from online.generator import Generation, generate
from online.learning.generative_version_one import release_base
from online.model import resolve_device
from online.settings import Settings
from online.wiring.stores import Stores
from services.supervisor import api_process


@dataclass
class GenCell:
    """One cell's measurements: every request's completion tokens, first-token and whole latencies."""

    seconds: float = 0.0
    tokens: int = 0
    first_token: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    client_cpu: float | None = None
    server_cpu: float | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def add(self, other: "GenCell") -> "GenCell":
        def both(a: float | None, b: float | None) -> float | None:
            return None if a is None and b is None else (a or 0.0) + (b or 0.0)

        return GenCell(
            self.seconds + other.seconds,
            self.tokens + other.tokens,
            self.first_token + other.first_token,
            self.latencies + other.latencies,
            self.errors + other.errors,
            both(self.client_cpu, other.client_cpu),
            both(self.server_cpu, other.server_cpu),
        )


def prompts() -> list[str]:
    """The product's general prompts: short everyday questions, answered in a sentence or a few."""
    return GOLDEN + REHEARSAL


def raw_cell(
    host: AdapterHost, model: GenerativeLM, texts: list[str], requests: int, concurrency: int, max_new: int,
    max_prompt_tokens: int, offset: int = 0,
) -> GenCell:  # fmt: skip
    """``requests`` prompts, ``concurrency`` a batch, each batch decoded to its end before the next."""
    cell = GenCell()
    for start in range(0, requests, concurrency):
        done: list[float] = []
        t0 = time.perf_counter()
        batch = [
            Generation(
                user(texts[(offset + start + j) % len(texts)]), max_new,
                on_done=lambda g: done.append(time.perf_counter() - t0),
            )  # fmt: skip
            for j in range(min(concurrency, requests - start))
        ]
        results = generate(host, model, batch, max_prompt_tokens)
        cell.seconds += time.perf_counter() - t0
        cell.tokens += sum(r.completion_tokens for r in results)
        cell.first_token += [r.first_token_s or 0.0 for r in results]
        cell.latencies += done
    return cell


async def _api_cell_async(
    url: str, texts: list[str], requests: int, concurrency: int, max_new: int, offset: int, pid: int | None
) -> GenCell:
    cell = GenCell()
    issued = 0

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        body = {"messages": user(prompt), "max_tokens": max_new, "temperature": 0, "stream": True}
        t0 = time.perf_counter()
        first = None
        tokens = None
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                cell.errors += 1
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        if tokens is None:
            cell.errors += 1
            return
        cell.tokens += tokens
        cell.latencies.append(time.perf_counter() - t0)
        cell.first_token.append(first if first is not None else cell.latencies[-1])

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests:
            i = issued
            issued += 1
            try:
                await one(client, texts[(offset + i) % len(texts)])
            except httpx.HTTPError:
                cell.errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await one(client, texts[0])  # warm: the first request of a connection pool
        cell.tokens, cell.latencies, cell.first_token = 0, [], []
        server0, client0 = cpu_seconds(pid), time.process_time()  # CPU over the measured part only
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        cell.seconds = time.perf_counter() - started
        server1 = cpu_seconds(pid)
        cell.client_cpu = time.process_time() - client0
        cell.server_cpu = None if server0 is None or server1 is None else server1 - server0
    return cell


def api_cell(url: str, texts: list[str], requests: int, concurrency: int, max_new: int, offset: int = 0) -> GenCell:
    return asyncio.run(_api_cell_async(url, texts, requests, concurrency, max_new, offset, listening_pid(url)))


def cell_requests(concurrency: int) -> int:
    """Requests a cell by default: 12 a client (at least 48). A closed loop's last requests decode with
    fewer and fewer rows (the clients whose requests ran out are gone); with a few requests a client that
    drain is a large share of the cell and measures the harness, not the server."""
    return max(48, 12 * concurrency)


def run_bench_serve_generate(
    settings: Settings, requests: int | None, levels: list[int], max_new: int, console: BenchConsole
) -> None:
    texts = prompts()
    with bench_environment(settings.model_copy(update={"task": "generate"})) as env:
        stores = Stores.from_settings(env)
        v1 = release_base(env, stores.registry)
        model, _ = stores.registry.load(v1.version)
        assert isinstance(model, GenerativeLM)
        device = resolve_device(env.device)
        host = AdapterHost(model.base_model, device, cache_dir=env.state_dir / "base-cache")
        host.load(model)
        max_prompt = env.generate_max_prompt_tokens
        generate(host, model, [Generation(user("Hello"), 4)], max_prompt)  # warm
        console.print(
            f"base {model.base_model} on {device}; {requests or 'max(48, 12 x concurrency)'} requests a cell,"
            f" {max_new} new tokens at most, greedy;"
            f" {os.cpu_count()} cores"
        )
        with api_process(env) as url:
            engine = httpx.get(f"{url}/readyz", timeout=10).json().get("engine") or "?"
            for c in levels:
                half = max(c, ((requests or cell_requests(c)) // 2) // c * c)
                raw, api, joined = GenCell(), GenCell(), 0
                for part in range(2):  # raw, API, raw, API: machine noise hits both alike
                    raw = raw.add(raw_cell(host, model, texts, half, c, max_new, max_prompt, offset=part * half))
                    before = _joined(url)
                    piece = api_cell(url, texts, half, c, max_new, offset=part * half)
                    joined += _joined(url) - before
                    api = api.add(piece)
                for server, cell, eng, join in (("api", api, engine, joined), ("raw", raw, engine, None)):
                    console.row(
                        table="load", server=server, engine=eng, concurrency=c, requests=cell.requests,
                        tokens=cell.tokens, tokens_per_s=cell.tokens_per_s,
                        ttft_p50_ms=1e3 * percentile(cell.first_token, 0.5), ttft_p99_ms=1e3 * percentile(cell.first_token, 0.99),
                        latency_p50_ms=1e3 * percentile(cell.latencies, 0.5), errors=cell.errors, joined=join,
                        client_cpu=None if cell.client_cpu is None else cell.client_cpu / (cell.seconds * (os.cpu_count() or 1)),
                        server_cpu=None if cell.server_cpu is None else cell.server_cpu / (cell.seconds * (os.cpu_count() or 1)),
                    )  # fmt: skip
    _report(console, max_new)


def _joined(url: str) -> int:
    """Generations that joined a running decode so far (the API's metric)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("online_generate_joined_total "):
            return int(float(line.split()[-1]))
    return 0


def _report(console: BenchConsole, max_new: int) -> None:
    rows = [r for r in console.rows if r["table"] == "load"]
    table = Table(title=f"online bench serve --task generate: greedy, {max_new} new tokens at most")
    for col in ("server", "engine", "conc.", "requests", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "request p50 ms",
                "errors", "joined", "client CPU", "server CPU"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("server", "engine") else "right")

    def share(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.0f}%"

    for r in rows:
        table.add_row(
            r["server"], r["engine"], str(r["concurrency"]), str(r["requests"]), f"{r['tokens_per_s']:.1f}",
            f"{r['ttft_p50_ms']:.0f}", f"{r['ttft_p99_ms']:.0f}", f"{r['latency_p50_ms']:.0f}", str(r["errors"]),
            "" if r["joined"] is None else str(r["joined"]), share(r["client_cpu"]), share(r["server_cpu"]),
        )  # fmt: skip
    console.print(table)
    for c in sorted({r["concurrency"] for r in rows}):
        api = next(r for r in rows if r["server"] == "api" and r["concurrency"] == c)
        raw = next(r for r in rows if r["server"] == "raw" and r["concurrency"] == c)
        console.print(
            f"concurrency {c}: API {api['tokens_per_s']:.1f} tokens/s = {api['tokens_per_s'] / raw['tokens_per_s']:.2f}x"
            f" raw {raw['tokens_per_s']:.1f} (goal >= 0.9x); TTFT p50 API {api['ttft_p50_ms']:.0f} ms vs raw"
            f" {raw['ttft_p50_ms']:.0f} ms; {api['errors']} errors"
        )
    console.print(
        "TTFT: raw from its batch's start; API from sending the request to the first chunk with text. joined: API"
        " requests that joined a running decode (continuous batching); raw decodes static batches of c prompts"
    )
