"""`online bench chaos`: the whole stack under steady predict and feedback load, one fault at a time.

The stack is what `online up --replicas 2` runs, supervised by the same code (``services.supervisor``):
embedded Tansu and Redis, two API replicas, a consumer and a trainer. The bench's client spreads
predictions over both replicas and fails over to the other on a connection error (what a load balancer
does). In turn it SIGKILLs Redis, the broker, the consumer, the trainer in the middle of a round and one
API replica; the supervisor restarts each. Per fault it prints: predict errors (failed on both
replicas), predict p99 during the fault vs steady, feedback answers (202/503) and their p99, accepted
events lost (answered 202, never stored, counted after a final drain) and the time to recover.

Durability is promised for every fault but the broker's: Tansu keeps records in memory only, so
events accepted and not yet consumed when it dies are lost (on Apache Kafka they are not).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench.common import install_v1, latest_local_version
from online.data import Clinc150
from online.settings import Settings
from online.wiring.stores import Stores
from services.embedded import free_port
from services.supervisor import EmbeddedStack, Supervisor, supervised_units, wait_ready


@dataclass
class Call:
    started: float
    seconds: float
    status: int  # 0: no answer from any replica
    event_ids: list[tuple[str, str]] = field(default_factory=list)  # (source, event_id)


class Load:
    """Steady predictions (failover across replicas) and feedback batches, each from its own thread."""

    def __init__(self, urls: list[str], texts: list[tuple[str, str]], predict_rps: float, feedback_rps: float) -> None:
        self.urls = urls
        self.texts = texts
        self.predict_rps = predict_rps
        self.feedback_rps = feedback_rps
        self.predicts: list[Call] = []
        self.feedback: list[Call] = []
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._predict, daemon=True),
            threading.Thread(target=self._feed, daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _post(self, client: httpx.Client, first: int, path: str, body: dict) -> int:
        """Try the replicas in turn from ``first``; a refused connection or a 5xx moves to the next."""
        status = 0
        for i in range(len(self.urls)):
            url = self.urls[(first + i) % len(self.urls)]
            try:
                status = client.post(f"{url}{path}", json=body).status_code
            except httpx.HTTPError:
                continue
            if status < 500 or path == "/v1/feedback":  # a feedback 503 is an answer, not a dead replica
                return status
        return status

    def _paced(self, rps: float, call: Callable[[int], None]) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            t0 = time.perf_counter()
            call(n)
            self.stop.wait(max(1.0 / rps - (time.perf_counter() - t0), 0))

    def _predict(self) -> None:
        client = httpx.Client(timeout=10.0)
        rng = random.Random(1)

        def one(n: int) -> None:
            t0 = time.perf_counter()
            status = self._post(client, n, "/v1/predict", {"text": rng.choice(self.texts)[0]})
            self.predicts.append(Call(t0, time.perf_counter() - t0, status))

        self._paced(self.predict_rps, one)

    def _feed(self) -> None:
        client = httpx.Client(timeout=10.0)
        rng = random.Random(2)

        def one(n: int) -> None:
            events = []
            for j in range(5):
                text, label = rng.choice(self.texts)
                events.append({"kind": "label", "text": f"{text} ({n}.{j})", "label": label,
                               "source": f"chaos-{j % 3}", "event_id": uuid.uuid4().hex})  # fmt: skip
            t0 = time.perf_counter()
            status = self._post(client, n, "/v1/feedback", {"events": events})
            self.feedback.append(Call(t0, time.perf_counter() - t0, status, [(e["source"], e["event_id"]) for e in events]))

        self._paced(self.feedback_rps / 5, one)


def _p99(calls: list[Call]) -> float:
    lat = sorted(c.seconds for c in calls)
    return lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")


def _window(calls: list[Call], start: float, end: float) -> list[Call]:
    return [c for c in calls if start <= c.started < end]


def _stack_pid(state_dir: Path, name: str) -> int:
    return json.loads((state_dir / "stack.json").read_text())["processes"][name]["pid"]


def _ready(url: str) -> dict | None:
    try:
        resp = httpx.get(f"{url}/readyz", timeout=2.0)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


def run_bench_chaos(
    settings: Settings, console: Console, *, steady_s: float, settle_s: float, timeout_s: float
) -> None:
    clinc = Clinc150.open(settings.data_dir)
    known_domains = list(clinc.domains)[: settings.seed_domains]
    known = {i for d in known_domains for i in clinc.domains[d]}
    texts = [(t, lab) for t, lab in clinc.split("test") if lab in known]
    with tempfile.TemporaryDirectory(prefix="online-chaos-") as tmp:
        base = settings.model_copy(
            update={"state_dir": Path(tmp) / "state", "model_store": None, "kafka_bootstrap": None, "redis_url": None,
                    "api_port": free_port(), "predict_rate_limit": 0.0}  # one load generator, not an abuser
        )  # fmt: skip
        stack = EmbeddedStack.start(base)
        env = stack.settings
        install_v1(env, console, latest_local_version(settings))
        units = supervised_units(stack, ("serve", "consume", "train"), replicas=2, log_dir=Path(tmp) / "logs")
        supervisor = Supervisor(stack, units)
        supervisor.start_all()
        stopping = threading.Event()
        gave_up: list[str] = []
        watcher = threading.Thread(target=lambda: gave_up.append(supervisor.watch(stopping, 0.2)), daemon=True)
        watcher.start()
        urls = [f"http://127.0.0.1:{env.api_port + i}" for i in range(2)]
        stores = Stores.from_settings(env)
        rows: list[dict] = []
        load = Load(urls, texts, predict_rps=20, feedback_rps=10)
        try:
            for url in urls:
                wait_ready(url)
            console.print(
                f"two replicas ready; steady load: 20 predictions/s, 10 feedback events/s for {steady_s:.0f} s"
            )
            load.start()
            time.sleep(steady_s)
            steady_end = time.perf_counter()
            steady = _window(load.predicts, 0, steady_end)
            steady_fb = _window(load.feedback, 0, steady_end)

            def accepted_since(t: float) -> Callable[[], bool]:
                def check() -> bool:
                    ids = [e for c in _window(load.feedback, t, float("inf")) if c.status == 202 for e in c.event_ids]
                    try:
                        return bool(ids) and all(stores.buffer.seen(ids[-5:]))
                    except Exception:
                        return False

                return check

            seen_down: set[str] = set()

            def redis_up_everywhere() -> bool:
                """Both replicas saw Redis go down, and both see it up again."""
                states = [_ready(u) for u in urls]
                seen_down.update(u for u, s in zip(urls, states) if s and not s["dependencies"]["redis"]["up"])
                return len(seen_down) == len(urls) and all(s and s["dependencies"]["redis"]["up"] for s in states)

            def feedback_202_since(t: float) -> Callable[[], bool]:
                return lambda: any(c.status == 202 for c in _window(load.feedback, t, float("inf")))

            def new_version_since(before: int) -> Callable[[], bool]:
                return lambda: max((m.version for m in stores.registry.list()), default=0) > before

            def mid_round() -> bool:
                """The trainer holds the leader lock for a round (not a millisecond of housekeeping)."""
                key = stores.keys.trainer_leader
                if not stores.redis.exists(key):
                    return False
                time.sleep(1.0)
                return bool(stores.redis.exists(key))

            faults: list[tuple[str, str, Callable[[float], Callable[[], bool]], Callable[[], bool] | None]] = [
                ("redis", "redis", lambda t: redis_up_everywhere, None),
                ("broker (Tansu)", "tansu", lambda t: lambda: feedback_202_since(t)() and accepted_since(t)(), None),
                ("consumer", "consume", accepted_since, None),
                ("trainer mid-round", "train", None, mid_round),
                ("API replica", "serve-0", lambda t: lambda: _ready(urls[0]) is not None, None),
            ]
            for title, unit, recovered_fn, precondition in faults:
                if precondition is not None:
                    console.print(f"{title}: waiting for a round to start")
                    deadline = time.monotonic() + timeout_s
                    while not precondition() and time.monotonic() < deadline:
                        time.sleep(0.5)
                before = max((m.version for m in stores.registry.list()), default=0)
                pid = _stack_pid(env.state_dir, unit)
                t_kill = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                check = recovered_fn(t_kill) if recovered_fn else new_version_since(before)
                recovered = None
                while time.perf_counter() - t_kill < timeout_s:
                    if check():
                        recovered = time.perf_counter() - t_kill
                        break
                    time.sleep(0.25)
                time.sleep(settle_s)
                t_end = time.perf_counter()
                rows.append({"fault": title, "start": t_kill, "end": t_end, "recovered": recovered})
                console.print(f"  {title}: " + (f"recovered in {recovered:.1f} s" if recovered else "NOT recovered"))
        finally:
            load.close()
            # the loss count: wait for every accepted event to be stored (or the drain timeout)
            accepted = [e for c in load.feedback if c.status == 202 for e in c.event_ids]
            deadline = time.monotonic() + timeout_s
            stored: set[str] = set()
            while time.monotonic() < deadline:
                try:
                    stored = {e for e, ok in zip(accepted, stores.buffer.seen(accepted)) if ok}
                except Exception:
                    pass
                if len(stored) == len(accepted):
                    break
                time.sleep(1.0)
            stopping.set()
            watcher.join(5)
            supervisor.stop()
            restarts = {u.name: u.restarts for u in units}
    _report(console, load, rows, steady, steady_fb, stored, restarts, gave_up)


def _report(console, load, rows, steady, steady_fb, stored, restarts, gave_up) -> None:
    table = Table(title="online bench chaos: kill -9 one part at a time under steady load (2 API replicas)")
    for col in ("fault", "predict errors", "predict p99 ms", "p99 / steady", "feedback 202 / 503",
                "feedback p99 ms", "accepted lost", "recovered in s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "fault" else "right")
    steady_p99 = _p99(steady)
    table.add_row("(steady)", str(sum(c.status != 200 for c in steady)), f"{1000 * steady_p99:.0f}", "1.00",
                  f"{sum(c.status == 202 for c in steady_fb)} / {sum(c.status == 503 for c in steady_fb)}",
                  f"{1000 * _p99(steady_fb):.0f}", "", "")  # fmt: skip
    for r in rows:
        preds = _window(load.predicts, r["start"], r["end"])
        fb = _window(load.feedback, r["start"], r["end"])
        accepted = [e for c in fb if c.status == 202 for e in c.event_ids]
        lost = sum(e not in stored for e in accepted)
        table.add_row(
            r["fault"],
            str(sum(c.status != 200 for c in preds)),
            f"{1000 * _p99(preds):.0f}",
            f"{_p99(preds) / steady_p99:.2f}",
            f"{sum(c.status == 202 for c in fb)} / {sum(c.status == 503 for c in fb)}",
            f"{1000 * _p99(fb):.0f}",
            f"{lost} of {len(accepted)}" + (" (not promised)" if r["fault"].startswith("broker") else ""),
            f"{r['recovered']:.1f}" if r["recovered"] else "no",
        )
    console.print(table)
    all_accepted = [e for c in load.feedback if c.status == 202 for e in c.event_ids]
    console.print(
        f"whole run: {len(load.predicts)} predictions ({sum(c.status != 200 for c in load.predicts)} errors), "
        f"{len(all_accepted)} feedback events accepted, {len(all_accepted) - len(stored & set(all_accepted))} lost; "
        f"restarts by the supervisor: {restarts}" + (f"; GAVE UP: {gave_up[0]}" if gave_up and gave_up[0] else "")
    )
    console.print(
        "goals: redis and broker faults 0 predict errors and p99 within 2x steady; feedback p99 under 1 s; "
        "0 accepted events lost except the broker row (Tansu keeps records in memory only)"
    )
