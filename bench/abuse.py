"""`online bench abuse`: each attack of issue 31 against the stack `online up` runs, under steady honest
traffic, with its effect measured side by side with the same load and no attack.

The stack is `online up`'s (embedded Tansu and Redis, one API replica, a consumer, a trainer) with
training paused, so the live version can only change by a (wrongful) automatic rollback. An honest
client sends 20 predictions/s and 5 label events/s from 127.0.0.2 (a client address of its own, so a
per-client limit can tell it from the attacker on 127.0.0.1). Each attack gets a window without it, then
a window with it, of the same length; per attack the table shows the honest client's predict p99 in the
attack window against the window before (the ratio), its predict errors, its feedback events stored
(of those sent, after a final drain), whether the live version changed, the consumer's restarts, Redis
memory before and after, and what the attack achieved in its own terms.

Attacks (the issue's list):
- thumbs: 60 thumbs-up on one prediction of the parent and 60 thumbs-down on one prediction of the
  live version, fresh event ids, three invented source names (a promotion undone by volume);
- poison records: straight to Kafka, `timestamp: 1e400` on a resolvable prediction, a 400 KB record and
  180 KB of control characters (dead letters over the producer's limit);
- crafted text: predictions of 10,000-character runs without spaces, and 64 label events of them (the
  masking's backtracking, the correction memory's re-masking on the forward thread);
- long texts: 300 label events of 10,000 characters in one burst (the consumer's batch over its poll
  interval);
- invented names: one wrong label for one text under three invented source names (the screen's
  independence rule);
- id squatting: the honest client's next event ids sent first by the attacker;
- predict flood: 64 connections of predictions as fast as the API answers them (wrk when installed: the
  flood's cost to the server, not a Python client's to the shared cores).

The attackers are threads of this process, beside the honest client's: their large bodies (long texts,
crafted texts) are encoded before the windows, so the honest latency shows the server's work, not the
attacker's Python holding the GIL the honest client's timing needs.
"""

from __future__ import annotations

import json
import random
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

from bench.common import install_v1, latest_local_version, publish_gated
from online.data import Clinc150
from online.settings import Settings
from online.wiring.stores import Stores
from services.embedded import free_port
from services.supervisor import EmbeddedStack, Supervisor, supervised_units, wait_ready

HONEST_ADDRESS = "127.0.0.2"  # the honest client's own source address (all of 127/8 is loopback)
ATTACKS = ("thumbs", "poison-records", "crafted-text", "long-texts", "invented-names", "id-squatting", "predict-flood")


@dataclass
class Call:
    started: float
    seconds: float
    status: int  # 0: no answer
    event_ids: list[tuple[str, str]] = field(default_factory=list)  # (source, event_id)


class HonestLoad:
    """Steady predictions and label feedback from one honest client, each from its own thread."""

    def __init__(self, url: str, texts: list[tuple[str, str]], predict_rps: float, feedback_rps: float) -> None:
        self.url, self.texts = url, texts
        self.predict_rps, self.feedback_rps = predict_rps, feedback_rps
        self.predicts: list[Call] = []
        self.feedback: list[Call] = []
        self.stop = threading.Event()
        self.seq = 0  # honest ids are guessable on purpose: h0, h1, ... (the squatting attack)
        self._threads = [
            threading.Thread(target=self._predict, daemon=True),
            threading.Thread(target=self._feed, daemon=True),
        ]

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=10.0, transport=httpx.HTTPTransport(local_address=HONEST_ADDRESS)
        )

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _paced(self, rps: float, call: Callable[[], None]) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            call()
            self.stop.wait(max(1.0 / rps - (time.perf_counter() - t0), 0))

    def _predict(self) -> None:
        client, rng = self.client(), random.Random(1)

        def one() -> None:
            t0 = time.perf_counter()
            try:
                status = client.post("/v1/predict", json={"text": rng.choice(self.texts)[0]}).status_code
            except httpx.HTTPError:
                status = 0
            self.predicts.append(Call(t0, time.perf_counter() - t0, status))

        self._paced(self.predict_rps, one)

    def _feed(self) -> None:
        client, rng = self.client(), random.Random(2)

        def one() -> None:
            text, label = rng.choice(self.texts)
            eid, self.seq = f"h{self.seq}", self.seq + 1
            event = {"kind": "label", "text": f"{text} (#{eid})", "label": label, "source": "honest", "event_id": eid}
            t0 = time.perf_counter()
            try:
                status = client.post("/v1/feedback", json={"events": [event]}).status_code
            except httpx.HTTPError:
                status = 0
            self.feedback.append(Call(t0, time.perf_counter() - t0, status, [("honest", eid)]))

        self._paced(self.feedback_rps, one)


