"""`online up`: the embedded stack and the three application processes under one supervisor.

Layout (the same processes production runs separately): Tansu broker and Redis (only when no address is
configured), then `online serve`, `online consume` and `online train` as child processes. Ctrl-C or
SIGTERM stops the application processes first, then the servers, each by PID; nothing is left bound.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from online.bus import ensure_topics
from online.settings import Settings
from services.embedded import Server, free_port, port_open, start_redis, start_tansu

log = logging.getLogger("online.up")
STACK_FILE = "stack.json"


def child_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a child `online` process: ours without ``ONLINE_*``, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ONLINE_")}
    return {**inherited, **settings.to_env(), **overrides}


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself is killed (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class EmbeddedStack:
    """Whatever servers this process started; :meth:`stop` ends them by PID."""

    settings: Settings
    servers: list[Server]

    @classmethod
    def start(cls, settings: Settings) -> "EmbeddedStack":
        servers: list[Server] = []
        updates: dict[str, str] = {}
        state = settings.state_dir.resolve()
        try:
            if not settings.kafka_bootstrap:
                tansu = start_tansu(state / "tansu")
                servers.append(tansu)
                updates["kafka_bootstrap"] = f"127.0.0.1:{tansu.port}"
            if not settings.redis_url:
                rds = start_redis(state / "redis", fsync=settings.redis_fsync)
                servers.append(rds)
                updates["redis_url"] = f"redis://127.0.0.1:{rds.port}/0"
            settings = settings.model_copy(update=updates)
            ensure_topics(settings)
        except BaseException:
            for s in reversed(servers):
                s.stop()
            raise
        stack = cls(settings, servers)
        stack._write_stack_file()
        return stack

    def _write_stack_file(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": os.getpid(),
            "kafka_bootstrap": self.settings.kafka_bootstrap,
            "redis_url": self.settings.redis_url,
            "servers": {s.name: s.pid for s in self.servers},
        }
        (self.settings.state_dir / STACK_FILE).write_text(json.dumps(info, indent=2))

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        (self.settings.state_dir / STACK_FILE).unlink(missing_ok=True)


def running_stack(settings: Settings) -> Settings:
    """Fill unset server addresses from a running `online up`/`online stack` in the same state dir."""
    if settings.kafka_bootstrap and settings.redis_url:
        return settings
    path = settings.state_dir / STACK_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return settings
    return settings.model_copy(
        update={
            "kafka_bootstrap": settings.kafka_bootstrap or info.get("kafka_bootstrap"),
            "redis_url": settings.redis_url or info.get("redis_url"),
        }
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_up(settings: Settings, parts: tuple[str, ...] = ("serve", "consume", "train")) -> int:
    """Run the whole system until Ctrl-C/SIGTERM or until a part dies. Returns the exit code."""
    if "serve" in parts and port_open(settings.api_port, settings.api_host):
        raise SystemExit(f"port {settings.api_port} is in use: set ONLINE_API_PORT to a free port")
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    stack: EmbeddedStack | None = None
    children: dict[str, subprocess.Popen] = {}
    try:
        stack = EmbeddedStack.start(settings)
        log.info("kafka %s, redis %s", stack.settings.kafka_bootstrap, stack.settings.redis_url)
        for part in parts:
            children[part] = subprocess.Popen(
                [sys.executable, "-m", "services", part],
                env=child_env(stack.settings),
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
                preexec_fn=_die_with_parent,
            )
            log.info("started `online %s` (pid %d)", part, children[part].pid)
        while True:
            for part, proc in children.items():
                if proc.poll() is not None:
                    log.error("`online %s` exited with %s; stopping everything", part, proc.returncode)
                    return 1
            time.sleep(0.5)
    except _Stop as why:
        log.info("%s received: stopping", why)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_processes(list(children.values()))
        if stack:
            stack.stop()
        log.info("stopped")


def stop_processes(procs: list[subprocess.Popen], timeout: float = 20.0) -> None:
    """SIGTERM each, wait, then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def api_process(settings: Settings, **env_overrides: str) -> Iterator[str]:
    """`online serve` in a child process; yields its base URL once /readyz says ready."""
    port = free_port()
    env = child_env(settings.model_copy(update={"api_port": port}), **env_overrides)
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
