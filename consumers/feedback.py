"""`online consume`: the feedback consumer (Kafka -> replay buffer)."""

from __future__ import annotations

import threading

from online.settings import Settings


def run_consumer(settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        stop.wait(1.0)
