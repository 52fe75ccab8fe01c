"""The benchmarks' HTTP load generators: wrk (native) through its Lua script, the Python client as the
fallback; both report what measured and the CPU they and the server took."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.common import LoadResult, cpu_seconds, http_load, listening_pid, native_client, wrk_load


class _Predict(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 422 if body["text"] == "refuse me" else 200
        out = json.dumps({"model_version": 1, "echo": body["text"]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Predict)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_server_process_and_its_cpu_are_found(server):
    assert listening_pid(server) == os.getpid()
    assert cpu_seconds(os.getpid()) > 0 and cpu_seconds(None) is None


def test_the_python_client_reports_itself_and_its_cpu(server):
    r = http_load(server, ["a", "b"], 40, 4, server_pid=os.getpid())
    assert r.client == "python" and r.requests == 40 and r.errors == 0 and r.p50 > 0
    assert r.client_cpu is not None and r.server_cpu is not None and 0 < r.cpu_share(r.client_cpu) <= 1


@pytest.mark.skipif(native_client() is None, reason="wrk is not installed (.ci/run installs it)")
def test_wrk_posts_the_texts_and_reports_percentiles_errors_and_its_cpu(server):
    r = wrk_load(server, ["a", "refuse me", 'quotes " and ünïcode'], 1, 2, warm_s=0)
    assert r.client == "wrk" and r.requests > 10
    assert 0.2 < r.errors / r.requests < 0.5  # one body in three is refused: non-2xx counts as an error
    assert 0 < r.pct(0.5) <= r.pct(0.99) and r.p50 == r.pct(0.5)
    assert r.client_cpu is not None and r.client_cpu >= 0 and r.seconds > 0.5


@pytest.mark.skipif(native_client() is None, reason="wrk is not installed (.ci/run installs it)")
def test_wrk_in_slices_sums_its_runs(server):
    r = wrk_load(server, ["a", "refuse me"], 2, 2, warm_s=0, slices=2)  # two runs of 1 s, each its own connections
    assert r.client == "wrk" and 1.8 < r.seconds < 2.5 and r.requests > 20
    assert 0.3 < r.errors / r.requests < 0.7  # the errors of both runs, against the requests of both
    assert 0 < r.pct(0.5) <= r.pct(0.99)


def test_a_servers_cpu_counts_its_worker_processes():
    """`online serve --workers N`: the parent only waits; the CPU is its workers'."""
    import subprocess
    import sys
    import time

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(60)"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"]
    )
    try:
        deadline = time.monotonic() + 30
        while (cpu_seconds(parent.pid) or 0) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds(parent.pid) >= 0.5  # the parent alone used a fraction of that
    finally:
        parent.kill()
        parent.wait()


def test_an_engine_measured_before_and_after_the_http_rows_is_one_row():
    from bench.serve import _merged

    before, after = LoadResult(1300, 0, 1.0, [0.02] * 4), LoadResult(1200, 0, 1.0, [0.03] * 4)
    both = _merged(before, after)
    assert both.throughput == 1250 and both.requests == 2500 and len(both.latencies) == 8