def _p99(calls: list[Call]) -> float:
    lat = sorted(c.seconds for c in calls)
    return lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")


def _window(calls: list[Call], start: float, end: float) -> list[Call]:
    return [c for c in calls if start <= c.started < end]


@dataclass
class Context:
    url: str
    env: Settings
    stores: Stores
    texts: list[tuple[str, str]]
    honest: HonestLoad
    model: object
    stop: threading.Event
    state: dict = field(default_factory=dict)  # what an attack's preparation hands to the attack

    def attacker(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)

    def predict_id(self, client: httpx.Client, text: str) -> tuple[str, int]:
        body = client.post("/v1/predict", json={"text": text}).json()
        return body["predictions"][0]["prediction_id"], body["model_version"]

    def produce(self, values: list[bytes]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.env.kafka_bootstrap, max_request_size=4 * 1024 * 1024)
        try:
            for value in values:
                producer.send(self.env.feedback_topic, value)
            producer.flush(30)
        finally:
            producer.close()


def _feedback(client: httpx.Client, events: list[dict] | bytes) -> int:
    """``events``, or a body encoded beforehand: an attack's large bodies are built in its preparation,
    before the windows, so what the honest client's latency shows is the server's work, not the
    attacker's own Python (which shares this process, and its GIL, with the honest client)."""
    body = events if isinstance(events, bytes) else _bodies([events])[0]
    try:
        return client.post("/v1/feedback", content=body, headers={"Content-Type": "application/json"}).status_code
    except httpx.HTTPError:
        return 0


def _bodies(events: list[list[dict]]) -> list[bytes]:
    return [json.dumps({"events": batch}, separators=(",", ":"), ensure_ascii=False).encode() for batch in events]


# --- the attacks: each runs inside its window and says what it achieved --------------------------------


def prepare_thumbs(ctx: Context) -> None:
    """Before the windows: a prediction of the parent, a new version promoted, a prediction of it."""
    client = ctx.attacker()
    text = ctx.texts[0][0]
    parent_pid, parent_version = ctx.predict_id(client, text)
    child = publish_gated(ctx.env, ctx.model, parent=parent_version, placement="promote").version
    deadline = time.monotonic() + 60
    while ctx.predict_id(client, text)[1] != child and time.monotonic() < deadline:
        time.sleep(0.2)
    child_pid, _ = ctx.predict_id(client, text)
    ctx.state.update(parent_pid=parent_pid, parent_version=parent_version, child=child, child_pid=child_pid)


def attack_thumbs(ctx: Context) -> str:
    """A promotion undone by volume: the parent's prediction praised, the new version's damned."""
    client = ctx.attacker()
    parent_pid, parent_version = ctx.state["parent_pid"], ctx.state["parent_version"]
    child, child_pid = ctx.state["child"], ctx.state["child_pid"]
    codes = []
    for i in range(60):
        source = f"fan-{i % 3}"
        codes.append(_feedback(client, [
            {"kind": "thumbs", "prediction_id": parent_pid, "vote": "up", "source": source, "event_id": uuid.uuid4().hex},
            {"kind": "thumbs", "prediction_id": child_pid, "vote": "down", "source": source, "event_id": uuid.uuid4().hex},
        ]))  # fmt: skip
    ctx.stop.wait(15)  # the trainer's housekeeping judges live accuracy every poll
    live = ctx.stores.registry.live()
    counted = {v: ctx.stores.live_accuracy.get(v) for v in (parent_version, child)}
    judged = ", ".join(f"v{v} {a.correct}/{a.n}" for v, a in counted.items())
    return (
        f"v{child} promoted, 120 thumbs ({codes.count(202)} calls accepted; judged {judged}); live after: v{live}"
        + (" (ROLLED BACK)" if live != child else " (kept)")
    )


