"""`online up`: the embedded stack and the three application processes under one supervisor.

Layout (the same processes production runs separately): Tansu broker and Redis (only when no address is
configured), then `online serve` (one or more replicas), `online consume` and `online train` as child
processes. Each is supervised: one that dies is restarted with backoff on the same port and data, and
`online up` gives up (exit 1, everything stopped) only when one keeps dying right after its start.
Ctrl-C or SIGTERM stops the application processes first, then the servers, each by PID; nothing is left bound.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


def die_with_parent() -> None:
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
    lock: object | None = None  # the state dir's lock file, held open (and locked) while the stack runs

    @classmethod
    def start(cls, settings: Settings) -> "EmbeddedStack":
        servers: list[Server] = []
        updates: dict[str, str] = {}
        state = settings.state_dir.resolve()
        lock = _lock_state_dir(state)
        try:
            if not settings.kafka_bootstrap:
                tansu = start_tansu(state / "tansu")
                servers.append(tansu)
                updates["kafka_bootstrap"] = f"127.0.0.1:{tansu.port}"
            if not settings.redis_url and not settings.redis_sentinels:
                rds = start_redis(
                    state / "redis", fsync=settings.redis_fsync, maxmemory=settings.redis_maxmemory,
                    maxmemory_policy=settings.redis_maxmemory_policy, hold_fd=lock.fileno(),
                )  # fmt: skip
                servers.append(rds)
                updates["redis_url"] = f"redis://127.0.0.1:{rds.port}/0"
            settings = settings.model_copy(update=updates)
            ensure_topics(settings)
        except BaseException:
            for s in reversed(servers):
                s.stop()
            lock.close()
            raise
        stack = cls(settings, servers, lock)
        stack.write_stack_file()
        return stack

    def restarter(self, name: str) -> Callable[[], subprocess.Popen]:
        """Start server ``name`` again on its port with its data (Redis replays its AOF; Tansu comes
        back empty, so the topics are created again)."""

        def restart() -> subprocess.Popen:
            i = next(i for i, s in enumerate(self.servers) if s.name == name)
            old = self.servers[i]
            state = self.settings.state_dir.resolve()
            if name == "redis":
                new = start_redis(
                    state / "redis", port=old.port, fsync=self.settings.redis_fsync,
                    maxmemory=self.settings.redis_maxmemory, maxmemory_policy=self.settings.redis_maxmemory_policy,
                    hold_fd=self.lock.fileno() if self.lock is not None else None,  # type: ignore[attr-defined]
                )  # fmt: skip
                self.servers[i] = new
            else:
                new = start_tansu(state / "tansu", port=old.port)
                self.servers[i] = new  # recorded first: stopped with the stack whatever happens next
                ensure_topics(self.settings)
            return new.proc

        return restart

    def write_stack_file(self, units: list | None = None) -> None:
        """``stack.json``: addresses for `online` commands in the same state dir, every supervised
        process's pid and restart count (for `online status`, and for chaos tests to know what to kill)."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": os.getpid(),
            "kafka_bootstrap": self.settings.kafka_bootstrap,
            "redis_url": self.settings.redis_url,
            "task": self.settings.task,
            "servers": {s.name: s.pid for s in self.servers},
            "processes": {u.name: {"pid": u.proc.pid, "restarts": u.restarts} for u in units or [] if u.proc},
        }
        path = self.settings.state_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(path)  # readers never see half a file

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        (self.settings.state_dir / STACK_FILE).unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.close()  # type: ignore[attr-defined]  # the lock goes with the file


LOCK_FILE = "stack.lock"


