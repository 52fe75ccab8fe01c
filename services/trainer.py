"""`online train`: the trainer scheduler process.

On an empty registry it trains version 1 from the seed data. Continual rounds (new feedback plus
rehearsal, gated) are scheduled here as well; only the leader (a Redis lock) trains.
"""

from __future__ import annotations

import logging
import threading

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from online.connections import redis_client
from online.registry import ModelRegistry
from online.seed import seed_data, train_version_one
from online.settings import Settings
from online.training import configure_threads
from services.leader import Leadership

log = logging.getLogger("online.trainer")


class Stopped(Exception):
    pass


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def ensure_version_one(settings: Settings, registry: ModelRegistry, leader: Leadership, stop: threading.Event) -> None:
    """Train version 1 if the registry has no live version; only the leader does it."""
    while registry.live() is None and not stop.is_set():
        if not leader.acquire(wait_s=1.0):
            continue  # another trainer is bootstrapping; wait for its version
        try:
            if registry.live() is not None:
                return
            train, _ = seed_data(settings)
            total = len(train) * settings.seed_epochs
            log.info("empty registry: training version 1 on %d seed examples", len(train))
            with progress_bar() as bar:
                task = bar.add_task("version 1 (seed data)", total=total)

                def advance(n: int) -> None:
                    if stop.is_set() or leader.lost.is_set():
                        raise Stopped()
                    bar.advance(task, n)

                manifest = train_version_one(settings, registry, advance)
            log.info("version %d live (seed test accuracy %.4f)", manifest.version, manifest.metrics["seed_test_accuracy"])
        except Stopped:
            log.info("stopped before version 1 was published; nothing published")
        finally:
            leader.release()


def run_trainer(settings: Settings, stop: threading.Event) -> None:
    configure_threads(settings.num_threads)
    client = redis_client(settings)
    registry = ModelRegistry(client, settings.models_dir, settings.key_prefix)
    leader = Leadership(client, f"{settings.key_prefix}:trainer:leader")
    ensure_version_one(settings, registry, leader, stop)
    while not stop.is_set():
        stop.wait(settings.train_poll_s)  # continual rounds are scheduled here (issue: continual trainer)