def attack_poison_records(ctx: Context) -> str:
    client = ctx.attacker()
    pid, _ = ctx.predict_id(client, ctx.texts[1][0])
    values = [
        ('{"schema_version": 1, "kind": "thumbs", "prediction_id": "%s", "vote": "down", "source": "eve", '
         '"event_id": "%s", "timestamp": 1e400}' % (pid, uuid.uuid4().hex)).encode(),
        json.dumps({"kind": "label", "text": "x" * 400_000, "label": "balance", "source": "eve"}).encode(),
        json.dumps({"kind": "label", "text": "\u0001" * 180_000, "label": "balance", "source": "eve"}).encode(),
    ]  # fmt: skip
    ctx.produce(values)
    raw = (
        b'{"events": [{"kind": "label", "text": "inf time", "label": "balance", "source": "eve", "timestamp": 1e400}]}'
    )
    try:  # JSON with a number no float holds: httpx's encoder refuses it, so the body is sent as bytes
        api = client.post("/v1/feedback", content=raw, headers={"Content-Type": "application/json"}).status_code
    except httpx.HTTPError:
        api = 0
    return f"3 records produced to Kafka; the same inf timestamp through the API answered {api}"


CRAFTED = "a" * 9_000 + "." + "b" * 990  # one 10,000-character run: no space for a pattern to stop at


def prepare_crafted_text(ctx: Context) -> None:
    ctx.state["crafted-text"] = _bodies(
        [[{"kind": "label", "text": f"{CRAFTED[:9_996]}{i:04d}", "label": "balance", "source": "eve",
           "event_id": uuid.uuid4().hex}] for i in range(64)]
    )  # fmt: skip


def attack_crafted_text(ctx: Context) -> str:
    text = CRAFTED[: ctx.env.max_text_chars]  # the longest prediction the API takes
    client = ctx.attacker()
    codes = [_feedback(client, body) for body in ctx.state["crafted-text"]]
    answered = 0
    end = time.monotonic() + 15
    while time.monotonic() < end and not ctx.stop.is_set():
        try:
            answered += client.post("/v1/predict", json={"text": text}).status_code == 200
        except httpx.HTTPError:
            pass
    return f"64 label events of 10,000 chars ({codes.count(202)} accepted); {answered} crafted predictions of {len(text)} chars"