def _lock_state_dir(state: Path):
    """Hold the state dir for this stack: two stacks on one dir would run two Redis servers on one AOF
    (and each would delete the other's stack file). The lock dies with the process, however it ends."""
    import fcntl

    state.mkdir(parents=True, exist_ok=True)
    handle = open(state / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise SystemExit(
            f"another `online up` or `online stack` (pid {holder}) runs on {state}: stop it first (it may still "
            "be stopping), or set ONLINE_STATE_DIR to another folder"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def running_stack(settings: Settings) -> Settings:
    """Fill unset server addresses, and the task unless ``ONLINE_TASK`` says it, from a running
    `online up`/`online stack` in the same state dir (so `online train --now` next to `online up --task
    generate` runs a generative round)."""
    path = settings.state_dir / STACK_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return settings
    update = {
        "kafka_bootstrap": settings.kafka_bootstrap or info.get("kafka_bootstrap"),
        "redis_url": settings.redis_url or (None if settings.redis_sentinels else info.get("redis_url")),
    }
    if "task" not in settings.model_fields_set and info.get("task"):
        update["task"] = info["task"]
    return settings.model_copy(update=update)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame) -> None:
    raise _Stop(signal.Signals(signum).name)


RESTART_BACKOFF_S = 1.0  # first restart delay; doubles with each fast failure in a row
RESTART_BACKOFF_MAX_S = 30.0
FAST_FAILURE_S = 30.0  # a part that dies sooner than this after its start failed fast
MAX_FAST_FAILURES = 5  # in a row: then `online up` gives up, loudly


@dataclass
class Unit:
    """One supervised process: an embedded server or an `online` child, restarted when it dies."""

    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    fast_failures: int = 0
    restarts: int = 0
    restart_at: float | None = None  # a restart is due at this time (monotonic)

    def launch(self) -> None:
        self.proc = self.start()
        self.started_at = time.monotonic()
        self.restart_at = None


class Supervisor:
    """Keeps every unit running: a dead one is restarted with exponential backoff (same ports, same
    data: Redis replays its AOF), logged and counted; after ``MAX_FAST_FAILURES`` fast failures in a
    row of one unit it gives up and stops everything, with the unit's log named."""

    def __init__(self, stack: "EmbeddedStack", units: list[Unit]) -> None:
        self.stack = stack
        self.units = units

    def start_all(self) -> None:
        for unit in self.units:
            if unit.proc is None:
                unit.launch()
                log.info("started %s (pid %d)", unit.name, unit.proc.pid)
        self.stack.write_stack_file(self.units)

    def check(self, now: float) -> str | None:
        """One supervision pass; returns why it gives up, or None."""
        changed = False
        for unit in self.units:
            if unit.restart_at is None and unit.proc is not None and unit.proc.poll() is not None:
                lived = now - unit.started_at
                unit.fast_failures = unit.fast_failures + 1 if lived < FAST_FAILURE_S else 1
                if unit.fast_failures >= MAX_FAST_FAILURES:
                    return (
                        f"{unit.name} died {unit.fast_failures} times in a row within {FAST_FAILURE_S:.0f} s "
                        f"of starting (last exit code {unit.proc.returncode}); giving up"
                    )
                delay = min(RESTART_BACKOFF_S * 2 ** (unit.fast_failures - 1), RESTART_BACKOFF_MAX_S)
                unit.restart_at = now + delay
                log.warning(
                    "%s (pid %d) exited with %s after %.0f s; restarting in %.0f s",
                    unit.name, unit.proc.pid, unit.proc.returncode, lived, delay,
                )  # fmt: skip
            elif unit.restart_at is not None and now >= unit.restart_at:
                try:
                    unit.launch()
                except Exception as exc:  # e.g. the port is taken: counts as a fast failure
                    unit.fast_failures += 1
                    if unit.fast_failures >= MAX_FAST_FAILURES:
                        return f"{unit.name} could not be restarted {unit.fast_failures} times: {exc}"
                    unit.restart_at = now + min(
                        RESTART_BACKOFF_S * 2 ** (unit.fast_failures - 1), RESTART_BACKOFF_MAX_S
                    )
                    log.warning("%s did not restart (%s); trying again", unit.name, exc)
                    continue
                unit.restarts += 1
                changed = True
                log.warning("restarted %s (pid %d; restart %d)", unit.name, unit.proc.pid, unit.restarts)
        if changed:
            self.stack.write_stack_file(self.units)
        return None

    def processes(self) -> list[subprocess.Popen]:
        return [u.proc for u in self.units if u.proc is not None]

    def watch(self, stop: threading.Event, interval: float = 0.5) -> str | None:
        """Supervise until ``stop`` is set (None) or a unit keeps dying (why it gives up)."""
        while not stop.wait(interval):
            why = self.check(time.monotonic())
            if why:
                return why
        return None

    def stop(self) -> None:
        """The `online` children first (SIGTERM, then SIGKILL), then the embedded servers."""
        servers = {s.proc for s in self.stack.servers}
        stop_processes([p for p in self.processes() if p not in servers])
        self.stack.stop()


def _child(settings: Settings, part: str, log_path: Path | None, **overrides) -> Callable[[], subprocess.Popen]:
    def start() -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else None  # None: the supervisor's own terminal
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "services", part],
                env=child_env(settings.model_copy(update=overrides)),
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
                preexec_fn=die_with_parent,
            )
        finally:
            if out:
                out.close()

    return start


