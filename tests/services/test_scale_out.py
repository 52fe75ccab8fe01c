"""Scale-out on one broker and one Redis: two API processes, two feedback consumers (one group), two
trainers. Feedback spread over the partitions lands in the buffer exactly once, both consumers take a
share, only one trainer trains at a time, and both APIs swap on every promotion."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import httpx
import pytest

from online.bus import ensure_topics
from online.data import Clinc150
from online.wiring.stores import Stores
from services.embedded import free_port
from services.supervisor import api_process, child_env, stop_processes
from tests.helpers import wait_for


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_two_apis_two_consumers_two_trainers(kafka_settings, tmp_path):
    s = kafka_settings.model_copy(update={
        "feedback_partitions": 4, "train_min_new": 30, "train_max_wait_s": 1.0, "train_poll_s": 0.2,
        "rehearsal_min": 32, "train_epochs": 1, "gate_max_golden_drop": 1.0, "gate_label_max_drop": 1.0,
        "gate_latency_ratio": 100.0, "model_poll_s": 1.0, "drift_reference_size": 200,
        "label_policy": "open",  # one source teaches a whole new domain here: scale-out, not label governance
    })  # fmt: skip
    ensure_topics(s)
    stores = Stores.from_settings(s)
    registry, buffer = stores.registry, stores.buffer
    metric_ports = [free_port(), free_port()]
    procs = []
    try:
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services", "train"],
                    env=child_env(s),
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"train{i}.log", "w"),
                )
            )
            env = child_env(s, ONLINE_CONSUMER_METRICS_PORT=str(metric_ports[i]))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services", "consume"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"consume{i}.log", "w"),
                )
            )
        v1 = wait_for(registry.live, timeout=300, what="version 1 from one of the two trainers", alive=procs)
        assert len(registry.list()) == 1  # the other trainer waited for the lock instead of training too

        clinc = Clinc150.open(s.data_dir)
        intents = clinc.domains[list(clinc.domains)[1]]
        by_intent = {i: [t for t, lab in clinc.split("train") if lab == i] for i in intents}
        with api_process(s) as a, api_process(s) as b:

            def served() -> set[int]:
                return {httpx.get(f"{u}/readyz").json()["model_version"] for u in (a, b)}

            sent = 0
            for batch in range(2):
                events = [
                    {"kind": "label", "text": t, "label": intent, "source": "scale", "event_id": uuid.uuid4().hex}
                    for intent in intents
                    for t in by_intent[intent][4 * batch : 4 * batch + 4]
                ]
                for k, url in enumerate((a, b)):  # both replicas take feedback
                    resp = httpx.post(f"{url}/v1/feedback", json={"events": events[k::2]}, timeout=30)
                    assert resp.status_code == 202, resp.text
                sent += len(events)
                before = registry.live()
                wait_for(
                    lambda: buffer.size() == sent and buffer.new_count() == 0,
                    timeout=300,
                    what=f"batch {batch} stored and trained",
                )
                live = wait_for(lambda: (v := registry.live()) != before and v, timeout=120, what="a promotion")
                wait_for(lambda: served() == {registry.live()}, timeout=60, what="both APIs on the new version")
                assert live > v1

        stats = buffer.stats()
        assert sum(st.total for st in stats) == sent and buffer.size() == sent  # exactly once
        assert sum(st.duplicates for st in stats) == 0
        consumed = [_metric(p, "online_consumer_records_total") for p in metric_ports]
        assert sum(consumed) >= sent and all(c > 0 for c in consumed), consumed  # both consumers had partitions

        rounds = [m for m in registry.list() if m.round and m.round.kind == "continual"]
        assert len(rounds) >= 2
        spans = sorted((m.round.started_at, m.created_at, m.round.trained_by) for m in rounds)
        for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
            assert start >= end, "two rounds overlapped"
        assert all(p.poll() is None for p in procs), "a trainer or consumer died"
    finally:
        stop_processes(procs)
