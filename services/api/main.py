"""The API process: what `online serve` runs, in its own process or in each of its worker processes.

With ``ONLINE_API_WORKERS`` > 1, uvicorn starts the workers itself, by import string
(``services.api.main:worker_app``), so each worker reads its settings once, here, from the environment
the parent prepared (:func:`worker_environment`): its share of the cores and a shared directory for
the Prometheus samples of every worker. Each worker is a replica of its own (its model, event loop,
forward lanes and side-effect thread, its name ``host:pid`` in `online status`); they share the port.

Why workers: one event loop serves every connection of a replica and its lanes take the GIL in turns
with it, so at 32 clients the lanes wait on the loop between batches. Two processes of one lane each
served 1,074-1,168 against 1,004-1,076 requests a second on 2 cores (issue 34, docs/benchmarks.md).
"""

from __future__ import annotations

import os
import shutil
import sys

from fastapi import FastAPI

from online.serving.metrics import MULTIPROCESS_ENV
from online.settings import Settings


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
    from services.wiring import current

    wiring = current()
    wiring.logging()
    settings = wiring.stack
    prepare_process(settings)
    return create_app(settings)