def prepare_long_texts(ctx: Context) -> None:
    rng = random.Random(5)
    ctx.state["long-texts"] = _bodies(
        [[{"kind": "label", "label": "balance", "source": "eve", "event_id": uuid.uuid4().hex,
           "text": " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(1_700))[:10_000]}
          for _ in range(10)] for _ in range(30)]
    )  # fmt: skip


def attack_long_texts(ctx: Context) -> str:
    client = ctx.attacker()
    codes = [_feedback(client, body) for body in ctx.state["long-texts"]]
    return f"300 label events of 10,000 chars in 30 calls ({codes.count(202)} calls accepted)"


def attack_invented_names(ctx: Context) -> str:
    client = ctx.attacker()
    text, right = ctx.texts[2]
    wrong = next(lab for _, lab in ctx.texts if lab != right)
    codes = [_feedback(client, [{"kind": "label", "text": text, "label": wrong, "source": f"sock-{i}",
                                 "event_id": uuid.uuid4().hex}]) for i in range(3)]  # fmt: skip
    deadline, steered = time.monotonic() + 15, False
    while time.monotonic() < deadline and not steered:
        steered = client.post("/v1/predict", json={"text": text}).json()["predictions"][0]["label"] == wrong
        time.sleep(0.5)
    return f"'{text}' taught as {wrong} (right: {right}) under 3 names ({codes.count(202)} accepted): " + (
        "STEERED (served wrong)" if steered else "not served"
    )


def attack_id_squatting(ctx: Context) -> str:
    client = ctx.attacker()
    start = ctx.honest.seq + 5  # a few calls ahead of the honest client
    ids = [f"h{n}" for n in range(start, start + 400)]
    for chunk in range(0, len(ids), 50):
        _feedback(client, [{"kind": "label", "text": "squat", "label": "balance", "source": "eve", "event_id": eid}
                           for eid in ids[chunk : chunk + 50]])  # fmt: skip
    return f"the honest client's next 400 ids (h{start}..) sent first"


def attack_predict_flood(ctx: Context) -> str:
    """64 connections posting predictions as fast as they are answered: by wrk when installed (a native
    client: what the flood costs is the server's, as from an attacker on another machine; a Python
    client flooding from these 2 cores took a core of its own), else by the Python client."""
    from bench.common import native_client, wrk_load

    if native_client() is not None:
        r = wrk_load(ctx.url, ["flood me"], 15, 64, warm_s=0)
        return f"64 connections for 15 s (wrk): {r.requests - r.errors} answered, {r.errors} refused or failed"
    return _python_flood(ctx)


def _python_flood(ctx: Context) -> str:
    import asyncio

    async def flood() -> tuple[int, int]:
        ok = limited = 0
        async with httpx.AsyncClient(base_url=ctx.url, timeout=30.0) as client:
            end = time.monotonic() + 15

            async def worker() -> None:
                nonlocal ok, limited
                while time.monotonic() < end:
                    try:
                        status = (await client.post("/v1/predict", json={"text": "flood me"})).status_code
                    except httpx.HTTPError:
                        continue
                    ok += status == 200
                    limited += status in (429, 503)

            await asyncio.gather(*(worker() for _ in range(64)))
        return ok, limited

    ok, limited = asyncio.run(flood())
    return f"64 connections for 15 s: {ok} answered, {limited} refused (429/503)"


PREPARE: dict[str, Callable[[Context], None]] = {
    "thumbs": prepare_thumbs,
    "crafted-text": prepare_crafted_text,
    "long-texts": prepare_long_texts,
}
RUNNERS: dict[str, Callable[[Context], str]] = {
    "thumbs": attack_thumbs,
    "poison-records": attack_poison_records,
    "crafted-text": attack_crafted_text,
    "long-texts": attack_long_texts,
    "invented-names": attack_invented_names,
    "id-squatting": attack_id_squatting,
    "predict-flood": attack_predict_flood,
}


def _redis_mb(stores: Stores) -> float:
    return stores.redis.info("memory")["used_memory"] / 2**20


def run_bench_abuse(
    settings: Settings, console: Console, *, attacks: list[str], window_s: float, drain_s: float
) -> list[dict]:
    clinc = Clinc150.open(settings.data_dir)
    known = {i for d in list(clinc.domains)[: settings.seed_domains] for i in clinc.domains[d]}
    texts = [(t, lab) for t, lab in clinc.split("test") if lab in known]
    random.Random(0).shuffle(texts)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="online-abuse-") as tmp:
        base = settings.model_copy(
            update={"state_dir": Path(tmp) / "state", "model_store": None, "kafka_bootstrap": None, "redis_url": None,
                    "api_port": free_port()}
        )  # fmt: skip
        stack = EmbeddedStack.start(base)
        env = stack.settings
        found = latest_local_version(settings)
        install_v1(env, console, found)
        stores = Stores.from_settings(env)
        stores.control.pause("bench abuse: the live version changes only by a rollback")
        model = found[0] if found else stores.registry.load(stores.registry.live())[0]
        units = supervised_units(stack, ("serve", "consume", "train"), replicas=1, log_dir=Path(tmp) / "logs")
        supervisor = Supervisor(stack, units)
        supervisor.start_all()
        stopping = threading.Event()
        watcher = threading.Thread(target=lambda: supervisor.watch(stopping, 0.2), daemon=True)
        watcher.start()
        url = f"http://127.0.0.1:{env.api_port}"
        honest = HonestLoad(url, texts[100:], predict_rps=20, feedback_rps=5)
        ctx = Context(url, env, stores, texts, honest, model, threading.Event())
        try:
            wait_ready(url)
            honest.start()
            console.print(
                f"honest load from {HONEST_ADDRESS}: 20 predictions/s, 5 label events/s; windows of {window_s:.0f} s"
            )
            consumer = next(u for u in units if u.name == "consume")
            for name in attacks:
                if name in PREPARE:
                    PREPARE[name](ctx)
                t0 = time.perf_counter()
                time.sleep(window_s)  # the same load, no attack
                t1 = time.perf_counter()
                live_before, mem_before, restarts_before = stores.registry.live(), _redis_mb(stores), consumer.restarts
                result: list[str] = []
                thread = threading.Thread(target=lambda: result.append(_safely(RUNNERS[name], ctx)), daemon=True)
                thread.start()
                time.sleep(window_s)
                ctx.stop.set()
                thread.join(120)
                ctx.stop.clear()
                t2 = time.perf_counter()
                live_after = stores.registry.live()
                rows.append({"attack": name, "t0": t0, "t1": t1, "t2": t2, "live_before": live_before,
                             "live_after": live_after, "mem_before": mem_before, "mem_after": _redis_mb(stores),
                             "restarts": consumer.restarts - restarts_before,
                             "result": result[0] if result else "attack still running"})  # fmt: skip
                console.print(f"  {name}: {rows[-1]['result']}")
        finally:
            honest.close()
            accepted = [e for c in honest.feedback if c.status == 202 for e in c.event_ids]
            stored = _drain(stores, accepted, drain_s)
            stopping.set()
            watcher.join(5)
            supervisor.stop()
            stack.stop()
    return _report(console, honest, rows, stored, settings)


