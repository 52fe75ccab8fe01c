"""Shared pieces of the benchmarks: a throw-away Redis and registry, a served model, an HTTP load loop."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

from online.learning.version_one import seed_data, train_version_one
from online.lifecycle.gate import Gate, GoldenSet
from online.lifecycle.registry import MANIFEST_FILE, Manifest
from online.lifecycle.release import JudgedVersion, Placement, release
from online.model import WEIGHTS_FILE, TextClassifier
from online.reference import REFERENCE_FILE, Reference
from online.reports import ImportStats
from online.settings import Settings
from online.wiring.stores import Stores
from services.embedded import Server, _start, _with_retries, start_redis


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    starts: list[float] = field(default_factory=list)  # perf_counter() at the start of each latency
    versions: list[int] = field(default_factory=list)  # model_version of each answer, when asked for

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    # A native load generator reports percentiles, not every latency: ``{quantile: seconds}``.
    percentiles: dict[float, float] = field(default_factory=dict)
    client: str = "python"  # what measured: "python" (this process's asyncio client) or "wrk"
    client_cpu: float | None = None  # the load generator's CPU seconds over the run
    server_cpu: float | None = None  # the server process's CPU seconds over the run, when known

    def pct(self, q: float) -> float:
        if not self.latencies:
            return self.percentiles.get(q, float("nan"))
        return percentile(self.latencies, q)

    @property
    def p50(self) -> float:
        if not self.latencies:
            return self.percentiles.get(0.5, float("nan"))
        return statistics.median(self.latencies)

    def cpu_share(self, seconds: float | None) -> float | None:
        """CPU seconds as a share of the whole machine (every core) over the run."""
        return None if seconds is None else seconds / (self.seconds * (os.cpu_count() or 1))


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest rank; NaN for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
                    # the load generator is one client measuring capacity, not an abuser: no per-client
                    # rate limit, and a queue as deep as the load it offers
                    "predict_rate_limit": 0.0,
                    "predict_queue_max": 100_000,
                }
            )
        finally:
            rds.stop()


def latest_local_version(settings: Settings) -> tuple[TextClassifier, Manifest] | None:
    """The newest version in the user's model store (read from disk, no server needed)."""
    store = settings.models_dir
    versions = [p for p in store.glob(f"v*/{MANIFEST_FILE}") if p.parent.name[1:].isdigit()] if store.is_dir() else []
    for path in sorted(versions, key=lambda p: int(p.parent.name[1:]), reverse=True):
        manifest = Manifest.model_validate_json(path.read_text())
        if manifest.status == "published":
            model = TextClassifier.load(
                path.parent / WEIGHTS_FILE, manifest.labels, manifest.base_model, manifest.pooling
            )
            return model, manifest
    return None


