"""`online bench serve`: the HTTP API on its default engine against the raw forward of every engine.

(a) raw: each engine's served numeric path (length bucketing; torch fp32, torch bf16 where the hardware
has it, the version's int8 ONNX Runtime artifact on CPU) called in-process on full batches, engines
interleaved so that machine noise hits them alike;
(b) api: the HTTP API as configured (its engine read from ``/readyz``);
(c) naive: the same API with one forward per request, no batching, torch fp32.
Accuracy of every engine on the CLINC150 test texts of the model's labels, against fp32.

The HTTP rows are measured by a native load generator when one is installed (``wrk``: one C thread on
epoll, a small fraction of a core at these rates), else by this process's asyncio client (which shares
the cores with the server it measures, and understates it). Each row names its client and gives the
client's and the server's CPU, as a share of the machine, beside its figures.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import httpx
from rich.table import Table

from bench.common import (
    LoadResult,
    bench_environment,
    http_load,
    install_v1,
    latest_local_version,
    listening_pid,
    native_client,
    wrk_load,
)
from bench.report import BenchConsole
from online.data import Clinc150
from online.engines import INT8_FILE, resolve_precision
from online.model import resolve_device
from online.predictor import Predictor, forward_lanes, int8_predictor, torch_predictor
from online.settings import Settings
from online.wiring.stores import Stores
from services.supervisor import api_process

ROUNDS = 3  # each raw cell is measured in this many slices, engines interleaved
WRK_SLICES = 3  # each wrk cell: this many runs, each on fresh connections (bench.common.wrk_load)
# The int8 rows (the engine the API serves, whose ratio is the goal) are measured before the HTTP rows and
# again after them, and reported as one: a machine whose speed drifts over the minutes of a run (the same
# engine measured 1,298 and 1,382 texts/s in two runs of one hour, issue 34) weighs on both sides alike.
LANES_SLICE = 1600  # texts, at least, in a slice of an engine's lanes side by side


def _raw_slice(predictor: Predictor, texts: list[str], total: int, batch: int, offset: int) -> LoadResult:
    latencies = []
    started = time.perf_counter()
    for start in range(0, total, batch):
        chunk = [texts[(offset + start + j) % len(texts)] for j in range(batch)]
        t0 = time.perf_counter()
        predictor.probabilities(chunk)
        latencies.extend([time.perf_counter() - t0] * batch)
    done = (total + batch - 1) // batch * batch
    return LoadResult(done, 0, time.perf_counter() - started, latencies)


def _lanes_slice(predictor: Predictor, texts: list[str], total: int, batch: int, offset: int) -> LoadResult:
    """``predictor.lanes`` callers at once, each on batches of ``batch / lanes`` (``batch`` texts in
    flight in all, as the API's lanes split its clients)."""
    lanes = predictor.lanes
    each = max(1, batch // lanes)
    parts: list[LoadResult] = []
    threads = [
        threading.Thread(
            target=lambda i=i: parts.append(_raw_slice(predictor, texts, total // lanes, each, offset + i * total))
        )
        for i in range(lanes)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(
        sum(p.requests for p in parts), 0, time.perf_counter() - started, [x for p in parts for x in p.latencies]
    )


def _raw(predictors: dict[str, Predictor], texts: list[str], total: int, batch: int) -> dict[str, LoadResult]:
    """Every engine on the same texts, in ``ROUNDS`` interleaved slices (an engine with lanes: only where
    ``batch`` gives each lane a text)."""
    predictors = {name: p for name, p in predictors.items() if p.lanes == 1 or batch >= p.lanes}
    out = {name: LoadResult(0, 0, 0.0, []) for name in predictors}
    for p in predictors.values():
        p.probabilities(texts[:batch])  # warm
    for r in range(ROUNDS):
        for name, p in predictors.items():
            if p.lanes == 1:
                part = _raw_slice(p, texts, max(batch, total // ROUNDS), batch, r * total)
            else:  # threads and the engine's switch to its lane sessions take a moment: 1,600 texts a slice
                part = _lanes_slice(p, texts, max(batch, total // ROUNDS, LANES_SLICE), batch, r * total)
            out[name] = _merged(out[name], part)
    return out


def _merged(a: LoadResult, b: LoadResult) -> LoadResult:
    """Two in-process measurements of one cell as one (requests, seconds and latencies together)."""
    return LoadResult(a.requests + b.requests, 0, a.seconds + b.seconds, a.latencies + b.latencies)


def _engine_of(url: str) -> str:
    return httpx.get(f"{url}/readyz", timeout=10).json().get("engine") or "?"


def _client(choice: str) -> str:
    """The load generator the HTTP rows use: ``auto`` is wrk when installed, else the Python client."""
    if choice == "auto":
        return "wrk" if native_client() else "python"
    if choice == "wrk" and not native_client():
        raise RuntimeError("--client wrk: wrk is not installed (apt-get install wrk)")
    return choice


def default_worker_counts() -> list[int]:
    """The API rows `bench serve` measures: one process, and one worker per core up to 2."""
    return [1, 2] if len(os.sched_getaffinity(0)) >= 2 else [1]


def api_server(workers: int) -> str:
    """The ``server`` of an API row: ``api``, or ``api x2w`` for `online serve --workers 2`."""
    return "api" if workers == 1 else f"api x{workers}w"


def run_bench_serve(
    settings: Settings,
    requests: int,
    levels: list[int],
    eval_limit: int,
    console: BenchConsole,
    client: str = "auto",
    seconds: float = 12.0,
    workers: list[int] | None = None,
) -> None:
    clinc = Clinc150.open(settings.data_dir)
    found = latest_local_version(settings)
    device = resolve_device(settings.device)
    with bench_environment(settings) as env:
        registry = Stores.from_settings(env).registry
        install_v1(env, console, found)  # gated, with its int8 artifact built the way a round builds it
        version = registry.live()
        model, manifest = registry.load(version)
        known = set(model.labels)
        test = [ex for ex in clinc.split("test") if ex[1] in known][: eval_limit or None]
        test_texts = [t for t, _ in test]
        texts = [t for t, _ in clinc.split("test")]

        def on_torch(precision: str) -> Predictor:
            return torch_predictor(model, version, env, precision=precision)

        def on_int8() -> dict[str, Predictor]:
            """The int8 engine as one caller runs it, and as a replica's lanes run it side by side."""
            int8 = registry.artifact(version, INT8_FILE)
            engines = {"onnx-int8": int8_predictor(int8, version, model.labels, model.base_model, env)}
            if (lanes := forward_lanes(env)) > 1:
                engines[f"onnx-int8 x{lanes}"] = int8_predictor(
                    int8, version, model.labels, model.base_model, env, lanes=lanes
                )
            return engines

        predictors = {"torch-fp32": on_torch("fp32")}
        if resolve_precision("auto", device) != "fp32":
            name = f"torch-{resolve_precision('auto', device)}"
            predictors[name] = on_torch("auto")
        int8_rows = device.type == "cpu" and INT8_FILE in manifest.artifacts
        if int8_rows:
            predictors.update(on_int8())
        elif device.type == "cpu":
            check = manifest.gate.engine if manifest.gate else None
            console.print(f"[yellow]no int8 artifact ({check.detail if check else 'not built'}): no onnx-int8 rows")

        fp32_labels = None
        for name, p in predictors.items():
            if p.lanes > 1:
                continue  # the same graph and session options as its one-caller row
            predicted = [p.labels[i] for i in p.probabilities(test_texts).argmax(-1).tolist()]
            fp32_labels = fp32_labels or predicted
            acc = sum(guess == lab for guess, (_, lab) in zip(predicted, test)) / max(len(test), 1)
            agreement = sum(a == b for a, b in zip(predicted, fp32_labels)) / max(len(test), 1)
            console.row(table="accuracy", engine=name, texts=len(test), accuracy=acc, agreement_with_fp32=agreement)

        raw = {c: _raw(predictors, texts, requests, c) for c in levels}
        predictors = p = None  # free every engine before the servers start
        gc.collect()
        used = _client(client)
        console.print(
            f"HTTP rows measured by {'wrk (native)' if used == 'wrk' else 'the Python asyncio client'}"
            + (
                f", {seconds:g} s a cell ({WRK_SLICES} runs of {seconds / WRK_SLICES:g} s, each on fresh connections) "
                "after 1 s of warm-up"
                if used == "wrk"
                else f", {requests} requests a cell"
            )
        )

        if int8_rows:
            console.print("raw onnx-int8 rows: measured before the HTTP rows and again after them, as one")

        def measure(url: str, c: int) -> LoadResult:
            pid = listening_pid(url)
            if used == "wrk":
                return wrk_load(url, texts, seconds, c, server_pid=pid, slices=WRK_SLICES)
            return http_load(url, texts, requests, c, server_pid=pid)

        api: dict[int, dict[int, LoadResult]] = {}  # workers -> concurrency -> result
        naive: dict[int, LoadResult] = {}
        for w in workers or [1]:
            api[w] = {}
            with api_process(env, ONLINE_API_WORKERS=str(w)) as url:
                api_engine = _engine_of(url)
                for c in levels:
                    api[w][c] = measure(url, c)
        naive_env = {"ONLINE_MAX_BATCH_SIZE": "1", "ONLINE_MAX_WAIT_MS": "0", "ONLINE_PRECISION": "fp32"}
        with api_process(env, ONLINE_ENGINE="torch", **naive_env) as url:
            naive_engine = _engine_of(url)
            for c in levels:
                naive[c] = measure(url, c)
        if int8_rows:  # the engine the API serves, measured again after the HTTP rows (see WRK_SLICES)
            predictors = on_int8()
            for p in predictors.values():  # warmed as the first pass's were, by the accuracy texts
                p.probabilities(test_texts)
            for c in levels:
                for name, part in _raw(predictors, texts, requests, c).items():
                    console.print(
                        f"raw {name} at concurrency {c}: {raw[c][name].throughput:.0f} texts/s before the HTTP "
                        f"rows, {part.throughput:.0f} after"
                    )
                    raw[c][name] = _merged(raw[c][name], part)
            predictors = p = None

    def load_row(server: str, engine: str, c: int, r: LoadResult, client: str = "in-process") -> None:
        console.row(
            table="load", server=server, engine=engine, concurrency=c, req_per_s=r.throughput,
            p50_ms=1e3 * r.p50, p99_ms=1e3 * r.pct(0.99), errors=r.errors, client=client,
            client_cpu=r.cpu_share(r.client_cpu), server_cpu=r.cpu_share(r.server_cpu),
        )  # fmt: skip

    for c in levels:
        for w, results in api.items():
            load_row(api_server(w), api_engine, c, results[c], results[c].client)
        load_row("naive", naive_engine, c, naive[c], naive[c].client)
        for name, r in raw[c].items():
            load_row("raw", name, c, r)
    _report(console, manifest.version, requests, api_engine)


def _report(console: BenchConsole, version: int, requests: int, api_engine: str) -> None:
    load = [r for r in console.rows if r["table"] == "load"]
    table = Table(title=f"online bench serve: single-text requests, model v{version}")
    columns = ("server", "engine", "conc.", "req/s", "p50 ms", "p99 ms", "errors", "client", "client CPU", "server CPU")
    for col in columns:
        table.add_column(col, justify="left" if col in ("server", "engine", "client") else "right")

    def share(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.0f}%"

    for r in load:
        table.add_row(
            r["server"], r["engine"], str(r["concurrency"]), f"{r['req_per_s']:.0f}",
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", str(r["errors"]), r["client"],
            share(r["client_cpu"]), share(r["server_cpu"]),
        )  # fmt: skip
    console.print(table)
    console.print("CPU: the load generator's and the server process's CPU time over the cell, as a share of all cores")
    acc = {r["engine"]: r for r in console.rows if r["table"] == "accuracy"}
    accuracy_table = Table(title="accuracy on the CLINC150 test texts of the model's labels")
    for col in ("engine", "texts", "accuracy %", "vs fp32 (points)", "agrees with fp32 %"):
        accuracy_table.add_column(col, justify="left" if col == "engine" else "right")
    base = acc["torch-fp32"]["accuracy"]
    for name, r in acc.items():
        accuracy_table.add_row(
            name, str(r["texts"]), f"{100 * r['accuracy']:.2f}", f"{100 * (r['accuracy'] - base):+.2f}",
            f"{100 * r['agreement_with_fp32']:.2f}",
        )  # fmt: skip
    console.print(accuracy_table)

    top = max(r["concurrency"] for r in load)
    low = min(r["concurrency"] for r in load)

    def cell(server: str, engine: str | None, c: int) -> dict | None:
        return next((r for r in load if r["server"] == server and r["concurrency"] == c
                     and (engine is None or r["engine"] == engine)), None)  # fmt: skip

    torch_raw = [
        r for r in load if r["server"] == "raw" and r["concurrency"] == top and r["engine"].startswith("torch")
    ]
    best_torch = max(torch_raw, key=lambda r: r["req_per_s"])
    raw_low = cell("raw", api_engine, low)
    served = acc.get(api_engine, acc["torch-fp32"])
    engine_rows = [r for r in load if r["server"] == "raw" and r["concurrency"] == top
                   and r["engine"].split(" ")[0] == api_engine]  # fmt: skip
    lines = [f"{api_engine} accuracy {100 * (served['accuracy'] - base):+.2f} points against fp32 (goal >= -0.5)"]
    servers = [r["server"] for r in load if r["server"].startswith("api") and r["concurrency"] == top]
    for server in servers:  # one process, then each worker count measured
        api_top, api_low = cell(server, None, top), cell(server, None, low)
        lines.append(
            f"{server} at concurrency {top} on {api_engine}: {api_top['req_per_s']:.0f} req/s = "
            f"{api_top['req_per_s'] / best_torch['req_per_s']:.2f}x raw {best_torch['engine']} "
            f"{best_torch['req_per_s']:.0f} (goal > 1x)"
        )
        if engine_rows:
            best = max(engine_rows, key=lambda r: r["req_per_s"])
            each = ", ".join(
                f"{api_top['req_per_s'] / r['req_per_s']:.2f}x raw {r['engine']} {r['req_per_s']:.0f}"
                for r in engine_rows
            )
            lines.append(
                f"{server} at concurrency {top}: {each} req/s, the engine it serves (goal >= 0.85x the best, "
                f"{best['engine']}; client: {api_top['client']})"
            )
        if raw_low and api_low:
            lines.append(
                f"{server} p50 at concurrency {low}: {api_low['p50_ms']:.1f} ms = "
                f"{api_low['p50_ms'] / raw_low['p50_ms']:.2f}x raw {api_engine} {raw_low['p50_ms']:.1f} ms "
                f"(goal <= 1.5x; client: {api_low['client']})"
            )
    for line in lines:
        console.print(line)
