"""Drift windows inside an API replica (the write side of drift monitoring).

The forward thread hands every batch's probabilities and embeddings (free with the forward pass) to
:meth:`DriftWindow.observe`; each full window of the live version's predictions gets its signals
(``online.monitoring.drift``), which update Prometheus gauges, log alert transitions, and go to Redis
(:class:`DriftLog`): this replica's latest snapshot and a capped history for the dashboard. The read
side, shared by every replica and the CLI, is ``online.monitoring.report``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import redis

from online.monitoring.drift import Thresholds, window_signals
from online.monitoring.drift_log import DriftLog
from online.reference import Reference, unit_rows
from online.serving.breaker import Breaker
from online.serving.metrics import ApiMetrics
from online.settings import Settings

log = logging.getLogger("online.serving.drift_window")


def replica_name() -> str:
    """This process, as `online status` and the dashboard name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def publish_window(
    snapshot: dict, alert_since: dict[str, float], metrics: ApiMetrics, drift_log: DriftLog, breaker: Breaker
) -> None:
    """A closed window out of the replica: its signals as gauges, each alert's rise and fall logged once
    (``alert_since``: the replica's alerts up now, by signal), the snapshot to Redis behind the breaker."""
    now = snapshot["at"]
    for name, sig in snapshot["signals"].items():
        metrics.drift_signal.labels(name).set(sig["value"])
        metrics.drift_alert.labels(name).set(int(sig["alert"]))
        if sig["alert"] and name not in alert_since:
            alert_since[name] = now
            metrics.drift_alerts.labels(name).inc()
            log.warning(
                "drift alert raised: %s = %.4g (threshold %.4g), version %s",
                name,
                sig["value"],
                sig["threshold"],
                snapshot["version"],
            )
        elif not sig["alert"] and name in alert_since:
            del alert_since[name]
            log.info("drift alert cleared: %s = %.4g", name, sig["value"])
    if not breaker.allow():
        metrics.side_effects_dropped.labels("drift").inc(snapshot["size"])
        return
    try:
        drift_log.write(snapshot["replica"], snapshot)
        breaker.succeeded()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        breaker.failed(exc)  # the breaker logs the outage once


class DriftWindow:
    def __init__(self, settings: Settings, log_: DriftLog, metrics: ApiMetrics, breaker: Breaker) -> None:
        self.s = settings
        self.drift_log = log_
        self.breaker = breaker
        self.metrics = metrics
        self.replica = replica_name()
        self.thresholds = Thresholds.from_settings(settings)
        self.version: int | None = None
        self.labels: list[str] = []
        self.reference: Reference | None = None
        self._train: np.ndarray | None = None  # the reference's unit training embeddings
        self._reset()
        self.latest: dict | None = None
        self.alert_since: dict[str, float] = {}

    def _reset(self) -> None:
        w = self.s.drift_window
        self._emb: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._pred: list[np.ndarray] = []
        self._dist: list[np.ndarray] = []
        self._n = 0
        self._window = w

    # --- on the replica's side-effect thread (online.serving.forward.SideEffectWriter) ----------
    def set_version(self, version: int, labels: list[str], ref_path: Path | None) -> None:
        """Called when a replica swaps: a new window against the new version's (checked) reference."""
        self.version, self.labels = version, list(labels)
        self.reference, self._train = None, None
        if ref_path is not None:
            try:
                self.reference = Reference.load(ref_path)
                self._train = np.ascontiguousarray(self.reference.train, dtype=np.float32)
            except Exception as exc:  # monitoring must never stop serving
                log.error("version %s: drift reference unreadable (%s); input-drift signals off", version, exc)
        else:
            log.warning("version %s has no drift reference: input-drift signals off", version)
        self._reset()

    def distances(self, emb: np.ndarray) -> np.ndarray | None:
        """Cosine distance of each embedding to its nearest training example of the reference (None
        without one): the exact search of a flat inner-product index, as one matrix product, so the
        batches handed over together cost one BLAS call (faiss's flat search was 4x slower per text
        for a batch of 32 here)."""
        if self._train is None or len(emb) == 0:
            return None
        return 1.0 - (unit_rows(emb) @ self._train.T).max(axis=1)

    def observe(
        self, version: int, probs: np.ndarray, emb: np.ndarray, dist: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Add a batch to the window; returns each text's distance to the nearest training example
        (None without a reference) for the review queue. ``dist``: those distances when the caller
        computed them already (for several batches at once). Numpy arrays: no torch work off the
        forward thread."""
        if version != self.version or len(probs) == 0:
            return None  # a request still finishing on the previous version
        self._conf.append(probs.max(-1))
        self._pred.append(probs.argmax(-1))
        e = emb
        self._emb.append(e)
        if dist is None:
            dist = self.distances(e)
        self._dist.append(dist if dist is not None else np.zeros(len(e), np.float32))
        self._n += len(e)
        if self._n >= self._window:
            self._close_window()
        return dist

    @property
    def far_threshold(self) -> float | None:
        return self.reference.nn_q99 if self.reference is not None else None

    def _close_window(self) -> None:
        emb = np.concatenate(self._emb)
        conf = np.concatenate(self._conf)
        pred = np.concatenate(self._pred)
        dist = np.concatenate(self._dist)
        self._reset()
        now = time.time()
        if self.reference is not None:
            signals = window_signals(self.reference, emb, dist, conf, pred, self.thresholds)
        else:
            low = float(np.mean(conf < self.s.drift_confidence))
            signals = {
                "oos_rate": {
                    "value": low,
                    "threshold": self.s.drift_oos_max_rate,
                    "alert": low > self.s.drift_oos_max_rate,
                    "kind": "out_of_scope",
                    "higher_is_worse": True,
                }
            }
        counts = np.bincount(pred, minlength=len(self.labels))
        self.latest = {
            "at": now,
            "replica": self.replica,
            "version": self.version,
            "size": len(conf),
            "signals": signals,
            "label_counts": {self.labels[i]: int(c) for i, c in enumerate(counts) if c},
        }
        publish_window(self.latest, self.alert_since, self.metrics, self.drift_log, self.breaker)

    def label_distribution(self) -> dict:
        if self.latest is None:
            return {}
        counts = self.latest["label_counts"]
        total = max(sum(counts.values()), 1)
        top = sorted(counts, key=counts.get, reverse=True)[:20]
        ref = {}
        if self.reference is not None and len(self.reference.pred_dist) == len(self.labels):
            ref = {lab: float(self.reference.pred_dist[self.labels.index(lab)]) for lab in top}
        return {
            "labels": top,
            "window": [counts[lab] / total for lab in top],
            "reference": [ref.get(lab) for lab in top],
        }
