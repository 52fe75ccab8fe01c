"""The API process: what `online serve` runs, in its own process or in each of its worker processes.

With ``ONLINE_API_WORKERS`` > 1, uvicorn's worker supervisor (:class:`Workers`) spawns the workers, by
import string (``services.api.main:worker_app``), so each worker reads its settings once, here, from
the environment the parent prepared (:func:`worker_environment`): its share of the cores and a shared
directory for the Prometheus samples of every worker. Each worker is a replica of its own (its model,
event loop, forward lane and side-effect thread, its name ``host:pid`` in `online status`) on a socket
of its own; they share the port.

Why workers: one event loop serves every connection of a replica and its lanes take the GIL in turns
with it, so at 32 clients the lanes wait on the loop between batches. Two processes of one lane each
served 6-11% more requests a second than one process of two lanes at 32 clients, 4-23% at 8, on 2
cores; a lone request then runs on one thread (issue 34, docs/benchmarks.md)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys

from fastapi import FastAPI
from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from online.serving.metrics import MULTIPROCESS_ENV, worker_stopped
from online.settings import Settings

log = logging.getLogger("online.api")


def prepare_process(settings: Settings) -> None:
    """The thread budget of an API process (see `online serve`)."""
    from online.learning.fit import configure_threads

    configure_threads(settings.num_threads)
    # The event loop, the forward lanes and the side-effect thread take turns on the GIL; at Python's
    # 5 ms a lane back from ONNX Runtime (which ran without it) waits on whoever holds it (issue 34).
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


def worker_threads(settings: Settings, workers: int) -> int:
    """Each worker's CPU threads: the serve command's budget (``ONLINE_NUM_THREADS``, unset: the cores
    it may run on) split between its workers, at least one each. A worker's lanes follow from it (one
    lane on one thread, at 2 workers on 2 cores)."""
    cores = settings.num_threads or len(os.sched_getaffinity(0))  # online.engines.cpu_threads, without torch here
    return max(1, cores // workers)


def worker_environment(settings: Settings, workers: int) -> dict[str, str]:
    """What the parent puts in its environment before uvicorn spawns ``workers`` workers: their thread
    share, their count (so each knows it is one of several), and an empty directory for their metrics
    (the previous run's samples removed: a worker's counters start at 0, as a single process's do)."""
    metrics = settings.state_dir / "run" / f"metrics-{settings.api_port}"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True)
    return {
        "ONLINE_NUM_THREADS": str(worker_threads(settings, workers)),
        "ONLINE_API_WORKERS": str(workers),
        MULTIPROCESS_ENV: str(metrics),
    }


def worker_app() -> FastAPI:
    """One worker's app (uvicorn calls it in each worker process: ``factory=True``)."""
    from services.api.app import create_app
    from services.supervisor import die_with_parent
    from services.wiring import current

    die_with_parent()  # a parent killed outright (SIGKILL) takes its workers with it: none serves on, orphaned
    wiring = current()
    wiring.logging()
    settings = wiring.stack
    prepare_process(settings)
    return create_app(settings)


def listening_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` sockets bound to one address with ``SO_REUSEPORT``: the kernel spreads new connections
    over them by a hash of each connection's addresses. A single socket shared by the workers was not
    shared fairly: the first worker awake accepts every connection waiting, so 32 clients connecting at
    once split 30/2, 25/7 and 18/14 in three runs (issue 34). The address is first bound once without
    ``SO_REUSEPORT``, so a port another server listens on is refused (:class:`OSError`) instead of
    joined: two servers would otherwise share its connections without a word."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]  # port 0: one chosen here, for them all
    sockets = []
    for _ in range(n):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sockets.append(sock)
    return sockets


RESTART_READY_S = 300.0  # SIGHUP: how long a replacement may take to serve (model load included)


class Workers(Multiprocess):
    """uvicorn's worker supervisor (restarts a worker that dies, stops them all on SIGINT/SIGTERM,
    replaces them one by one on SIGHUP), with a listening socket of its own for each worker
    (:func:`listening_sockets`). A replacement takes over its predecessor's socket: connections the
    kernel queued there meanwhile wait for it (the seconds of its model load) instead of being reset.
    Scaling by SIGTTIN/SIGTTOU is not offered: a worker count is ONLINE_API_WORKERS, set at start."""

    def _process(self, index: int) -> Process:
        return Process(self.config, [self.sockets[index]])

    def init_processes(self) -> None:
        for index in range(len(self.sockets)):
            process = self._process(index)
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        for index, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung or gone
            process.join()
            if process.pid is not None:
                worker_stopped(process.pid)  # its gauges out of /metrics
            if process.exitcode == STARTUP_FAILURE:  # the app cannot start: a restart would fail the same way
                log.error("API worker %s could not start: stopping", process.pid)
                self.should_exit.set()
                return
            log.warning(
                "API worker %s ended (exit code %s): starting another in its place", process.pid, process.exitcode
            )
            replacement = self._process(index)
            replacement.start()
            self.processes[index] = replacement

    def restart_all(self) -> None:
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._process(index)
            new.start()
            if not new.wait_until_ready(RESTART_READY_S, self.should_exit):
                new.kill()
                new.join()
                if new.pid is not None:
                    worker_stopped(new.pid)
                log.error("API worker %s did not serve within %.0f s: restart aborted, %s kept", new.pid,
                          RESTART_READY_S, old.pid)  # fmt: skip
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the worker count is ONLINE_API_WORKERS (--workers), set at start")

    def handle_ttou(self) -> None:
        log.warning("SIGTTOU ignored: the worker count is ONLINE_API_WORKERS (--workers), set at start")


def serve_workers(settings: Settings, workers: int, **options: object) -> int:
    """`online serve --workers N`: the workers of :func:`worker_app`, each on its own socket; bound here,
    before the workers start, which read their settings from the environment prepared here. Returns the
    process's exit code."""
    try:
        sockets = listening_sockets(settings.api_host, settings.api_port, workers)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.api_host, settings.api_port, exc)
        return STARTUP_FAILURE
    port = sockets[0].getsockname()[1]
    os.environ.update(worker_environment(settings.model_copy(update={"api_port": port}), workers))
    os.environ.update({"ONLINE_API_HOST": settings.api_host, "ONLINE_API_PORT": str(port)})
    log.info("API on %s:%d: %d worker processes", settings.api_host, port, workers)
    options = {**options, "port": port}
    config = Config("services.api.main:worker_app", factory=True, workers=workers, **options)  # type: ignore[arg-type]
    try:
        Workers(config, sockets).run()
    except KeyboardInterrupt:
        pass
    return 0