def supervised_units(
    stack: "EmbeddedStack", parts: tuple[str, ...], replicas: int = 1, log_dir: Path | None = None
) -> list[Unit]:
    """The embedded servers (already running) and the `online` children to start, as supervised units.
    API replica ``i`` listens on ``api_port + i``."""
    now = time.monotonic()
    units = [Unit(s.name, stack.restarter(s.name), proc=s.proc, started_at=now) for s in stack.servers]
    names: list[tuple[str, str, dict]] = []
    for part in parts:
        if part == "serve":
            for i in range(replicas):
                port = stack.settings.api_port + i
                names.append(("serve" if replicas == 1 else f"serve-{i}", "serve", {"api_port": port}))
        else:
            names.append((part, part, {}))
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    for name, part, overrides in names:
        log_path = log_dir / f"{name}.log" if log_dir else None
        units.append(Unit(name, _child(stack.settings, part, log_path, **overrides)))
    return units


def run_up(settings: Settings, parts: tuple[str, ...] = ("serve", "consume", "train"), replicas: int = 1) -> int:
    """Run the whole system until Ctrl-C/SIGTERM, restarting what dies; returns the exit code (1: gave up).

    ``replicas`` API processes listen on ``api_port``, ``api_port + 1``, ... (a load balancer's job to
    spread; the bench's client does it itself)."""
    ports = [settings.api_port + i for i in range(replicas)] if "serve" in parts else []
    for port in ports:
        if port_open(port, settings.api_host):
            raise SystemExit(f"port {port} is in use: set ONLINE_API_PORT to a free port")
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    stack: EmbeddedStack | None = None
    supervisor: Supervisor | None = None
    try:
        stack = EmbeddedStack.start(settings)
        log.info("kafka %s, redis %s", stack.settings.kafka_bootstrap, stack.settings.redis_url)
        if conflict := _task_conflict(stack.settings):
            raise SystemExit(conflict)  # before any part starts: nothing would serve
        supervisor = Supervisor(stack, supervised_units(stack, parts, replicas))
        supervisor.start_all()
        why = supervisor.watch(threading.Event())  # until a signal raises _Stop, or it gives up
        log.error("%s; stopping everything (logs: %s)", why, stack.settings.state_dir.resolve())
        return 1
    except _Stop as why:
        log.info("%s received: stopping", why)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if supervisor:
            supervisor.stop()
        elif stack:
            stack.stop()
        log.info("stopped")


def _task_conflict(settings: Settings) -> str | None:
    from online.wiring.stores import Stores

    stores = Stores.from_settings(settings)
    try:
        return stores.registry.task_conflict(settings.task)
    finally:
        stores.close()


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
    """`online serve` in a child process; yields its base URL once /readyz says ready. Its log (an
    access line per request) goes to ``<state_dir>/logs/api-<port>.log``, not into the caller's output."""
    port = free_port()
    env = child_env(settings.model_copy(update={"api_port": port}), **env_overrides)
    log_path = settings.state_dir / "logs" / f"api-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log_file
        )
        try:
            try:
                wait_ready(url, proc)
            except (RuntimeError, TimeoutError) as exc:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}; its log ({log_path}) ends:\n{tail}") from None
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
