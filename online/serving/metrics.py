"""Prometheus metrics of an API replica (one registry per app, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
