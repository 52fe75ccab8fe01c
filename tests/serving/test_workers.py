"""`online serve --workers 2`: two worker processes on one port, each a replica serving the live version.

/metrics answers for all of them (counters summed, each worker's gauges under its pid), a request never
reaches a worker that has no model yet, a worker that dies is replaced, and stopping the parent stops
every worker."""

from __future__ import annotations

import os
import re
import signal
import socket

import httpx
import pytest

from online.serving.metrics import MULTIPROCESS_ENV
from online.wiring.stores import Stores
from services.api.main import listening_sockets, worker_environment, worker_threads
from services.supervisor import api_process
from tests import helpers
from tests.helpers import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_serve_one_port_with_one_metrics_page(settings, tmp_path):
    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 40, seed=7))
    s = settings.model_copy(update={"golden_path": golden, "model_poll_s": 0.5})
    stores = Stores.from_settings(s)
    helpers.train_v1(s, stores.registry)
    texts = [t for t, _ in helpers.examples(helpers.OLD, 30, seed=5)]
    with api_process(s, ONLINE_API_WORKERS="2") as url:

        def loaded() -> set[int]:  # each worker's own gauge, one /metrics page for all
            try:
                page = httpx.get(f"{url}/metrics", timeout=10).text
            except httpx.HTTPError:  # a worker still starting holds its socket's connections
                return set()
            return {int(p) for p in re.findall(r'^online_model_version\{pid="(\d+)"\} 1\.0$', page, re.M)}

        def both_loaded() -> set[int]:
            now = loaded()
            return now if len(now) == 2 else set()

        pids = wait_for(both_loaded, timeout=120, what="both workers serving version 1")
        for text in texts:  # a connection each: the kernel spreads them over the workers' sockets
            with httpx.Client(base_url=url, timeout=30) as client:
                answer = client.post("/v1/predict", json={"text": text})
                assert answer.status_code == 200, answer.text
                assert answer.json()["model_version"] == 1
        page = httpx.get(f"{url}/metrics", timeout=10).text
        served = re.search(r'^online_predictions_total\{version="1"\} ([0-9.e+]+)$', page, re.M)
        assert served and float(served.group(1)) == len(texts)  # summed over the workers

        def both_answered() -> bool:  # `online status`: each worker a replica (host:pid), each answered some
            beats = {int(h.replica.rsplit(":", 1)[1]): h for h in stores.replicas.all()}
            return all(p in beats and (beats[p].memory or {}).get("answers_model", 0) > 0 for p in pids)

        wait_for(both_answered, timeout=60, what="both workers in the replica table, each with answers")

        killed = min(pids)
        os.kill(killed, signal.SIGKILL)  # a worker dies: another takes its place (and its socket)

        def replaced() -> set[int]:
            now = loaded()
            return now if len(now) == 2 and killed not in now else set()  # the dead one's gauges gone

        workers = wait_for(replaced, timeout=120, what="a new worker serving in place of the killed one")
        for text in texts[:10]:
            with httpx.Client(base_url=url, timeout=60) as client:
                assert client.post("/v1/predict", json={"text": text}).status_code == 200
    wait_for(lambda: not any(_alive(p) for p in workers), timeout=30, what="every worker stopped with the parent")


def test_a_port_in_use_is_refused_not_shared():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", taken.getsockname()[1], 2)
    group = listening_sockets("127.0.0.1", 0, 2)
    try:
        assert len({sock.getsockname() for sock in group}) == 1  # one port, a socket per worker
    finally:
        for sock in group:
            sock.close()


def test_each_worker_gets_its_share_of_the_cores_and_a_fresh_metrics_directory(settings):
    s = settings.model_copy(update={"num_threads": 8, "api_port": 8123})
    assert worker_threads(s, 2) == 4 and worker_threads(s, 3) == 2 and worker_threads(s, 16) == 1
    stale = s.state_dir / "run" / "metrics-8123" / "counter_123.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a previous run's samples")
    env = worker_environment(s, 2)
    assert env["ONLINE_NUM_THREADS"] == "4" and env["ONLINE_API_WORKERS"] == "2"
    assert env[MULTIPROCESS_ENV] == str(stale.parent) and not any(stale.parent.iterdir())