class _Connection:
    """A minimal HTTP/1.1 keep-alive client for load generation.

    The load generator shares the machine's two cores with the server it measures, so its own cost per
    request must be small; a general-purpose client (httpx) costs several times more CPU per call.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> "_Connection":
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _load(
    urls: list[str],
    texts: list[str],
    total: int | None,
    concurrency: int,
    until: Callable[[], bool] | None = None,
    track_versions: bool = False,
) -> LoadResult:
    """``concurrency`` clients spread round-robin over ``urls``, until ``total`` requests were sent or
    ``until()`` turns true."""
    latencies: list[float] = []
    starts: list[float] = []
    versions: list[int] = []
    errors = 0
    sent = 0
    counter = itertools.count()
    bodies = [json.dumps({"text": t}).encode() for t in texts]

    def more() -> int | None:
        i = next(counter)
        if (total is not None and i >= total) or (until is not None and until()):
            return None
        return i

    async def worker(url: str) -> None:
        nonlocal errors, sent
        conn = await _Connection.open(url)
        try:
            while (i := more()) is not None:
                sent += 1
                t0 = time.perf_counter()
                try:
                    status, body = await conn.post_json("/v1/predict", bodies[i % len(bodies)])
                except (OSError, asyncio.IncompleteReadError):
                    status, body = 0, b""
                    conn.close()
                    conn = await _Connection.open(url)
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                    starts.append(t0)
                    if track_versions:
                        versions.append(json.loads(body)["model_version"])
                else:
                    errors += 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(urls[w % len(urls)]) for w in range(concurrency)))
    return LoadResult(sent, errors, time.perf_counter() - started, latencies, starts, versions)


def http_load(url: str, texts: list[str], total: int, concurrency: int, server_pid: int | None = None) -> LoadResult:
    """``total`` single-text /v1/predict calls from ``concurrency`` concurrent clients (this process's
    asyncio client; its CPU seconds and, given ``server_pid``, the server's are measured too)."""
    asyncio.run(_load([url], texts, min(total, 4 * concurrency), concurrency))  # warm connections
    cpu0, server0 = time.process_time(), cpu_seconds(server_pid)
    result = asyncio.run(_load([url], texts, total, concurrency))
    result.client_cpu = time.process_time() - cpu0
    result.server_cpu = _delta(cpu_seconds(server_pid), server0)
    return result


# --- a native load generator ------------------------------------------------------------------------
# wrk (https://github.com/wg/wrk, Debian package `wrk`): one C thread on epoll drives every connection,
# so its own CPU per request is a small fraction of the Python client's and the server keeps the cores.
# The script sends the bodies of a file in turn (one JSON body a line), and its ``done`` hook prints the
# summary and latency percentiles as one JSON line (wrk's own text output rounds them).
WRK_SCRIPT = r"""
local bodies = os.getenv("ONLINE_WRK_BODIES")
local path = os.getenv("ONLINE_WRK_PATH") or "/v1/predict"
local requests = {}
local i = 0

function init(args)
  for line in io.lines(bodies) do
    requests[#requests + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json"}, line)
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function done(summary, latency, _)
  local e = summary.errors
  local q = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    q[#q + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    '\nONLINE_WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "mean_us": %.1f, "max_us": %d, "percentiles_us": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, table.concat(q, ", ")))
end
"""


def native_client() -> str | None:
    """The native load generator's path when one is installed (``wrk``), else None."""
    return shutil.which("wrk")


def _stat_fields(proc: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent pid, ...; utime is [11]),
    None for a process gone meanwhile."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process and of its living children (Linux ``/proc``: an
    `online serve --workers N` parent and its workers), None when unknown."""
    if pid is None:
        return None
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (fields := _stat_fields(proc)):
            stats[int(proc.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    if pid not in stats:
        return None
    tree, total = {pid}, 0.0
    for _ in range(3):  # the parent, its workers, what they started
        tree |= {p for p, (parent, _) in stats.items() if parent in tree}
    for p in tree:
        total += stats[p][1]
    return total


def listening_pid(url: str) -> int | None:
    """The process listening on ``url``'s TCP port on this machine (Linux ``/proc``), None when unknown:
    the socket's inode from ``/proc/net/tcp``, then the process holding it (of a parent and its workers,
    the parent)."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    holders: dict[int, int] = {}  # pid -> parent pid
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            held = any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir())
        except OSError:
            continue
        if held and (fields := _stat_fields(proc)):
            holders[int(proc.name)] = int(fields[1])
    # `online serve --workers N`: the parent and its workers all hold the sockets; the server is the parent
    return next((pid for pid, parent in holders.items() if parent not in holders), None)


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def wrk_load(
    url: str,
    texts: list[str],
    seconds: float,
    concurrency: int,
    server_pid: int | None = None,
    warm_s: float = 1.0,
    slices: int = 1,
) -> LoadResult:
    """``concurrency`` keep-alive connections of wrk posting single-text /v1/predict bodies for
    ``seconds`` (after ``warm_s`` of the same load, not counted); non-2xx answers, timeouts and socket
    errors count as errors. The client's CPU comes from the kernel's account of the wrk process.

    ``slices`` > 1: the seconds as that many runs of wrk, each on connections of its own, summed (each
    quantile: the slices' own, weighted by their requests). A run's throughput holds for its connections:
    how they land on the workers of `online serve --workers 2` and fall into batches settles in its first
    milliseconds and stays, so one 10 s run of the same server gave 1,118 to 1,272 req/s, where 8 s
    blocks within one run were within 3% of each other (issue 34)."""
    binary = native_client()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="online-wrk-") as tmp:
        script, bodies = Path(tmp) / "predict.lua", Path(tmp) / "bodies.jsonl"
        script.write_text(WRK_SCRIPT)
        bodies.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        env = {**os.environ, "ONLINE_WRK_BODIES": str(bodies)}

        def run(duration: float) -> tuple[dict, float]:
            cmd = [binary, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                   "-s", str(script), url]  # fmt: skip
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout and proc.stdout.close()
            line = next((ln for ln in out.splitlines() if ln.startswith("ONLINE_WRK ")), None)
            if proc.returncode != 0 or line is None:
                raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-1000:]}")
            return json.loads(line.removeprefix("ONLINE_WRK ")), usage.ru_utime + usage.ru_stime

        if warm_s > 0:
            run(warm_s)
        server0 = cpu_seconds(server_pid)
        runs = [run(seconds / max(1, slices)) for _ in range(max(1, slices))]
        server_cpu = _delta(cpu_seconds(server_pid), server0)
    requests = sum(summary["requests"] for summary, _ in runs)
    errors = sum(summary[k] for summary, _ in runs for k in ("connect", "read", "write", "status", "timeout"))
    pct: dict[float, float] = {}  # each quantile: the runs' own, weighted by their requests
    for summary, _ in runs:
        if not summary["requests"]:
            continue
        share = summary["requests"] / requests
        for k, v in summary["percentiles_us"].items():
            pct[float(k) / 100] = pct.get(float(k) / 100, 0.0) + v / 1e6 * share
    return LoadResult(
        requests=requests,
        errors=errors,
        seconds=sum(summary["duration_us"] for summary, _ in runs) / 1e6,
        latencies=[],
        percentiles=pct,
        client="wrk",
        client_cpu=sum(cpu for _, cpu in runs),
        server_cpu=server_cpu,
    )