def _safely(fn: Callable[[Context], str], ctx: Context) -> str:
    try:
        return fn(ctx)
    except Exception as exc:  # an attack that fails is a finding, not a crash of the benchmark
        return f"attack raised {type(exc).__name__}: {exc}"[:300]


def _drain(stores: Stores, accepted: list[tuple[str, str]], timeout_s: float) -> set[tuple[str, str]]:
    deadline, stored = time.monotonic() + timeout_s, set()
    while time.monotonic() < deadline:
        try:
            stored = {e for e, ok in zip(accepted, stores.buffer.seen(accepted)) if ok}
        except Exception:
            pass
        if len(stored) == len(accepted):
            break
        time.sleep(1.0)
    return stored


def _report(
    console: Console, honest: HonestLoad, rows: list[dict], stored: set[tuple[str, str]], settings: Settings
) -> list[dict]:
    table = Table(
        title="online bench abuse: each attack under steady honest traffic, beside the same window without it"
    )
    for col in ("attack", "honest p99 ms: without / with", "p99 ratio", "honest predict errors", "honest feedback stored",
                "live version", "consumer restarts", "Redis MiB before -> after", "what the attack did"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("attack", "what the attack did") else "right")
    out = []
    for r in rows:
        before, during = _window(honest.predicts, r["t0"], r["t1"]), _window(honest.predicts, r["t1"], r["t2"])
        fb = [e for c in _window(honest.feedback, r["t1"], r["t2"]) for e in c.event_ids]
        sent = len(fb)
        kept = sum(e in stored for e in fb)
        ratio = _p99(during) / _p99(before)
        errors = sum(c.status != 200 for c in during)
        live = f"v{r['live_before']} -> v{r['live_after']}"
        row = {"attack": r["attack"], "p99_without_ms": 1000 * _p99(before), "p99_with_ms": 1000 * _p99(during),
               "p99_ratio": ratio, "predict_errors": errors, "feedback_sent": sent, "feedback_stored": kept,
               "live_before": r["live_before"], "live_after": r["live_after"], "consumer_restarts": r["restarts"],
               "redis_mb_before": r["mem_before"], "redis_mb_after": r["mem_after"], "result": r["result"]}  # fmt: skip
        out.append(row)
        table.add_row(r["attack"], f"{row['p99_without_ms']:.0f} / {row['p99_with_ms']:.0f}", f"{ratio:.2f}x", str(errors),
                      f"{kept} of {sent}", live, str(r["restarts"]), f"{r['mem_before']:.1f} -> {r['mem_after']:.1f}",
                      r["result"])  # fmt: skip
    console.print(table)
    console.print(
        f"honest feedback over the whole run: {len(stored)} stored of {sum(c.status == 202 for c in honest.feedback)} "
        f"accepted ({len(honest.feedback)} sent). Goals: p99 <= 1.5x, 0 honest predict errors, every honest event "
        "stored, no wrongful rollback (the thumbs row keeps its new version), Redis within its budget"
    )
    return out
