"""Shared pieces of the benchmarks: a throw-away Redis and registry, a served model, an HTTP load loop."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from online.connections import redis_client
from online.model import TextClassifier
from online.registry import MANIFEST_FILE, Manifest, ModelRegistry
from online.settings import Settings
from services.embedded import free_port, start_redis
from services.supervisor import stop_processes


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


@contextmanager
def bench_environment(settings: Settings) -> Iterator[Settings]:
    """A temporary Redis and model store; nothing of the user's state is touched."""
    with tempfile.TemporaryDirectory(prefix="online-bench-") as tmp:
        rds = start_redis(Path(tmp) / "redis")
        try:
            yield settings.model_copy(
                update={
                    "redis_url": f"redis://127.0.0.1:{rds.port}/0",
                    "model_store": Path(tmp) / "models",
                    "state_dir": Path(tmp) / "state",
                }
            )
        finally:
            rds.stop()


def latest_local_version(settings: Settings) -> tuple[TextClassifier, Manifest] | None:
    """The newest version in the user's model store (read from disk, no server needed)."""
    store = settings.models_dir
    manifests = sorted(store.glob(f"v*/{MANIFEST_FILE}"), key=lambda p: int(p.parent.name[1:])) if store.is_dir() else []
    for path in reversed(manifests):
        manifest = Manifest.model_validate_json(path.read_text())
        if manifest.status == "published":
            return TextClassifier.load(path.parent / "model.safetensors", manifest.labels, manifest.base_model), manifest
    return None


def publish_live(settings: Settings, model: TextClassifier) -> Manifest:
    registry = ModelRegistry(redis_client(settings), settings.models_dir, settings.key_prefix)
    manifest = registry.publish(model, parent=None)
    registry.promote(manifest.version, reason="benchmark")
    return manifest


@contextmanager
def api_process(settings: Settings, **env_overrides: str) -> Iterator[str]:
    """`online serve` in a child process; yields its base URL once /readyz says ready."""
    port = free_port()
    env = {
        **os.environ,
        "ONLINE_REDIS_URL": settings.redis_url or "",
        "ONLINE_MODEL_STORE": str(settings.models_dir),
        "ONLINE_STATE_DIR": str(settings.state_dir),
        "ONLINE_API_PORT": str(port),
        **env_overrides,
    }
    proc = subprocess.Popen([sys.executable, "-m", "services", "serve"], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop_processes([proc])


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"API process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout}s")


async def _load(url: str, texts: list[str], total: int, concurrency: int) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/predict", json={"text": texts[i % len(texts)]})
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return LoadResult(total, errors, time.perf_counter() - started, latencies)


def http_load(url: str, texts: list[str], total: int, concurrency: int) -> LoadResult:
    """``total`` single-text /v1/predict calls from ``concurrency`` concurrent clients."""
    asyncio.run(_load(url, texts, min(total, 4 * concurrency), concurrency))  # warm connections
    return asyncio.run(_load(url, texts, total, concurrency))
