"""Replica heartbeats: a replica that stops leaves `online status`; one long silent is forgotten."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from online.monitoring.replicas import FORGET_AFTER_S, Heartbeat
from online.wiring.stores import Stores
from services.api.app import create_app


def test_a_stopped_replica_leaves_and_a_long_silent_one_is_forgotten(settings):
    """Each restart of `online up` (each pod, in a cluster) is a new replica name: before, every one stayed
    in the status table for good, listed stale."""
    replicas = Stores.from_settings(settings).replicas
    now = time.time()
    replicas.beat(Heartbeat("crashed-an-hour-ago", 1, now - FORGET_AFTER_S - 60))
    replicas.beat(Heartbeat("crashed-a-minute-ago", 1, now - 60))
    with TestClient(create_app(settings)) as client:
        name = client.app.state.service.window.replica
        replicas.beat(Heartbeat(name, None, time.time()))  # as its first heartbeat would
        assert {b.replica for b in replicas.all()} == {"crashed-a-minute-ago", name}
    assert {b.replica for b in replicas.all()} == {"crashed-a-minute-ago"}  # stopped cleanly: gone
    assert replicas.r.hexists(replicas._key, "crashed-an-hour-ago") == 0  # forgotten, not just hidden
