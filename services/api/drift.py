"""Drift monitoring inside an API replica.

The forward thread hands every batch's probabilities and embeddings (free with the forward pass) to
:meth:`DriftMonitor.observe`; each full window of the live version's predictions gets its signals
(``online.drift``), which update Prometheus gauges, log alert transitions, and go to Redis: this
replica's latest snapshot and a capped history for the dashboard. Feedback signals (live accuracy per
version, feedback volume) are shared by all replicas and read from Redis when asked for.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import redis
import torch

from online.auto_rollback import judge
from online.drift import REFERENCE_FILE, Reference, Thresholds, nn_distance, window_signals
from online.feedback_volume import FeedbackVolume
from online.live_accuracy import LiveAccuracy
from online.registry import ModelRegistry
from online.settings import Settings
from services.api.metrics import ApiMetrics

log = logging.getLogger("online.drift")


class DriftMonitor:
    def __init__(self, settings: Settings, client: redis.Redis, registry: ModelRegistry, metrics: ApiMetrics) -> None:
        self.s = settings
        self.r = client
        self.registry = registry
        self.metrics = metrics
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.live_accuracy = LiveAccuracy(client, settings.key_prefix, settings.dedup_ttl_s)
        self.volume = FeedbackVolume(client, settings.key_prefix)
        self.thresholds = Thresholds(
            knn_max_rate=settings.drift_knn_max_rate,
            mmd_alpha=settings.drift_mmd_alpha,
            oos_max_rate=settings.drift_oos_max_rate,
            confidence=settings.drift_confidence,
            js_alpha=settings.drift_js_alpha,
        )
        self._history_key = f"{settings.key_prefix}:drift:history"
        self._snapshots_key = f"{settings.key_prefix}:drift:replicas"
        self.version: int | None = None
        self.labels: list[str] = []
        self.reference: Reference | None = None
        self._index = None
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

    # --- on the forward thread ----------------------------------------------------------------
    def set_version(self, version: int, labels: list[str], path: Path) -> None:
        """Called when a replica swaps: a new window against the new version's reference."""
        self.version, self.labels = version, list(labels)
        ref_path = path / REFERENCE_FILE
        self.reference, self._index = None, None
        if ref_path.is_file():
            try:
                self.reference = Reference.load(ref_path)
                self._index = self.reference.index()
            except Exception as exc:  # monitoring must never stop serving
                log.error("version %s: drift reference unreadable (%s); input-drift signals off", version, exc)
        else:
            log.warning("version %s has no drift reference: input-drift signals off", version)
        self._reset()

    def observe(self, version: int, probs: torch.Tensor, emb: torch.Tensor) -> np.ndarray | None:
        """Add a batch to the window; returns each text's distance to the nearest training example
        (None without a reference) for the review queue."""
        if version != self.version or len(probs) == 0:
            return None  # a request still finishing on the previous version
        conf, pred = probs.max(-1)
        self._conf.append(conf.numpy())
        self._pred.append(pred.numpy())
        e = emb.numpy()
        self._emb.append(e)
        dist = nn_distance(self._index, e) if self._index is not None else None
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
        for name, sig in signals.items():
            self.metrics.drift_signal.labels(name).set(sig["value"])
            self.metrics.drift_alert.labels(name).set(int(sig["alert"]))
            if sig["alert"] and name not in self.alert_since:
                self.alert_since[name] = now
                self.metrics.drift_alerts.labels(name).inc()
                log.warning(
                    "drift alert raised: %s = %.4g (threshold %.4g), version %s",
                    name,
                    sig["value"],
                    sig["threshold"],
                    self.version,
                )
            elif not sig["alert"] and name in self.alert_since:
                del self.alert_since[name]
                log.info("drift alert cleared: %s = %.4g", name, sig["value"])
        record = json.dumps({k: v for k, v in self.latest.items() if k != "label_counts"}, default=float)
        try:
            with self.r.pipeline(transaction=False) as pipe:
                pipe.rpush(self._history_key, record)
                pipe.ltrim(self._history_key, -self.s.drift_history, -1)
                pipe.hset(self._snapshots_key, self.replica, json.dumps(self.latest, default=float))
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("drift window not stored: %s", exc)

    # --- read side (API handlers, off the forward thread) -------------------------------------
    def report(self, history: int = 0) -> dict:
        """Everything /v1/drift shows: input and prediction signals per replica, feedback signals,
        alerts, and optionally the window history for plots."""
        live = self.registry.live()
        accs = {a.version: a for a in self.live_accuracy.all()}
        versions = {m.version: m for m in self.registry.list()}
        per_version = []
        for v, a in sorted(accs.items()):
            parent = versions[v].parent if v in versions else None
            entry = {
                "version": v,
                "parent": parent,
                "n": a.n,
                "correct": a.correct,
                "accuracy": a.accuracy,
                "live": v == live,
                "per_minute": self.live_accuracy.per_minute(v)[-180:],
            }
            if parent is not None and parent in accs:
                verdict = judge(accs[parent], a, self.s)
                entry["vs_parent"] = {
                    "p_value": verdict.p_value,
                    "drop": verdict.drop,
                    "worse": verdict.fire,
                    "reason": verdict.reason,
                }
            per_version.append(entry)
        feedback_signals = self._feedback_signals(live, accs, per_version)
        snapshots = [json.loads(v) for v in self.r.hvals(self._snapshots_key)]
        snapshots = [s for s in snapshots if s.get("version") == live] or snapshots
        alerts = []
        for snap in snapshots:
            for name, sig in snap["signals"].items():
                if sig["alert"]:
                    alerts.append(
                        {
                            "signal": name,
                            "replica": snap["replica"],
                            "value": sig["value"],
                            "threshold": sig["threshold"],
                            "at": snap["at"],
                        }
                    )
        for name, sig in feedback_signals.items():
            if sig["alert"]:
                alerts.append(
                    {
                        "signal": name,
                        "replica": None,
                        "value": sig["value"],
                        "threshold": sig["threshold"],
                        "at": time.time(),
                    }
                )
        out = {
            "live_version": live,
            "replica": self.replica,
            "window_size": self.s.drift_window,
            "reference": self.reference is not None,
            "signals": (self.latest or {}).get("signals", {}),
            "replicas": snapshots,
            "feedback": feedback_signals,
            "live_accuracy": per_version,
            "feedback_volume": self.volume.per_minute(60),
            "alerts": alerts,
            "label_distribution": self._label_distribution(),
        }
        if history:
            out["history"] = [json.loads(x) for x in self.r.lrange(self._history_key, -history, -1)]
        return out

    def _feedback_signals(self, live: int | None, accs: dict, per_version: list[dict]) -> dict:
        signals: dict[str, dict] = {}
        if live is not None and live in accs and accs[live].n >= self.s.drift_live_accuracy_min_n:
            acc = accs[live].accuracy
            worse = next(
                (e.get("vs_parent", {}).get("worse", False) for e in per_version if e["version"] == live), False
            )
            signals["live_accuracy"] = {
                "value": acc,
                "threshold": self.s.drift_min_live_accuracy,
                "alert": acc < self.s.drift_min_live_accuracy or worse,
                "kind": "feedback",
                "n": accs[live].n,
                "worse_than_parent": worse,
            }
        return signals

    def _label_distribution(self) -> dict:
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
