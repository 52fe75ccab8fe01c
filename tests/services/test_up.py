"""`online up` end to end: embedded broker + Redis, version 1 trained, predictions served, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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

        wait_for(ready, timeout=240, interval=0.5, what="version 1 served by `online up`", alive=[proc])
        body = httpx.post(f"{url}/v1/predict", json={"text": "what is my bank balance"}).json()
        assert body["model_version"] == 1 and body["predictions"][0]["prediction_id"]

        stack_file = tmp_path / "state" / "stack.json"
        stack = json.loads(stack_file.read_text())
        kafka_port = int(stack["kafka_bootstrap"].rsplit(":", 1)[1])
        redis_port = int(stack["redis_url"].rsplit(":", 1)[1].split("/")[0])
        pids = _children(proc.pid)
        assert len(pids) == 5, pids  # tansu, redis, serve, consume, train
        assert set(stack["servers"].values()) <= set(pids)
        assert {p["pid"] for p in stack["processes"].values()} == set(pids)

        # a crash of Redis and of the consumer: both come back, same ports, and serving never stopped
        os.kill(stack["processes"]["redis"]["pid"], signal.SIGKILL)
        os.kill(stack["processes"]["consume"]["pid"], signal.SIGKILL)
        assert httpx.post(f"{url}/v1/predict", json={"text": "still there?"}).status_code == 200

        def restarted() -> dict:
            procs = json.loads(stack_file.read_text())["processes"]
            return procs if procs["redis"]["restarts"] == 1 and procs["consume"]["restarts"] == 1 else {}

        procs = wait_for(restarted, timeout=60, what="redis and the consumer restarted")
        assert all(_alive(procs[name]["pid"]) for name in ("redis", "consume"))
        assert not any(_alive(stack["processes"][name]["pid"]) for name in ("redis", "consume"))  # reaped
        wait_for(lambda: port_open(redis_port), timeout=30, what="redis on its old port")
        wait_for(
            lambda: httpx.get(f"{url}/readyz", timeout=2).json()["dependencies"]["redis"]["up"],
            timeout=60, what="the API sees redis again",
        )  # fmt: skip
        pids = _children(proc.pid)
        assert len(pids) == 5, pids
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=10, what="no child process left")
    for p in (port, kafka_port, redis_port):
        assert not port_open(p), f"port {p} still bound"
    assert not (tmp_path / "state" / "stack.json").exists()


def test_supervisor_restarts_with_backoff_then_gives_up_on_a_part_that_keeps_dying(monkeypatch, tmp_path):
    from services import supervisor as sup

    monkeypatch.setattr(sup, "RESTART_BACKOFF_S", 0.01)
    flaky = sup.Unit("flaky", lambda: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    steady = sup.Unit("steady", lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))

    class NoServers:
        servers: list = []

        def write_stack_file(self, units) -> None:
            self.last = {u.name: u.restarts for u in units}

    stack = NoServers()
    supervisor = sup.Supervisor(stack, [flaky, steady])
    supervisor.start_all()
    try:
        why = wait_for(lambda: supervisor.check(time.monotonic()), timeout=60, interval=0.05, what="giving up")
        assert "flaky" in why and "exit code 3" in why
        assert flaky.restarts == sup.MAX_FAST_FAILURES - 1 == stack.last["flaky"]  # restarted, then given up
        assert steady.restarts == 0 and steady.proc.poll() is None  # the healthy part was left alone
    finally:
        sup.stop_processes(supervisor.processes())


def test_commands_next_to_online_up_take_its_servers_and_task(tmp_path, monkeypatch):
    """`online train --now` beside `online up --task generate` runs a generative round: the stack file
    gives the task unless ONLINE_TASK says otherwise, and the servers unless they are configured."""
    from online.settings import Settings
    from services.supervisor import STACK_FILE, running_stack

    state = tmp_path / "state"
    state.mkdir()
    info = {"pid": os.getpid(), "kafka_bootstrap": "127.0.0.1:9", "redis_url": "redis://127.0.0.1:7/0", "task": "generate"}
    (state / STACK_FILE).write_text(json.dumps(info))
    for name in ("ONLINE_TASK", "ONLINE_KAFKA_BOOTSTRAP", "ONLINE_REDIS_URL", "ONLINE_REDIS_SENTINELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONLINE_STATE_DIR", str(state))
    found = running_stack(Settings())
    assert (found.task, found.kafka_bootstrap, found.redis_url) == ("generate", "127.0.0.1:9", "redis://127.0.0.1:7/0")
    monkeypatch.setenv("ONLINE_TASK", "classify")
    monkeypatch.setenv("ONLINE_REDIS_URL", "redis://10.0.0.1:6379/0")
    mine = running_stack(Settings())
    assert (mine.task, mine.redis_url) == ("classify", "redis://10.0.0.1:6379/0"), "what the user set wins"
    (state / STACK_FILE).write_text(json.dumps({**info, "pid": 2**22 + 7}))  # its `online up` is gone
    assert running_stack(Settings()).kafka_bootstrap is None


def test_a_second_stack_on_the_same_state_dir_is_refused(tmp_path):
    """Two stacks on one state dir would run two Redis servers on one AOF: the second `online up`
    exits at once, naming the first; once the first is gone the dir is free again."""
    from services.supervisor import _lock_state_dir

    state = tmp_path / "state"
    held = _lock_state_dir(state)
    env = {**os.environ, "ONLINE_STATE_DIR": str(state), "ONLINE_API_PORT": str(free_port())}
    for name in ("ONLINE_KAFKA_BOOTSTRAP", "ONLINE_REDIS_URL", "ONLINE_REDIS_SENTINELS"):
        env.pop(name, None)
    second = subprocess.run(
        [sys.executable, "-m", "services", "up"], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode != 0 and f"(pid {os.getpid()})" in second.stderr, second.stderr[-2000:]
    assert not (state / "redis").exists() and not (state / "stack.json").exists(), "nothing of it started"
    held.close()
    _lock_state_dir(state).close()


def test_a_stack_killed_outright_keeps_its_dir_locked_while_its_redis_runs(tmp_path):
    """SIGKILL of the stack's process leaves its Redis running on the dir's AOF: the lock goes on with it,
    so no second stack starts a second Redis there; once that Redis is gone, the dir is free."""
    from services.embedded import start_redis
    from services.supervisor import _lock_state_dir

    state = tmp_path / "state"
    lock = _lock_state_dir(state)
    rds = start_redis(state / "redis", hold_fd=lock.fileno())
    try:
        lock.close()  # what the kernel does to a killed stack's files
        with pytest.raises(SystemExit, match="another `online up`"):
            _lock_state_dir(state)
    finally:
        rds.stop()
    _lock_state_dir(state).close()
