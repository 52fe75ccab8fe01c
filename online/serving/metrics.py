"""Prometheus metrics of an API replica (one registry per app, so tests can build many apps).

When the replica is one of `online serve`'s workers, prometheus_client runs in its multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by the parent before any worker starts): counters and histograms are
summed over the workers at scrape time, each gauge is a series per live worker (a ``pid`` label). In
that mode a removed label stays in the samples file, so a gauge that names one of several values (the
engine, the canary's version) sets the others to 0 instead of clearing them (:func:`only`)."""

from __future__ import annotations

import os
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client import Gauge as _Gauge

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported
Gauge = partial(_Gauge, multiprocess_mode="liveall")  # used only in the multiprocess mode: per live worker


def exposition(registry: CollectorRegistry) -> bytes:
    """What ``/metrics`` answers: this replica's samples, or every worker's when it is one of several."""
    if not os.environ.get(MULTIPROCESS_ENV):
        return generate_latest(registry)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return generate_latest(merged)


def worker_stopped(pid: int | None = None) -> None:
    """A worker's gauges leave the merged samples when it stops (its counters stay in the sums): called
    by the worker itself on a clean stop, by the supervisor for one that died."""
    if os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(pid or os.getpid())


def only(gauge: _Gauge, label: str | None, value: float = 0.0) -> None:
    """``gauge`` at ``value`` for ``label`` (None: none), its other labels gone (in one process) or at 0
    (in the multiprocess mode, where a removed label would keep its last value in the samples file)."""
    if not os.environ.get(MULTIPROCESS_ENV):
        gauge.clear()
    else:
        for (other,) in list(gauge._metrics):  # prometheus_client has no public list of a metric's children
            if other != label:
                gauge.labels(other).set(0)
    if label is not None:
        gauge.labels(label).set(value)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.predictions = Counter("online_predictions", "Texts classified", ["version"], registry=r)
        self.request_latency = Histogram(
            "online_predict_request_seconds",
            "Latency of /v1/predict",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_size = Histogram(
            "online_batch_size", "Texts per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.forward_seconds = Histogram("online_forward_seconds", "Duration of one batched forward", registry=r)
        self.live_version = Gauge("online_model_version", "Version this replica serves", registry=r)
        self.load_failures = Counter(
            "online_model_load_failures", "Versions this replica could not load", ["version"], registry=r
        )
        self.swaps = Counter("online_model_swaps", "Hot swaps completed", registry=r)
        self.engine = Gauge(
            "online_model_engine", "1 for the engine serving the live version (onnx-int8, torch-bf16, ...)",
            ["engine"], registry=r,
        )  # fmt: skip
        self.engine_fallbacks = Counter(
            "online_engine_fallbacks",
            "Versions served by torch instead of their int8 artifact (missing: not built or refused by the gate; "
            "refused: failed its checksum or would not load)",
            ["reason"],
            registry=r,
        )
        self.log_failures = Counter("online_prediction_log_failures", "Prediction-log writes that failed", registry=r)
        self.hook_failures = Counter(
            "online_forward_hook_failures",
            "Forward side effects that failed (the batch was served)",
            ["hook"],
            registry=r,
        )
        self.side_effects_dropped = Counter(
            "online_side_effects_dropped",
            "Texts whose Redis side effect was skipped (Redis down)",
            ["hook"],
            registry=r,
        )
        self.load_retries = Counter(
            "online_model_load_retries", "Version loads retried after a failure", ["slot"], registry=r
        )
        self.dependency_up = Gauge(
            "online_dependency_up",
            "1 while this replica reaches the dependency (redis, broker)",
            ["dependency"],
            registry=r,
        )
        self.drift_signal = Gauge(
            "online_drift_signal", "Latest window value of each drift signal", ["signal"], registry=r
        )
        self.drift_alert = Gauge(
            "online_drift_alert", "1 while a drift signal is past its threshold", ["signal"], registry=r
        )
        self.drift_alerts = Counter("online_drift_alerts", "Drift alerts raised", ["signal"], registry=r)
        self.canary_share = Gauge(
            "online_canary_share", "Share of live traffic the canary version answers on this replica", ["version"], registry=r
        )
        self.live_accuracy = Gauge(
            "online_live_accuracy", "Accuracy from feedback on each version's own predictions", ["version"], registry=r
        )
        self.answers = Counter(
            "online_answers", "Texts answered, by where the answer came from (model, memory)", ["source"], registry=r
        )
        self.memory_hits = Counter(
            "online_memory_hits", "Answers from the correction memory, by match (exact, near)", ["match"], registry=r
        )
        self.memory_entries = Gauge(
            "online_memory_entries",
            "Correction-memory entries of the served version, by state (active, absorbed, held, pending)",
            ["state"],
            registry=r,
        )
