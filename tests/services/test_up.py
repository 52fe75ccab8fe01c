"""`online up` end to end: embedded broker + Redis, version 1 trained, predictions served, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from services.embedded import free_port, port_open
from tests.helpers import DATA_DIR, wait_for


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_serves_then_stops_cleanly(tmp_path, tiny_base):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ONLINE_")},
        "ONLINE_STATE_DIR": str(tmp_path / "state"),
        "ONLINE_DATA_DIR": str(DATA_DIR),
        "ONLINE_BASE_MODEL": tiny_base,
        "ONLINE_SEED_DOMAINS": "1",
        "ONLINE_SEED_PER_LABEL": "10",
        "ONLINE_API_PORT": str(port),
    }
    proc = subprocess.Popen([sys.executable, "-m", "services", "up"], env=env, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=240, interval=0.5, what="version 1 served by `online up`")
        body = httpx.post(f"{url}/v1/predict", json={"text": "what is my bank balance"}).json()
        assert body["model_version"] == 1 and body["predictions"][0]["prediction_id"]

        stack = json.loads((tmp_path / "state" / "stack.json").read_text())
        kafka_port = int(stack["kafka_bootstrap"].rsplit(":", 1)[1])
        redis_port = int(stack["redis_url"].rsplit(":", 1)[1].split("/")[0])
        pids = _children(proc.pid)
        assert len(pids) == 5, pids  # tansu, redis, serve, consume, train
        assert set(stack["servers"].values()) <= set(pids)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=10, what="no child process left")
    for p in (port, kafka_port, redis_port):
        assert not port_open(p), f"port {p} still bound"
    assert not (tmp_path / "state" / "stack.json").exists()
