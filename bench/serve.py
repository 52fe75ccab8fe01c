"""`online bench serve`: the HTTP API against a naive server and against the raw batched forward.

(a) naive: the same API with one forward per request, no batching, fp32;
(b) raw: the served numeric path (precision, length bucketing) called in-process on full batches;
the limit the API can approach. Accuracy of the served path is checked against fp32 on CLINC150 test.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from bench.common import LoadResult, bench_environment, http_load, latest_local_version, publish_live
from online.data import Clinc150
from online.learning.fit import accuracy
from online.learning.version_one import train_version_one
from online.serving.predictor import Predictor
from online.settings import Settings
from online.stores import Stores
from services.supervisor import api_process


def _raw(predictor: Predictor, texts: list[str], total: int, batch: int) -> LoadResult:
    predictor.predict(texts[:batch])
    latencies = []
    started = time.perf_counter()
    for start in range(0, total, batch):
        chunk = [texts[(start + j) % len(texts)] for j in range(batch)]
        t0 = time.perf_counter()
        predictor.predict(chunk)
        latencies.extend([time.perf_counter() - t0] * batch)
    done = (total + batch - 1) // batch * batch
    return LoadResult(done, 0, time.perf_counter() - started, latencies)


def _accuracy(predictor: Predictor, test: list[tuple[str, str]]) -> float:
    return accuracy(lambda texts: [p.label for p in predictor.predict(texts, 1)], test)


def run_bench_serve(settings: Settings, requests: int, levels: list[int], eval_limit: int, console: Console) -> None:
    clinc = Clinc150.open(settings.data_dir)
    found = latest_local_version(settings)
    with bench_environment(settings) as env:
        if found is None:
            console.print("no local model version: training version 1 on the seed data first")
            registry = Stores.from_settings(env).registry
            manifest = train_version_one(env, registry)
            model, _ = registry.load(manifest.version)
        else:
            model, manifest = found
            publish_live(env, model)
        known = set(model.labels)
        test = [ex for ex in clinc.split("test") if ex[1] in known]
        if eval_limit:
            test = test[:eval_limit]
        texts = [t for t, _ in clinc.split("test")]

        def predictor(precision: str) -> Predictor:
            return Predictor(
                model, manifest.version, device=env.device, precision=precision, max_seq_len=env.max_seq_len
            )

        acc_fp32 = _accuracy(predictor("fp32"), test)
        served = predictor(env.precision)
        acc_served = _accuracy(served, test)
        rows: dict[int, dict[str, LoadResult]] = {c: {} for c in levels}
        for c in levels:
            rows[c]["raw"] = _raw(served, texts, requests, c)
        served = None  # free it before the servers start
        with api_process(env) as url:
            for c in levels:
                rows[c]["api"] = http_load(url, texts, requests, c)
        with api_process(env, ONLINE_MAX_BATCH_SIZE="1", ONLINE_MAX_WAIT_MS="0", ONLINE_PRECISION="fp32") as url:
            for c in levels:
                rows[c]["naive"] = http_load(url, texts, requests, c)

    table = Table(title=f"online bench serve: {requests} single-text requests per cell, model v{manifest.version}")
    for col in ("conc.", "API req/s", "naive req/s", "raw req/s", "API/naive", "API/raw",
                "API p50/p99 ms", "naive p50/p99 ms", "raw p50/p99 ms", "errors"):  # fmt: skip
        table.add_column(col, justify="right")
    for c in levels:
        api, naive, raw = rows[c]["api"], rows[c]["naive"], rows[c]["raw"]
        table.add_row(
            str(c),
            f"{api.throughput:.0f}",
            f"{naive.throughput:.0f}",
            f"{raw.throughput:.0f}",
            f"{api.throughput / naive.throughput:.2f}x",
            f"{api.throughput / raw.throughput:.2f}x",
            f"{api.p50 * 1e3:.1f}/{api.pct(0.99) * 1e3:.1f}",
            f"{naive.p50 * 1e3:.1f}/{naive.pct(0.99) * 1e3:.1f}",
            f"{raw.p50 * 1e3:.1f}/{raw.pct(0.99) * 1e3:.1f}",
            f"{api.errors}/{naive.errors}",
        )
    console.print(table)
    console.print(
        f"accuracy on {len(test)} CLINC150 test texts of the model's labels: served path ({served_precision(env)}) "
        f"{acc_served * 100:.2f}% vs fp32 {acc_fp32 * 100:.2f}% (delta {(acc_served - acc_fp32) * 100:+.2f} points)"
    )


def served_precision(settings: Settings) -> str:
    from online.model import resolve_device
    from online.serving.predictor import resolve_precision

    return resolve_precision(settings.precision, resolve_device(settings.device))