def publish_gated(env: Settings, model: TextClassifier, parent: int | None, placement: Placement = "none") -> Manifest:
    """Release ``model`` through the pipeline every version takes: a gate baseline on the seed test set
    (frozen as the golden set the first time), the int8 artifact and drift reference beside it; placed
    as ``placement`` says (the swap benchmark promotes by hand, timed)."""
    train, test = seed_data(env)
    golden = GoldenSet.for_settings(env, test)
    report = Gate(env, golden).baseline(model)
    judged = JudgedVersion(
        model=model,
        report=report,
        parent=parent,
        trained_on=train,
        calibration=golden.examples,
        golden=golden.examples,
        metrics={"golden_accuracy": report.golden_accuracy},
    )
    stats = ImportStats(source="benchmark", labels=len(model.labels))
    return release(
        Stores.from_settings(env).registry, env, judged, stats, reason="benchmark", placement=placement
    ).manifest


def install_v1(env: Settings, console: Console, found: tuple[TextClassifier, object] | None) -> None:
    """Version 1 in a bench's own registry: the user's newest local version re-gated on the seed test set,
    or (none found) trained on the seed data."""
    registry = Stores.from_settings(env).registry
    if found is None:
        console.print("no local model version: training version 1 on the seed data first")
        train_version_one(env, registry)
        return
    publish_gated(env, found[0], parent=None, placement="promote")


def version_under_test(settings: Settings, console: Console) -> tuple[TextClassifier, int, Reference | None]:
    """The newest local version with its drift reference (the memory's screen reads it), or version 1
    trained on the seed data when there is none."""
    found = latest_local_version(settings)
    if found is not None:
        model, manifest = found
        path = settings.models_dir / f"v{manifest.version}" / REFERENCE_FILE  # the user's own folder store
        return model, manifest.version, Reference.load(path) if path.is_file() else None
    console.print("no local model version: training version 1 on the seed data first")
    with bench_environment(settings) as env:
        registry = Stores.from_settings(env).registry
        manifest = train_version_one(env, registry)
        model, _ = registry.load(manifest.version)
        path = registry.optional_artifact(manifest.version, REFERENCE_FILE)
        return model, manifest.version, Reference.load(path) if path else None


_OPENERS = ("hey, ", "hi, ", "quick question: ", "excuse me, ", "hello, ")
_CLOSERS = (" please", " thanks", " thank you", " asap", "?")
_DROPPABLE = {"the", "a", "an", "please", "my", "to", "can", "you", "i", "me", "is"}


def paraphrase(text: str, rng: random.Random) -> str:
    """A surface paraphrase of a user's text: a greeting or a closing word added, maybe a stop word
    dropped. Not a semantic rewrite: what near-duplicate matching of a correction must catch."""
    words = text.split()
    droppable = [i for i, w in enumerate(words) if w.lower() in _DROPPABLE]
    if droppable and len(words) > 3 and rng.random() < 0.5:
        del words[rng.choice(droppable)]
    out = " ".join(words)
    return rng.choice(_OPENERS) + out if rng.random() < 0.5 else out + rng.choice(_CLOSERS)


def start_s3(log_dir: Path) -> Server:
    """moto's S3-compatible server on a free loopback port (the test extra installs it), for benchmarks
    of the object-store registry; stopped by PID like the other servers."""
    import shutil
    import sys

    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(binary).is_file():
        raise RuntimeError("moto_server not found: pip install 'moto[server]' (the test extra has it)")
    return _with_retries(lambda p: _start("s3", [binary, "-H", "127.0.0.1", "-p", str(p)], p, log_dir / "s3.log", 30))
