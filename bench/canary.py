"""`online bench canary`: progressive delivery on the stack `online up` runs, with simulated users.

Three versions share one encoder (all-MiniLM-L6-v2, frozen) and differ in what their heads were fitted
on, CLINC150's seed domains (``ONLINE_SEED_DOMAINS``): **live** never saw 8 of the intents (users asking
for them get a wrong answer), the **better** candidate saw every intent (trained *with* the new ones),
the **worse** candidate missed 8 more (trained *without* intents live knows). All three go through the
release pipeline (gate baseline, int8 artifact, drift reference); training is paused, so versions change
only by the canary.

Simulated users (``--users``, in 8 groups, each group from a loopback address of its own, so the verdict
sees 8 independent sources) ask CLINC150 test questions at ``--rate`` requests/s overall, each request
naming its user (sticky routing), and judge a share (``--feedback``) of the answers with a thumbs up or
down against the question's true intent, sent in small batches as a client would.

Phases: steady (no canary), then the worse candidate on a canary, then the better one, each from a 5%
share with the default steps (25%, 50%, then promoted) and the trainer deciding. Reported: every
decision with its time since the canary began and the judgements it had, the share of users who saw the
worse version before its rollback, and predict p99 (and errors) in each share against steady.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from rich.table import Table

from bench.common import publish_gated
from bench.report import BenchConsole
from online.data import Clinc150
from online.examples import Example
from online.learning.fit import embeddings
from online.lifecycle import canary
from online.model import TextClassifier, default_base_model
from online.settings import Settings
from online.wiring.stores import Stores
from services.embedded import free_port
from services.supervisor import EmbeddedStack, Supervisor, supervised_units, wait_ready

GROUPS = 8  # user groups, one client address each: the independent sources the verdict counts


@dataclass
class Answer:
    started: float
    seconds: float
    status: int
    user: int
    version: int | None


class Users:
    """Simulated users: paced predictions naming their user, thumbs on a share of the answers."""

    def __init__(self, url: str, texts: list[Example], users: int, rate: float, feedback: float) -> None:
        self.url, self.texts, self.users, self.rate, self.share = url, texts, users, rate, feedback
        self.answers: list[Answer] = []
        self.judged_sent = 0
        self.stop = threading.Event()
        self._pending: dict[int, list[dict]] = defaultdict(list)
        self._lock = threading.Lock()
        self._clients = [
            httpx.Client(base_url=url, timeout=10.0, transport=httpx.HTTPTransport(local_address=f"127.0.0.{10 + g}"))
            for g in range(GROUPS)
        ]
        self._threads = [threading.Thread(target=self._ask, daemon=True), threading.Thread(target=self._judge, daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)
        for c in self._clients:
            c.close()

    def _ask(self) -> None:
        rng = random.Random(3)
        n = 0
        t_start = time.perf_counter()
        while not self.stop.is_set():
            user = rng.randrange(self.users)
            text, truth = rng.choice(self.texts)
            t0 = time.perf_counter()
            version = None
            try:
                r = self._clients[user % GROUPS].post("/v1/predict", json={"text": text, "user": f"user-{user}"})
                status = r.status_code
                if status == 200:
                    p = r.json()["predictions"][0]
                    version = p["model_version"]
                    if rng.random() < self.share:
                        vote = "up" if p["label"] == truth else "down"
                        event = {"kind": "thumbs", "prediction_id": p["prediction_id"], "vote": vote, "source": f"user-{user}"}
                        with self._lock:
                            self._pending[user % GROUPS].append(event)
            except httpx.HTTPError:
                status = 0
            self.answers.append(Answer(t0, time.perf_counter() - t0, status, user, version))
            n += 1
            self.stop.wait(max(t_start + n / self.rate - time.perf_counter(), 0))

    def _judge(self) -> None:
        while not self.stop.wait(0.5):
            with self._lock:
                pending, self._pending = self._pending, defaultdict(list)
            for group, events in pending.items():
                try:
                    if self._clients[group].post("/v1/feedback", json={"events": events}).status_code == 202:
                        self.judged_sent += len(events)
                except httpx.HTTPError:
                    pass  # lost feedback is less evidence, not a wrong one


def _heads(settings: Settings, console: BenchConsole) -> tuple[dict[str, TextClassifier], list[Example], list[str]]:
    """The three versions' models, fitted on the frozen encoder's embeddings of the seed train split."""
    clinc = Clinc150.open(settings.data_dir)
    labels = sorted({lab for _, lab in clinc.seed(settings.seed_domains)})
    per_label: dict[str, int] = defaultdict(int)
    train = []
    for t, lab in clinc.seed(settings.seed_domains, "train"):
        if per_label[lab] < 50:
            per_label[lab] += 1
            train.append((t, lab))
    test = [ex for ex in clinc.seed(settings.seed_domains, "test")]
    missing = random.Random(0).sample(labels, 16)
    base = settings.base_model or default_base_model()
    encoder = TextClassifier.from_base(base, labels)
    t0 = time.perf_counter()
    emb = embeddings(encoder, [t for t, _ in train], max_seq_len=settings.max_seq_len)
    console.print(f"embedded {len(train)} seed texts in {time.perf_counter() - t0:.0f} s; fitting three heads")

    def fitted(keep: list[str]) -> TextClassifier:
        model = TextClassifier.from_base(base, keep)
        model.encoder.load_state_dict(encoder.encoder.state_dict())
        rows = [i for i, (_, lab) in enumerate(train) if lab in keep]
        x = emb[rows]
        y = torch.tensor([keep.index(train[i][1]) for i in rows])
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.head.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model.head(x), y)
            loss.backward()
            opt.step()
        return model

    models = {
        "live": fitted([lab for lab in labels if lab not in missing[:8]]),
        "better": fitted(labels),
        "worse": fitted([lab for lab in labels if lab not in missing]),
    }
    return models, test, missing


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_bench_canary(
    settings: Settings,
    console: BenchConsole,
    *,
    users: int,
    rate: float,
    feedback: float,
    steady_s: float,
    step_s: float,
    max_phase_s: float,
) -> None:
    models, test, missing = _heads(settings, console)
    random.Random(1).shuffle(test)
    with tempfile.TemporaryDirectory(prefix="online-canary-") as tmp:
        base = settings.model_copy(
            update={"state_dir": Path(tmp) / "state", "model_store": None, "kafka_bootstrap": None, "redis_url": None,
                    "api_port": free_port(), "canary_min_step_s": step_s, "shadow_share": 0.0, "canary_share": 0.0}
        )  # fmt: skip
        stack = EmbeddedStack.start(base)
        env = stack.settings
        stores = Stores.from_settings(env)
        registry = stores.registry
        v = {"live": publish_gated(env, models["live"], None, "promote").version}
        for name in ("worse", "better"):
            v[name] = publish_gated(env, models[name], v["live"]).version
        stores.control.pause("bench canary: versions change only by the canary")
        console.print(
            f"versions: live v{v['live']} ({len(models['live'].labels)} intents), worse v{v['worse']} "
            f"({len(models['worse'].labels)}), better v{v['better']} ({len(models['better'].labels)}); "
            f"{users} users in {GROUPS} groups, {rate:.0f} requests/s, {feedback:.0%} of answers judged"
        )
        units = supervised_units(stack, ("serve", "consume", "train"), replicas=1, log_dir=Path(tmp) / "logs")
        supervisor = Supervisor(stack, units)
        supervisor.start_all()
        stopping = threading.Event()
        watcher = threading.Thread(target=lambda: supervisor.watch(stopping, 0.2), daemon=True)
        watcher.start()
        url = f"http://127.0.0.1:{env.api_port}"
        load = Users(url, test, users, rate, feedback)
        segments: list[tuple[str, float, float]] = []  # (name, start, end) in perf_counter time
        decisions: list[dict] = []
        try:
            wait_ready(url)
            load.start()
            time.sleep(5)  # warm: connections, the first batches
            t = time.perf_counter()
            time.sleep(steady_s)
            segments.append(("steady", t, time.perf_counter()))
            for name in ("worse", "better"):
                _phase(name, v[name], env, stores, segments, decisions, max_phase_s)
        finally:
            load.close()
            stopping.set()
            watcher.join(5)
            supervisor.stop()
            stack.stop()
    _report(console, load, segments, decisions, v, missing)


def _phase(
    name: str, version: int, env: Settings, stores: Stores, segments: list, decisions: list, max_phase_s: float
) -> None:
    registry, accuracy = stores.registry, stores.live_accuracy
    t0, wall0 = time.perf_counter(), time.time()
    canary.start(registry, version, env, f"bench canary: the {name} candidate", share=0.05)
    share, seg_start = 0.05, t0
    history_len = len(registry.history())
    while time.perf_counter() - t0 < max_phase_s:
        time.sleep(0.5)
        ended = registry.canary() is None  # read before the history: its last entry is then in it
        history = registry.history()
        for change in history[history_len:]:
            now = time.perf_counter()
            decisions.append({
                "phase": name, "action": change.action, "at_s": change.at - wall0,
                "canary_judged": accuracy.get(version).n, "reason": change.reason,
            })  # fmt: skip
            segments.append((f"{name} {share:.0%}", seg_start, now))
            seg_start = now
            slot = registry.canary()
            share = slot.share if slot else (1.0 if change.action == "promote" else 0.0)
        history_len = len(history)
        if ended:
            break
    else:
        segments.append((f"{name} {share:.0%} (undecided)", seg_start, time.perf_counter()))
        decisions.append({"phase": name, "action": "none", "at_s": time.time() - wall0,
                          "canary_judged": accuracy.get(version).n, "reason": f"undecided after {max_phase_s:.0f} s"})  # fmt: skip
        if registry.canary():
            canary.abort(registry, "bench: phase over")
    if registry.live() != version:
        return
    time.sleep(10)  # after a promotion: everyone on it
    segments.append((f"{name} 100%", seg_start, time.perf_counter()))


def _report(
    console: BenchConsole, load: Users, segments: list, decisions: list, v: dict[str, int], missing: list[str]
) -> None:
    table = Table("phase", "decision", "after s", "canary judged", "reason", title="canary decisions")
    for d in decisions:
        table.add_row(d["phase"], d["action"], f"{d['at_s']:.1f}", str(d["canary_judged"]), d["reason"][:140])
    console.print(table)
    steady = next(s for s in segments if s[0] == "steady")
    steady_p99 = _pct([a.seconds for a in load.answers if steady[1] <= a.started < steady[2] and a.status == 200], 0.99)
    table = Table("segment", "seconds", "requests", "errors", "served by canary", "p99 ms", "p99 / steady", title="predict latency per share")
    for seg, start, end in segments:
        calls = [a for a in load.answers if start <= a.started < end]
        ok = [a.seconds for a in calls if a.status == 200]
        cand = v.get(seg.split()[0])
        by_canary = sum(a.version == cand for a in calls) if cand else 0
        p99 = _pct(ok, 0.99)
        table.add_row(
            seg, f"{end - start:.0f}", str(len(calls)), str(sum(a.status != 200 for a in calls)),
            f"{by_canary / len(calls):.1%}" if calls and cand else "",
            f"{p99 * 1000:.1f}", f"{p99 / steady_p99:.2f}x" if ok else "",
        )  # fmt: skip
    console.print(table)
    seen_worse = {a.user for a in load.answers if a.version == v["worse"]}
    active = {a.user for seg, start, end in segments if seg.startswith("worse") for a in load.answers if start <= a.started < end}
    console.print(
        f"users who saw the worse version before its rollback: {len(seen_worse)} of {len(active)} active "
        f"({len(seen_worse) / max(len(active), 1):.1%}); answers it gave: {sum(a.version == v['worse'] for a in load.answers)}"
    )
    errors = sum(a.status != 200 for a in load.answers)
    console.print(
        f"requests: {len(load.answers)}, failed: {errors}; thumbs sent: {load.judged_sent}; "
        f"median latency {statistics.median([a.seconds for a in load.answers]) * 1000:.1f} ms; "
        f"intents live lacks: {', '.join(missing[:8])}"
    )
